"""The simulation's only way into Flywheel: the public HTTP API, as a real client would use it.

Chat goes through the official ``openai`` SDK (so the simulation also proves the SDK works
unmodified), ratings through ``POST /v1/feedback`` with the token the answer carried. Nothing here
imports the gateway: a simulated user can only do what a real one can.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from flywheel.simulate.rating import Thumb

RETRY_STATUSES = {429, 503}
MAX_RETRY_WAIT_S = 10.0


@dataclass(frozen=True)
class ChatOptions:
    """Sampling and Flywheel extensions sent with every question."""

    model: str = "flywheel"
    max_tokens: int = 128
    temperature: float | None = 0.8
    best_of_n: int | None = None
    grounding: bool | None = None

    def extra_body(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.best_of_n is not None:
            extra["best_of_n"] = self.best_of_n
        if self.grounding is not None:
            extra["grounding"] = self.grounding
        return extra


@dataclass(frozen=True)
class ChatAnswer:
    """The parts of a completion a simulated user looks at or needs to rate it."""

    text: str
    finish_reason: str | None
    response_id: str
    policy_version: str
    feedback_token: str | None


class FeedbackRejected(Exception):
    """A rating that could not be posted: ``/v1/feedback`` refused it, or there was nothing to post."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def error_kind(exc: BaseException) -> str:
    """A short, countable name for a failure: the HTTP status when there was one, else its class."""
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, FeedbackRejected):
        return exc.kind
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
        return "connection"
    return type(exc).__name__


def _flywheel_object(completion: Any) -> dict[str, Any]:
    extra = getattr(completion, "model_extra", None) or {}
    obj = extra.get("flywheel") or getattr(completion, "flywheel", None)
    if not isinstance(obj, dict):
        raise ValueError("the completion carries no flywheel object")
    return obj


def _retry_after(resp: httpx.Response, attempt: int) -> float:
    try:
        wait = float(resp.headers.get("retry-after", ""))
    except ValueError:
        wait = 0.5 * 2**attempt
    return min(max(wait, 0.05), MAX_RETRY_WAIT_S)


class GatewayClient:
    """One connection pool for chat and one for feedback, shared by every simulated user."""

    def __init__(
        self, url: str, api_key: str | None, *, timeout_s: float = 120.0, max_connections: int = 16,
        max_retries: int = 2,
    ) -> None:  # fmt: skip
        base = url.rstrip("/")
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.max_retries = max_retries
        self._chat = openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key=api_key or "none", timeout=timeout_s, max_retries=max_retries,
            http_client=httpx.AsyncClient(limits=limits, timeout=timeout_s),
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout_s, limits=limits)

    async def ask(self, question: str, user: str, options: ChatOptions, seed: int | None = None) -> ChatAnswer:
        """One non-streaming chat turn as user ``user`` (sticky routing follows the id)."""
        completion = await self._chat.chat.completions.create(
            model=options.model, messages=[{"role": "user", "content": question}], user=user,
            max_tokens=options.max_tokens, temperature=options.temperature, seed=seed,
            extra_body=options.extra_body() or None,
        )  # fmt: skip
        meta = _flywheel_object(completion)
        choice = completion.choices[0]
        return ChatAnswer(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            response_id=meta.get("response_id") or completion.id,
            policy_version=str(meta.get("policy_version") or "unknown"),
            feedback_token=meta.get("feedback_token"),
        )

    async def rate(self, answer: ChatAnswer, thumb: Thumb, user: str, idempotency_key: str) -> str:
        """Post ``user``'s rating (the gateway's rate limit and the export's per-user cap count by it);
        retries 429/503 after Retry-After with the same idempotency key, so it is never stored twice.
        Returns the event id."""
        if not answer.feedback_token:
            raise FeedbackRejected("no_feedback_token", "the answer carried no feedback token")
        body = {"response_id": answer.response_id, "feedback_token": answer.feedback_token,
                "rating": thumb, "user": user, "idempotency_key": idempotency_key}  # fmt: skip
        for attempt in range(self.max_retries + 1):
            resp = await self._http.post("/v1/feedback", json=body)
            if resp.status_code == 202:
                return str(resp.json().get("event_id", ""))
            if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                break
            await asyncio.sleep(_retry_after(resp, attempt))
        raise FeedbackRejected(f"http_{resp.status_code}", _message(resp))

    async def aclose(self) -> None:
        await self._chat.close()
        await self._http.aclose()


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]
