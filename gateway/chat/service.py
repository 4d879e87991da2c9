"""Chat completions: admission → limits → input stages → route → generate → choose → output safety → respond.

vLLM's JSON is passed through apart from ``id``, ``model``, the chosen choice (best-of-n) and output
redactions, plus the added ``flywheel`` object; re-modelling every response would cost time on the hot
path and drop fields vLLM adds. The interaction leaves on the side through the recorder (never blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from opentelemetry import trace

from feedback.tokens import FeedbackTokenSigner
from flywheel.ids import random_hex128
from gateway.chat.pipeline import Prepared, RequestPipeline, safety_report
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.recordable import recordable_candidates
from gateway.chat.streaming import DONE, StreamState, may_end_stream, relay, replay, sse
from gateway.chat.upstream import Upstream, map_policy_error
from gateway.errors import BadRequest, NotFound, RateLimited
from gateway.interactions import InteractionFacts, InteractionRecorder
from gateway.ratelimit import TokenBucketLimiter, retry_after
from gateway.routing.cache import RoutingTableCache
from gateway.routing.split import pick
from gateway.telemetry import Telemetry
from policies.errors import PolicyError
from policies.registry_models import RouteEntry
from safety.refusal import refusal_chunks, refusal_completion, refusal_usage
from safety.verdict import ChainResult

ROUTED_MODEL = "flywheel"
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)  # reusable: nullcontext keeps no state
log = logging.getLogger("flywheel.gateway.chat")


def new_response_id() -> str:
    """128 random bits per id without a syscall (see :mod:`flywheel.ids`)."""
    return f"chatcmpl-{random_hex128()}"


class ChatService:
    """Owns the behaviour behind ``/v1/chat/completions`` and ``/v1/models``."""

    def __init__(
        self,
        routes: RoutingTableCache,
        upstream: Upstream,
        pipeline: RequestPipeline,
        telemetry: Telemetry,
        *,
        signer: FeedbackTokenSigner,
        recorder: InteractionRecorder | None,
        max_n: int,
        max_tokens_cap: int,
        max_messages: int,
        max_in_flight: int,
        key_limiter: TokenBucketLimiter | None = None,
    ) -> None:
        self.routes = routes
        self.upstream = upstream
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.signer = signer
        self.recorder = recorder
        self.max_n = max_n
        self.max_tokens_cap = max_tokens_cap
        self.max_messages = max_messages
        self.max_in_flight = max_in_flight
        self.key_limiter = key_limiter
        self._in_flight = 0

    # --- admission, limits, routing ---------------------------------------------------------
    def _admit(self) -> None:
        """Bounded concurrency: past the cap, answer 429 at once instead of piling up behind vLLM."""
        if self._in_flight >= self.max_in_flight:
            self.telemetry.metrics.requests.labels("none", "429").inc()
            raise RateLimited(f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                              code="concurrency_limit", headers={"Retry-After": "1"})  # fmt: skip
        self._in_flight += 1
        self.telemetry.metrics.in_flight.set(self._in_flight)

    def limit_key(self, actor: str) -> None:
        """Per-key request rate (``FLYWHEEL_CHAT_RATE_PER_S``): one key cannot take the whole
        in-flight budget from the others. Checked once the body has parsed."""
        if self.key_limiter is None:
            return
        wait_s = self.key_limiter.acquire(actor)
        if wait_s > 0:
            self.telemetry.metrics.requests.labels("none", "429").inc()
            seconds = retry_after(wait_s)
            raise RateLimited(f"too many requests for this key; retry in {seconds}s",
                              code="rate_limit_exceeded", headers={"Retry-After": seconds})  # fmt: skip

    def _release(self) -> None:
        self._in_flight -= 1
        self.telemetry.metrics.in_flight.set(self._in_flight)

    def check_limits(self, req: ChatCompletionRequest) -> None:
        """Validate caps (an explicit ``best_of_n`` included; defaults are applied after routing)."""
        if req.n > self.max_n:
            raise BadRequest(f"n must be at most {self.max_n}", param="n")
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name)
            if value is not None and value > self.max_tokens_cap:
                raise BadRequest(f"{name} must be at most {self.max_tokens_cap}", param=name)
        if len(req.messages) > self.max_messages:
            raise BadRequest(f"at most {self.max_messages} messages per request", param="messages")
        if req.best_of_n is not None and req.best_of_n > 1:
            if req.best_of_n > self.pipeline.max_best_of_n:
                raise BadRequest(f"best_of_n must be at most {self.pipeline.max_best_of_n}", param="best_of_n")
            if req.n > 1:
                raise BadRequest("best_of_n returns one answer: use it with n=1", param="best_of_n")
            if req.temperature == 0:
                raise BadRequest("best_of_n needs sampling: use temperature > 0", param="temperature")

    def _body_for(
        self, req: ChatCompletionRequest, prepared: Prepared, **options: Any
    ) -> Callable[[RouteEntry], dict[str, Any]]:
        """The upstream body for whichever version an attempt goes to (a canary, or stable on fallback)."""
        return lambda entry: req.upstream_body(entry.served_model_name, prepared.messages, **options)

    def route(self, model: str, sticky_key: str | None) -> tuple[RouteEntry, bool]:
        """The version to answer with, and whether the client pinned it by name."""
        table = self.routes.get()
        if model == ROUTED_MODEL:
            return pick(table, sticky_key), False
        entry = table.find(model)
        if entry is None:
            raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
        if entry is table.stable and model != entry.version_id:  # vLLM's own name for the stable: routed
            return pick(table, sticky_key), False
        return entry, True

    def models(self) -> list[dict[str, Any]]:
        """The routed name (``created``: when the current stable was registered) and every routed version."""
        table = self.routes.get()
        listed = [{"id": ROUTED_MODEL, "object": "model", "created": table.stable.created, "owned_by": "flywheel"}]
        for entry in table.entries():
            listed.append({"id": entry.version_id, "object": "model", "created": entry.created,
                           "owned_by": "flywheel", "status": entry.status})  # fmt: skip
        return listed

    def _flywheel(self, response_id: str, version: str, prepared: Prepared, **extra: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "response_id": response_id,
            "policy_version": version,
            "feedback_token": self.signer.issue(response_id, version),
            "citations": [c.as_dict() for c in prepared.citations],
        }
        obj.update(extra)
        return obj

    def _stage(self, name: str) -> AbstractContextManager[trace.Span]:
        """A child span for one pipeline stage when the request's trace is recorded (an OTLP endpoint is
        set). A sampled-out trace keeps its root span (its id is X-Trace-Id and is in the logs) but no
        children: they would never leave the process, and the span calls took ~4 % of the gateway's samples
        in a py-spy profile at 32 connections over the stub."""
        if trace.get_current_span().is_recording():
            return self.telemetry.tracer.start_as_current_span(name)
        return _NO_SPAN

    # --- non-streaming ----------------------------------------------------------------------
    async def complete(self, req: ChatCompletionRequest, sticky_key: str | None) -> dict[str, Any]:
        self.check_limits(req)
        self._admit()
        try:
            return await self._complete(req, sticky_key)
        finally:
            self._release()

    async def _complete(self, req: ChatCompletionRequest, sticky_key: str | None) -> dict[str, Any]:
        started = time.perf_counter()
        response_id = new_response_id()
        with self._stage("input_stages"):
            prepared = await self.pipeline.prepare(req)
        target, pinned = self.route(req.model, sticky_key)
        k = self.pipeline.best_of_n(req, target.best_of_n)
        if prepared.blocked:
            return self._refuse(req, response_id, target, prepared, started)
        with self._stage("generate") as span:
            result, target = await self.upstream.complete(
                target, pinned, self._body_for(req, prepared, n=k if k > 1 else None)
            )
            span.set_attribute("flywheel.policy_version", target.version_id)
        choices = result.get("choices") or []
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        with self._stage("choose"):
            choice = await self.pipeline.choose(prepared.messages, texts) if k > 1 else None
        if choice is not None:
            chosen = dict(choices[choice.index], index=0)
            result["choices"] = [chosen]
        with self._stage("output_safety"):
            outputs = [self._check_choice(c) for c in result.get("choices") or []]
        extra: dict[str, Any] = {"safety": safety_report(prepared, outputs)}
        if choice is not None:
            extra.update(reward=choice.rewards[choice.index] if choice.rewards else None,
                         chosen_index=choice.index, candidates=len(texts))  # fmt: skip
        result["id"] = response_id
        result["model"] = req.model
        result["flywheel"] = self._flywheel(response_id, target.version_id, prepared, **extra)
        usage = result.get("usage") or {}
        self._observe(target, "200", started, usage.get("completion_tokens", 0), stream=False, response_id=response_id)
        served = {choice.index: outputs[0]} if choice is not None else dict(enumerate(outputs))
        self._record(req, response_id, target, prepared, texts, choice.index if choice else 0,
                     choice.rewards if choice else None, outputs, started, served=served)  # fmt: skip
        return result

    def _check_choice(self, choice: dict[str, Any]) -> Any:
        message = choice.get("message") or {}
        checked = self.pipeline.check_output(message.get("content") or "")
        if checked.blocked:
            choice["message"] = {"role": "assistant", "content": self.pipeline.safety.refusal_message,
                                 "refusal": self.pipeline.safety.refusal_message}  # fmt: skip
            choice["finish_reason"] = "content_filter"
        elif checked.redacted:
            message["content"] = checked.text
        if checked.blocked or checked.redacted:
            choice["logprobs"] = None  # its tokens would spell out what was refused or redacted
        return checked

    def _refuse(
        self, req: ChatCompletionRequest, response_id: str, target: RouteEntry, prepared: Prepared, started: float
    ) -> dict[str, Any]:
        """A blocked request: a normal 200 with finish_reason content_filter, never an error."""
        flywheel = self._flywheel(response_id, target.version_id, prepared, safety=safety_report(prepared, []))
        body = refusal_completion(completion_id=response_id, model=req.model, n=req.n, flywheel=flywheel,
                                  message=self.pipeline.safety.refusal_message)  # fmt: skip
        self._observe(target, "content_filter", started, 0, stream=False, response_id=response_id)
        self._record(req, response_id, target, prepared, [], 0, None, [], started, served={})
        return body

    # --- streaming --------------------------------------------------------------------------
    async def open_stream(self, req: ChatCompletionRequest, sticky_key: str | None) -> AsyncIterator[bytes]:
        """Run the stages, start the upstream stream (falling back before the first byte), return the body.

        Failing before the first chunk lets us answer with a proper HTTP error or retry on stable;
        after that, errors become an SSE error event, which the SDK raises as an APIError.
        """
        self.check_limits(req)
        self._admit()
        try:
            started = time.perf_counter()
            prepared = await self.pipeline.prepare(req)
            target, pinned = self.route(req.model, sticky_key)
            k = self.pipeline.best_of_n(req, target.best_of_n)
            state = StreamState(new_response_id(), req.model, bool(req.stream_options and req.stream_options.include_usage))
            if prepared.blocked:
                body = self._stream_refusal(state, target, prepared)
            elif k > 1:
                body = await self._stream_best_of_n(req, state, target, pinned, prepared, k)
            else:
                (upstream, first), target = await self.upstream.open_stream(
                    target, pinned, self._body_for(req, prepared)
                )
                body = relay(upstream, first, state, self.pipeline.stream_guard, self.pipeline.safety.refusal_message,
                             req.n)  # fmt: skip
                body = self._closing(body, upstream)
        except BaseException:
            self._release()
            raise
        return self._finish_stream(req, body, state, target, prepared, started)

    async def _closing(
        self, body: AsyncIterator[dict[str, Any]], upstream: AsyncIterator[Any]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for part in body:
                yield part
        finally:
            await upstream.aclose()  # closes the connection: vLLM aborts whatever is left

    async def _stream_best_of_n(
        self, req: ChatCompletionRequest, state: StreamState, target: RouteEntry, pinned: bool,
        prepared: Prepared, k: int,
    ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """Best-of-n cannot stream live: generate all k, choose, check, then stream the winner."""
        result, target = await self.upstream.complete(
            target, pinned, self._body_for(req, prepared, n=k, stream=False)
        )
        choices = result.get("choices") or []
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        choice = await self.pipeline.choose(prepared.messages, texts)
        winner = dict(choices[choice.index], index=0)
        checked = self._check_choice(winner)
        state.outputs[0] = checked
        state.texts[0] = [(winner.get("message") or {}).get("content") or ""]
        state.completion_tokens = (result.get("usage") or {}).get("completion_tokens", 0)
        state.best = (choice, texts, target)
        entries = (winner.get("logprobs") or {}).get("content")  # None when the check changed the text
        return replay(state, state.texts[0][:1], [winner.get("finish_reason") or "stop"], [entries])

    async def _stream_refusal(
        self, state: StreamState, target: RouteEntry, prepared: Prepared
    ) -> AsyncIterator[dict[str, Any]]:
        for chunk in refusal_chunks(completion_id=state.response_id, model=state.model, created=state.created,
                                    message=self.pipeline.safety.refusal_message):  # fmt: skip
            chunk.pop("flywheel", None)
            yield chunk
        if state.include_usage:  # as a refused unstreamed request reports it
            yield state.chunk([], usage=refusal_usage(self.pipeline.safety.refusal_message))
        state.status = "content_filter"

    async def _finish_stream(
        self, req: ChatCompletionRequest, body: AsyncIterator[dict[str, Any]], state: StreamState,
        target: RouteEntry, prepared: Prepared, started: float,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        """Send the body's chunks, the last one with the ``flywheel`` object (see gateway/chat/streaming.py)."""
        held: dict[str, Any] | None = None  # a chunk that may be the last, sent when the next one comes
        try:
            async for chunk in body:
                if held is not None:
                    yield sse(held)
                    held = None
                if may_end_stream(chunk):
                    held = chunk
                else:
                    yield sse(chunk)
            best = state.best
            outputs = [state.outputs[i] for i in sorted(state.outputs)]
            extra: dict[str, Any] = {"safety": safety_report(prepared, outputs)}
            if best is not None:
                choice, candidates, target = best
                extra.update(reward=choice.rewards[choice.index] if choice.rewards else None,
                             chosen_index=choice.index, candidates=len(candidates))  # fmt: skip
            last = held if held is not None else state.chunk([])
            held = None
            last["flywheel"] = self._flywheel(state.response_id, target.version_id, prepared, **extra)
            yield sse(last)
            texts = best[1] if best is not None else state.joined()
            served = ({best[0].index: outputs[0]} if best is not None else
                      {pos: state.outputs[i] for pos, i in enumerate(sorted(state.texts)) if i in state.outputs})
            self._record(req, state.response_id, target, prepared, texts, best[0].index if best else 0,
                         best[0].rewards if best else None, outputs, started, served=served)  # fmt: skip
        except PolicyError as exc:
            state.status = "stream_error"
            self.upstream.count_failure(target, exc)
            if held is not None:  # a choice that finished before the failure still gets its end
                yield sse(held)
            yield sse(map_policy_error(exc).body())
        except (asyncio.CancelledError, GeneratorExit):
            state.status = "client_closed"
            raise
        finally:
            self._release()
            self._observe(target, state.status, started, state.completion_tokens, stream=True,
                          response_id=state.response_id)  # fmt: skip
        yield DONE

    # --- bookkeeping ------------------------------------------------------------------------
    def _observe(self, target: RouteEntry, status: str, started: float, tokens: int, *, stream: bool,
                 response_id: str) -> None:  # fmt: skip
        elapsed = time.perf_counter() - started
        metrics = self.telemetry.metrics
        metrics.tokens.labels(target.version_id).inc(tokens)
        metrics.latency.labels(target.version_id, "true" if stream else "false").observe(elapsed)
        metrics.requests.labels(target.version_id, status).inc()
        # A line per request costs ~10 % of the hot path: successes at DEBUG, everything else at INFO.
        level = logging.DEBUG if status == "200" else logging.INFO
        if log.isEnabledFor(level):
            ctx = trace.get_current_span().get_span_context()
            log.log(level, "chat request", extra={
                "response_id": response_id, "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else None,
                "policy_version": target.version_id, "status": status, "latency_ms": round(elapsed * 1000, 2),
                "stream": stream})  # fmt: skip

    def _record(
        self, req: ChatCompletionRequest, response_id: str, target: RouteEntry, prepared: Prepared,
        texts: list[str], chosen: int, rewards: list[float] | None, outputs: list[Any], started: float,
        *, served: Mapping[int, ChainResult],
    ) -> None:  # fmt: skip
        """Hand the interaction to the recorder (O(1); redaction and Kafka happen off this path).
        ``served``: candidate index -> the output check of what the user got for it (gateway.chat.recordable)."""
        if self.recorder is None:
            return

        screen = partial(recordable_candidates, texts, chosen, rewards, served, self.pipeline.check_output)
        # Candidates the user did not see (best-of-n) need output checks: the recorder's thread runs them.
        unseen = any(i not in served for i in range(len(texts)))
        candidates, chosen_index, kept_rewards = (texts, chosen, rewards) if unseen else screen()
        ctx = trace.get_current_span().get_span_context()
        self.recorder.submit(InteractionFacts(
            response_id=response_id, policy_version=target.version_id,
            # what the policy saw (redacted input plus the grounding sources), so that preference
            # pairs train the policy on the prompts it actually answered
            messages=prepared.messages,
            candidates=candidates, chosen_index=chosen_index, rewards=kept_rewards,
            grounding_doc_ids=prepared.doc_ids,
            safety=[r.to_dict() for r in [prepared.input_safety, *outputs] if r is not None],
            latency_ms=(time.perf_counter() - started) * 1000,
            trace_id=format(ctx.trace_id, "032x") if ctx.is_valid else None, user=req.user,
            screen=screen if unseen else None,
        ))  # fmt: skip
