"""Liveness, readiness and Prometheus metrics.

``/healthz`` says the process is up. ``/readyz`` says it can serve: the registry answers (or, during a
database outage, the routing table it last read is recent enough to route on) and the stable policy's
vLLM server is healthy. ``/metrics`` renders this app's own Prometheus registry (every worker's, when
several serve the port: ``gateway.telemetry.render_metrics``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from gateway.backends import BackendPool
from gateway.telemetry import render_metrics


def build_health_router(
    registry_ok: Callable[[], bool], backends: BackendPool, metrics_registry: CollectorRegistry
) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        db_ok = await asyncio.to_thread(registry_ok)
        vllm_ok = await backends.default.health()
        ready = db_ok and vllm_ok
        body = {"status": "ready" if ready else "not_ready", "registry": db_ok, "policy_server": vllm_ok}
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return router
