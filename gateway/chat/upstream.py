"""Calling the chosen policy version, with the canary rule: a canary's backend failure is counted
against it and the request is retried once on stable (unless the client pinned the version)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from gateway.backends import BackendPool
from gateway.errors import APIError, BadRequest, GatewayTimeout, ServiceUnavailable
from gateway.routing.cache import RoutingTableCache
from gateway.telemetry import GatewayMetrics
from policies.errors import PolicyError, PolicyHTTPError, PolicyTimeout
from policies.registry_models import RouteEntry

T = TypeVar("T")
Stream = tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]


def map_policy_error(exc: PolicyError) -> APIError:
    """Translate a backend failure into the client-facing error it deserves."""
    if not is_backend_failure(exc):
        assert isinstance(exc, PolicyHTTPError)
        err = BadRequest(f"policy rejected the request: {exc.message}", code="upstream_rejected")
        err.status_code = exc.status_code if exc.status_code in (400, 422) else 400
        return err
    if isinstance(exc, PolicyTimeout):
        return GatewayTimeout("the policy server did not answer in time", code="upstream_timeout")
    return ServiceUnavailable(
        "the policy server is unavailable; retry shortly", code="upstream_unavailable", headers={"Retry-After": "5"}
    )


def is_backend_failure(exc: PolicyError) -> bool:
    """A failure of the version's backend (counted against it, and a canary's request retried on stable),
    not of the client's request. vLLM's 404 is the deployment's: the gateway chose the model name, so
    vLLM not serving it means the version's adapter is not loaded there (restarted, or still starting)."""
    return not (isinstance(exc, PolicyHTTPError) and 400 <= exc.status_code < 500 and exc.status_code != 404)


class Upstream:
    def __init__(self, backends: BackendPool, routes: RoutingTableCache, metrics: GatewayMetrics) -> None:
        self.backends = backends
        self.routes = routes
        self.metrics = metrics

    def count_failure(self, target: RouteEntry, exc: PolicyError) -> None:
        """Count a backend failure against the version (the canary controller reads it as its error
        rate). A request the backend rejected (4xx: too long a prompt, bad parameters) is the client's
        fault, not the version's: it shows in the requests counter by status, never here, so no client
        can push a canary towards rollback by sending bad requests."""
        if not is_backend_failure(exc):
            return
        kind = type(exc).__name__
        if isinstance(exc, PolicyHTTPError):
            kind = f"{kind}:{exc.status_code}"
        self.metrics.errors.labels(target.version_id, kind).inc()

    async def _with_fallback(
        self, target: RouteEntry, pinned: bool, attempt: Callable[[RouteEntry], Awaitable[T]]
    ) -> tuple[T, RouteEntry]:
        try:
            return await attempt(target), target
        except PolicyError as exc:
            self.count_failure(target, exc)
            if target.status != "canary" or pinned or not is_backend_failure(exc):
                raise map_policy_error(exc) from None
            self.metrics.canary_fallbacks.labels(target.version_id).inc()
        stable = self.routes.get().stable
        try:
            return await attempt(stable), stable
        except PolicyError as exc:
            self.count_failure(stable, exc)
            raise map_policy_error(exc) from None

    async def complete(
        self, target: RouteEntry, pinned: bool, body_for: Callable[[RouteEntry], dict[str, Any]]
    ) -> tuple[dict[str, Any], RouteEntry]:
        async def attempt(entry: RouteEntry) -> dict[str, Any]:
            return await self.backends.client_for(entry.endpoint).chat_completions(body_for(entry))

        return await self._with_fallback(target, pinned, attempt)

    async def open_stream(
        self, target: RouteEntry, pinned: bool, body_for: Callable[[RouteEntry], dict[str, Any]]
    ) -> tuple[Stream, RouteEntry]:
        """Start streaming and wait for the first chunk, so failures before any byte can fall back."""

        async def attempt(entry: RouteEntry) -> Stream:
            upstream = self.backends.client_for(entry.endpoint).stream_chat_completions(body_for(entry))
            try:
                first = await anext(upstream, None)
            except BaseException:
                await upstream.aclose()
                raise
            return upstream, first

        return await self._with_fallback(target, pinned, attempt)
