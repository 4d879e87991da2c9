"""The FastAPI app factory: takes built services, mounts routers and middleware. Builds nothing itself.

``gateway.wiring.build_gateway`` constructs the services from Settings; tests may construct them
differently (other ports, databases) and call ``create_app`` directly.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from feedback.store import FeedbackStore
from flywheel.settings import Settings
from gateway.admin.canary_router import build_canary_router
from gateway.admin.canary_service import CanaryService
from gateway.admin.interactions_router import build_interactions_router
from gateway.admin.metrics_router import build_metrics_router
from gateway.admin.metrics_service import MetricsService
from gateway.admin.router import build_admin_router
from gateway.admin.service import AdminService
from gateway.auth import KeyRing
from gateway.backends import BackendPool
from gateway.chat.router import CHAT_SCHEMA_COMPONENTS, build_chat_router
from gateway.chat.service import ChatService
from gateway.direct_route import DirectRoutesFirst
from gateway.errors import install_error_handlers
from gateway.feedback.router import build_feedback_router
from gateway.feedback.service import FeedbackService
from gateway.health import build_health_router
from gateway.middleware import ApiCors, BodySizeLimit, TracingMiddleware
from gateway.telemetry import Telemetry
from gateway.web.router import build_web_router

# The cyclic GC's thresholds while serving (CPython's default is 700, 10, 10). Nearly everything a
# request allocates is freed by reference counting, yet at 700 a worker ran a young-generation
# collection every ~10 proxied requests, ~35 µs of GC per request (6 % of its CPU; gc.callbacks timing,
# two workers at 32 connections over the stub), each one pausing every request in flight on that
# worker. At 10,000 the same load ran none in 8 s; unreachable cycles wait at most until 10,000 more
# container objects have been allocated than freed.
SERVING_GC_THRESHOLDS = (10_000, 10, 10)


def _merge_openapi_components(app: FastAPI, schemas: dict) -> None:
    """Add schemas that hand-declared request bodies refer to (FastAPI only collects its own)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _maybe_await(result: object) -> None:
    if inspect.isawaitable(result):
        await result


def create_app(
    settings: Settings,
    *,
    chat: ChatService,
    admin: AdminService,
    backends: BackendPool,
    telemetry: Telemetry,
    registry_ok: Callable[[], bool],
    feedback: FeedbackService | None = None,
    canary: CanaryService | None = None,
    metrics: MetricsService | None = None,
    interactions: FeedbackStore | None = None,
    on_startup: list[Callable[[], Awaitable[object] | object]] | None = None,
    on_shutdown: list[Callable[[], Awaitable[object] | object]] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for hook in on_startup or []:
            await _maybe_await(hook())
        # Everything built so far (torch, the encoder, the KB index…) lives as long as the process.
        # Freezing it keeps the cyclic GC from re-scanning millions of objects on every full
        # collection: those scans were the gateway's p99 stalls under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*SERVING_GC_THRESHOLDS)
        yield
        for hook in on_shutdown or []:  # before backends close: pending adapter unloads need the client
            await _maybe_await(hook())
        await backends.aclose()
        telemetry.shutdown()

    app = FastAPI(title="Flywheel gateway", version="0.1.0", lifespan=lifespan)
    app.state.keyring = KeyRing.from_settings(settings)
    install_error_handlers(app)
    # Starlette tries routes in order, a regex match each: the two hot routes go first.
    app.include_router(build_chat_router(chat))
    if feedback is not None:
        app.include_router(build_feedback_router(feedback, settings.feedback_max_body_bytes))
    app.include_router(build_health_router(registry_ok, backends, telemetry.metrics.registry))
    app.include_router(build_admin_router(admin, settings))
    if canary is not None:
        app.include_router(build_canary_router(canary, settings))
    if metrics is not None:
        app.include_router(build_metrics_router(metrics, settings))
    if interactions is not None:
        app.include_router(build_interactions_router(interactions, settings))
    app.include_router(build_web_router())
    _merge_openapi_components(app, CHAT_SCHEMA_COMPONENTS)
    app.add_middleware(DirectRoutesFirst, gateway=app)  # first added = innermost of our middleware
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, max_header_bytes=settings.max_header_bytes)
    if settings.cors_allow_origins:  # closed by default: no CORS headers at all
        app.add_middleware(ApiCors, allow_origins=settings.cors_allow_origins)
    app.add_middleware(TracingMiddleware, tracer=telemetry.tracer)
    return app
