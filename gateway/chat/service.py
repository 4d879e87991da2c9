"""Chat completions: route to a policy version, call vLLM, fall back from a failing canary, decorate.

The request path runs one way: limits → route → generate → respond. vLLM's JSON is passed through
untouched apart from the ``id`` and the added ``flywheel`` object, because re-modelling every response
would cost time on the hot path and drop fields vLLM adds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from opentelemetry import trace

from gateway.backends import BackendPool
from gateway.chat.protocol import ChatCompletionRequest
from feedback.tokens import FeedbackTokenSigner
from gateway.errors import APIError, BadRequest, GatewayTimeout, NotFound, RateLimited, ServiceUnavailable
from gateway.interactions import InteractionFacts, InteractionRecorder
from gateway.routing.cache import RoutingTableCache
from gateway.routing.split import pick
from gateway.telemetry import Telemetry
from policies.errors import PolicyError, PolicyHTTPError, PolicyTimeout
from policies.registry_models import RouteEntry

ROUTED_MODEL = "flywheel"
_encode = msgspec.json.encode
log = logging.getLogger("flywheel.gateway.chat")


def new_response_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def map_policy_error(exc: PolicyError) -> APIError:
    """Translate a backend failure into the client-facing error it deserves."""
    if isinstance(exc, PolicyHTTPError) and 400 <= exc.status_code < 500:
        err = BadRequest(f"policy rejected the request: {exc.message}", code="upstream_rejected")
        err.status_code = exc.status_code if exc.status_code in (400, 404, 422) else 400
        return err
    if isinstance(exc, PolicyTimeout):
        return GatewayTimeout("the policy server did not answer in time", code="upstream_timeout")
    return ServiceUnavailable(
        "the policy server is unavailable; retry shortly",
        code="upstream_unavailable",
        headers={"Retry-After": "5"},
    )


def _is_backend_failure(exc: PolicyError) -> bool:
    """A failure of the version's backend (counted against it), not of the client's request."""
    return not (isinstance(exc, PolicyHTTPError) and 400 <= exc.status_code < 500)


class ChatService:
    """Owns the behaviour behind ``/v1/chat/completions`` and ``/v1/models``."""

    def __init__(
        self,
        routes: RoutingTableCache,
        backends: BackendPool,
        telemetry: Telemetry,
        *,
        signer: FeedbackTokenSigner,
        recorder: InteractionRecorder | None,
        max_n: int,
        max_tokens_cap: int,
        max_messages: int,
        max_in_flight: int,
    ) -> None:
        self.routes = routes
        self.backends = backends
        self.telemetry = telemetry
        self.signer = signer
        self.recorder = recorder
        self.max_n = max_n
        self.max_tokens_cap = max_tokens_cap
        self.max_messages = max_messages
        self.max_in_flight = max_in_flight
        self._in_flight = 0

    # --- admission ----------------------------------------------------------------------------
    def _admit(self) -> None:
        """Bounded concurrency: past the cap, answer 429 at once instead of piling up behind vLLM."""
        if self._in_flight >= self.max_in_flight:
            self.telemetry.metrics.requests.labels("none", "429").inc()
            raise RateLimited(
                f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                code="concurrency_limit",
                headers={"Retry-After": "1"},
            )
        self._in_flight += 1
        self.telemetry.metrics.in_flight.set(self._in_flight)

    def _release(self) -> None:
        self._in_flight -= 1
        self.telemetry.metrics.in_flight.set(self._in_flight)

    # --- validation & routing ---------------------------------------------------------------
    def check_limits(self, req: ChatCompletionRequest) -> None:
        if req.n > self.max_n:
            raise BadRequest(f"n must be at most {self.max_n}", param="n")
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name)
            if value is not None and value > self.max_tokens_cap:
                raise BadRequest(f"{name} must be at most {self.max_tokens_cap}", param=name)
        if len(req.messages) > self.max_messages:
            raise BadRequest(f"at most {self.max_messages} messages per request", param="messages")

    def route(self, model: str, sticky_key: str | None) -> tuple[RouteEntry, bool]:
        """The version to answer with, and whether the client pinned it by name."""
        table = self.routes.get()
        if model in (ROUTED_MODEL, table.stable.served_model_name):
            return pick(table, sticky_key), False
        entry = table.find(model)
        if entry is None:
            raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
        return entry, True

    def models(self) -> list[dict[str, Any]]:
        table = self.routes.get()
        created = int(time.time())
        listed = [{"id": ROUTED_MODEL, "object": "model", "created": created, "owned_by": "flywheel"}]
        for entry in table.entries():
            listed.append(
                {
                    "id": entry.version_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "flywheel",
                    "status": entry.status,
                }
            )
        return listed

    # --- non-streaming ----------------------------------------------------------------------
    async def complete(self, req: ChatCompletionRequest, sticky_key: str | None) -> dict[str, Any]:
        self.check_limits(req)
        self._admit()
        try:
            return await self._complete(req, sticky_key)
        finally:
            self._release()

    async def _complete(self, req: ChatCompletionRequest, sticky_key: str | None) -> dict[str, Any]:
        target, pinned = self.route(req.model, sticky_key)
        response_id = new_response_id()
        metrics = self.telemetry.metrics
        started = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span("generate") as span:
            span.set_attribute("flywheel.policy_version", target.version_id)
            try:
                result = await self._call(target, req)
            except PolicyError as exc:
                if not self._should_fall_back(target, pinned, exc):
                    self._count_failure(target, exc)
                    raise map_policy_error(exc) from None
                self._count_failure(target, exc)
                metrics.canary_fallbacks.labels(target.version_id).inc()
                target = self.routes.get().stable
                span.set_attribute("flywheel.fallback_to", target.version_id)
                try:
                    result = await self._call(target, req)
                except PolicyError as exc2:
                    self._count_failure(target, exc2)
                    raise map_policy_error(exc2) from None
        result["id"] = response_id
        result["model"] = req.model
        result["flywheel"] = self._flywheel_object(response_id, target)
        usage = result.get("usage") or {}
        elapsed = time.perf_counter() - started
        metrics.tokens.labels(target.version_id).inc(usage.get("completion_tokens", 0))
        metrics.latency.labels(target.version_id, "false").observe(elapsed)
        metrics.requests.labels(target.version_id, "200").inc()
        _log_request(response_id, target.version_id, "200", elapsed, stream=False)
        texts = [(c.get("message") or {}).get("content") or "" for c in result.get("choices", [])]
        self._record(req, response_id, target, texts, elapsed)
        return result

    def _flywheel_object(self, response_id: str, target: RouteEntry) -> dict[str, Any]:
        return {
            "response_id": response_id,
            "policy_version": target.version_id,
            "feedback_token": self.signer.issue(response_id, target.version_id),
        }

    def _record(
        self, req: ChatCompletionRequest, response_id: str, target: RouteEntry, texts: list[str], elapsed: float
    ) -> None:
        """Hand the interaction to the recorder (O(1); redaction and Kafka happen off this path)."""
        if self.recorder is None:
            return
        span_ctx = trace.get_current_span().get_span_context()
        self.recorder.submit(
            InteractionFacts(
                response_id=response_id,
                policy_version=target.version_id,
                messages=[{"role": m.role, "content": m.text()} for m in req.messages],
                candidates=texts,
                latency_ms=elapsed * 1000,
                trace_id=format(span_ctx.trace_id, "032x") if span_ctx.is_valid else None,
                user=req.user,
            )
        )

    async def _call(self, target: RouteEntry, req: ChatCompletionRequest) -> dict[str, Any]:
        client = self.backends.client_for(target.endpoint)
        return await client.chat_completions(req.upstream_body(target.served_model_name))

    def _should_fall_back(self, target: RouteEntry, pinned: bool, exc: PolicyError) -> bool:
        return target.status == "canary" and not pinned and _is_backend_failure(exc)

    def _count_failure(self, target: RouteEntry, exc: PolicyError) -> None:
        kind = type(exc).__name__
        if isinstance(exc, PolicyHTTPError):
            kind = f"{kind}:{exc.status_code}"
        self.telemetry.metrics.errors.labels(target.version_id, kind).inc()

    # --- streaming --------------------------------------------------------------------------
    async def open_stream(
        self, req: ChatCompletionRequest, sticky_key: str | None
    ) -> AsyncIterator[bytes]:
        """Start the upstream stream (falling back before the first byte) and return the SSE body.

        Failing before the first chunk lets us answer with a proper HTTP error or retry on stable;
        after that, errors become an SSE error event, which the SDK raises as an APIError.
        """
        self.check_limits(req)
        self._admit()
        try:
            target, pinned = self.route(req.model, sticky_key)
            upstream, target = await self._open_with_fallback(target, pinned, req)
        except BaseException:
            self._release()
            raise
        return self._relay(req, target, *upstream)

    async def _open_with_fallback(
        self, target: RouteEntry, pinned: bool, req: ChatCompletionRequest
    ) -> tuple[tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None], RouteEntry]:
        try:
            upstream, first = await self._start_stream(target, req)
        except PolicyError as exc:
            self._count_failure(target, exc)
            if not self._should_fall_back(target, pinned, exc):
                raise map_policy_error(exc) from None
            self.telemetry.metrics.canary_fallbacks.labels(target.version_id).inc()
            target = self.routes.get().stable
            try:
                upstream, first = await self._start_stream(target, req)
            except PolicyError as exc2:
                self._count_failure(target, exc2)
                raise map_policy_error(exc2) from None
        return (upstream, first), target

    async def _start_stream(
        self, target: RouteEntry, req: ChatCompletionRequest
    ) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any] | None]:
        client = self.backends.client_for(target.endpoint)
        upstream = client.stream_chat_completions(req.upstream_body(target.served_model_name))
        try:
            first = await upstream.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await upstream.aclose()
            raise
        return upstream, first

    async def _relay(
        self,
        req: ChatCompletionRequest,
        target: RouteEntry,
        upstream: AsyncIterator[dict[str, Any]],
        first: dict[str, Any] | None,
    ) -> AsyncIterator[bytes]:
        response_id = new_response_id()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        metrics = self.telemetry.metrics
        started = time.perf_counter()
        created = int(time.time())
        status = "200"
        texts: dict[int, list[str]] = {}
        try:
            chunk = first
            while chunk is not None:
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        texts.setdefault(choice.get("index", 0), []).append(delta)
                created = chunk.get("created", created)
                usage = chunk.get("usage")
                if usage and not chunk.get("choices"):
                    metrics.tokens.labels(target.version_id).inc(usage.get("completion_tokens", 0))
                    if not include_usage:
                        chunk = await anext(upstream, None)
                        continue
                elif not include_usage:
                    chunk.pop("usage", None)
                chunk["id"] = response_id
                chunk["model"] = req.model
                yield _sse(chunk)
                chunk = await anext(upstream, None)
            final = {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [],
                "flywheel": self._flywheel_object(response_id, target),
            }
            yield _sse(final)
            joined = ["".join(texts[i]) for i in sorted(texts)]
            self._record(req, response_id, target, joined, time.perf_counter() - started)
        except (asyncio.CancelledError, GeneratorExit):
            status = "client_closed"  # the client went away; closing upstream aborts vLLM's work
            raise
        except PolicyError as exc:
            status = "stream_error"
            self._count_failure(target, exc)
            err = map_policy_error(exc)
            yield _sse(err.body())
        finally:
            self._release()
            await upstream.aclose()
            elapsed = time.perf_counter() - started
            metrics.latency.labels(target.version_id, "true").observe(elapsed)
            metrics.requests.labels(target.version_id, status).inc()
            _log_request(response_id, target.version_id, status, elapsed, stream=True)
        yield b"data: [DONE]\n\n"


def _log_request(response_id: str, version: str, status: str, elapsed: float, *, stream: bool) -> None:
    """One structured line per chat request; the JSON formatter adds time and level."""
    if log.isEnabledFor(logging.INFO):
        ctx = trace.get_current_span().get_span_context()
        log.info(
            "chat request",
            extra={
                "response_id": response_id,
                "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else None,
                "policy_version": version,
                "status": status,
                "latency_ms": round(elapsed * 1000, 2),
                "stream": stream,
            },
        )


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"
