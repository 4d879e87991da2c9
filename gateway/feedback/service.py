"""Behaviour behind ``POST /v1/feedback``: check the token, dedupe, rate-limit, send durably.

The signed token is the proof that the caller was given this response, so the store is never read on
this path: a rating may (and under load often does) arrive before its interaction is consumed, and
the store accepts it either way. 202 means the event is durable — Kafka acknowledged it, or it was
fsync'd into this process's spool, from which the producer replays it once the broker is back.

Order of checks, cheapest and most final first: token (403), idempotency repeat (answered without
spending rate budget or writing again), rate limit (429), then the durable send (503 if neither
Kafka nor the spool would take it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from feedback.events import Feedback, hash_user
from feedback.producer import DeliveryError
from feedback.tokens import FeedbackTokenSigner, InvalidToken, TokenClaims
from flywheel.settings import Settings
from gateway.auth import Principal
from gateway.errors import Conflict, Forbidden, RateLimited, ServiceUnavailable
from gateway.feedback.idempotency import IdempotencyCache, IdempotencyConflict, keyed_event_id
from gateway.feedback.protocol import FeedbackAccepted, FeedbackRequest
from gateway.ratelimit import TokenBucketLimiter, retry_after

__all__ = ["DurableSink", "FeedbackService", "Submitted"]


class DurableSink(Protocol):
    """What the service needs of the producer: an awaitable durable send."""

    async def asend_durable(self, event: Feedback) -> None: ...


@dataclass(frozen=True)
class Submitted:
    """The 202 body, and whether it replays an earlier request with the same idempotency key."""

    body: FeedbackAccepted
    replayed: bool


def _fingerprint(req: FeedbackRequest) -> str:
    """What must match for a repeat to count as 'the same request'."""
    payload = json.dumps([req.rating, req.scale, req.comment, req.user], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class FeedbackService:
    """One per gateway process: owns the limiter and the idempotency map (both in memory)."""

    def __init__(
        self,
        sink: DurableSink,
        signer: FeedbackTokenSigner,
        *,
        user_salt: str,
        limiter: TokenBucketLimiter,
        idempotency: IdempotencyCache,
        registry: CollectorRegistry | None = None,
        key_limiter: TokenBucketLimiter | None = None,
    ) -> None:
        self._sink = sink
        self._signer = signer
        self._salt = user_salt
        self._limiter = limiter
        self._key_limiter = key_limiter  # per key alone: one key posing as many raters (docs/security.md)
        self._idem = idempotency
        self._outcomes = Counter(
            "flywheel_feedback_requests", "POST /v1/feedback by outcome", ["outcome"],
            registry=registry or CollectorRegistry(),
        )  # fmt: skip

    @classmethod
    def from_settings(
        cls, settings: Settings, sink: DurableSink, signer: FeedbackTokenSigner, registry: CollectorRegistry | None
    ) -> FeedbackService:
        limiter = TokenBucketLimiter(
            settings.feedback_rate_per_s, settings.feedback_rate_burst, settings.feedback_rate_max_keys
        )
        idempotency = IdempotencyCache(settings.feedback_idempotency_ttl_s, settings.feedback_idempotency_max_keys)
        per_key = settings.feedback_key_rate_per_s
        return cls(
            sink, signer, user_salt=settings.user_hash_salt, limiter=limiter, idempotency=idempotency,
            registry=registry,
            key_limiter=TokenBucketLimiter(per_key, settings.feedback_key_rate_burst) if per_key > 0 else None,
        )  # fmt: skip

    async def submit(self, req: FeedbackRequest, principal: Principal, session_id: str | None) -> Submitted:
        claims = self._verify(req)
        key = (req.response_id, req.idempotency_key) if req.idempotency_key else None
        if key is not None:
            try:
                first = self._idem.claim(key, _fingerprint(req))
            except IdempotencyConflict as exc:
                self._outcomes.labels("conflict").inc()
                raise Conflict(str(exc), param="idempotency_key", code="idempotency_key_reused") from None
            if first is not None:
                event_id = await self._await_first(first)
                self._outcomes.labels("replayed").inc()
                return Submitted(FeedbackAccepted(event_id=event_id, response_id=req.response_id), True)
        rater = req.user or session_id
        try:
            if self._key_limiter is not None:
                self._rate_limit(self._key_limiter, principal.actor)
            self._rate_limit(self._limiter, f"{principal.actor}|{rater or ''}")
            event = self._event(req, claims, rater or principal.actor)
            await self._send(event)
        except BaseException as exc:
            if key is not None:
                self._idem.fail(key, exc)
            raise
        if key is not None:
            self._idem.resolve(key, event.event_id)
        self._outcomes.labels("accepted").inc()
        return Submitted(FeedbackAccepted(event_id=event.event_id, response_id=req.response_id), False)

    # --- steps -------------------------------------------------------------------------------
    def _verify(self, req: FeedbackRequest) -> TokenClaims:
        try:
            return self._signer.verify(req.feedback_token, req.response_id)
        except InvalidToken as exc:
            self._outcomes.labels("forbidden").inc()
            raise Forbidden(f"invalid feedback_token: {exc.reason}", param="feedback_token",
                            code="invalid_feedback_token") from None  # fmt: skip

    def _rate_limit(self, limiter: TokenBucketLimiter, bucket: str) -> None:
        wait_s = limiter.acquire(bucket)
        if wait_s > 0:
            self._outcomes.labels("rate_limited").inc()
            seconds = retry_after(wait_s)
            raise RateLimited(
                f"too many ratings; retry in {seconds}s", code="rate_limit_exceeded",
                headers={"Retry-After": seconds},
            )  # fmt: skip

    def _event(self, req: FeedbackRequest, claims: TokenClaims, rater: str) -> Feedback:
        """The wire event; its validator redacts PII from the comment before anything sees it."""
        fields: dict[str, object] = {
            "policy_version": claims.policy_version,
            "comment": req.comment,
            "idempotency_key": req.idempotency_key,
            "user_hash": hash_user(rater, self._salt),
        }
        if req.idempotency_key:
            fields["event_id"] = keyed_event_id(req.response_id, req.idempotency_key)
        return Feedback.from_raw(req.response_id, req.rating, req.scale, **fields)

    async def _send(self, event: Feedback) -> None:
        try:
            await self._sink.asend_durable(event)
        except DeliveryError as exc:
            self._outcomes.labels("unavailable").inc()
            raise ServiceUnavailable(
                f"rating not stored, retry: {exc}", code="feedback_unavailable", headers={"Retry-After": "5"}
            ) from None

    async def _await_first(self, first: asyncio.Future[str]) -> str:
        """A repeat waits for the first request's durable ack; if that failed, so does the repeat."""
        return await asyncio.shield(first)
