"""Event schemas on the wire: JSON with a ``schema_version``, keyed by ``response_id``.

Free text (message contents, candidate texts, comments) is PII-redacted by the model validators
themselves, so an event object cannot hold unredacted text no matter who builds it; redaction is
idempotent, so decoding an event re-validates without changing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.ids import random_hex128
from safety.pii import redact

__all__ = [
    "SCHEMA_VERSION",
    "Candidate",
    "Event",
    "EventDecodeError",
    "Feedback",
    "Interaction",
    "Message",
    "decode_event",
    "hash_user",
    "normalise_rating",
]

SCHEMA_VERSION = 1


class EventDecodeError(ValueError):
    """A message on the wire is not a valid event; ``reason`` says why (for the dead-letter topic)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def hash_user(user_id: str | None, salt: str) -> str | None:
    """Salted HMAC-SHA256 of a user id: stable per user (sticky analysis), not reversible without the salt."""
    if not user_id:
        return None
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return random_hex128()


def _clean(text: str | None) -> str | None:
    return None if text is None else redact(text).text


def _no_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL (SQLite can): refuse it here, not as a dead letter after a 202."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text must not contain NUL (\\u0000) characters")
    return value


def _utc(value: datetime) -> datetime:
    """Store UTC only: SQLite drops the offset (12:00+02:00 would read back as 12:00); naive means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _EventBase(BaseModel):
    """Fields every event has; string bounds match the store's columns (PostgreSQL enforces them, SQLite not)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=_new_id, min_length=1, max_length=128)
    response_id: str = Field(min_length=1, max_length=128)
    time: datetime = Field(default_factory=_now)
    policy_version: str | None = Field(None, max_length=128)
    user_hash: str | None = Field(None, max_length=64)

    @field_validator("event_id", "response_id", "policy_version", "user_hash")
    @classmethod
    def _base_no_nul(cls, value: Any) -> Any:
        return _no_nul(value)

    @field_validator("time")
    @classmethod
    def _time_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @property
    def key(self) -> bytes:
        """Kafka key: every event of one response lands on one partition, in order."""
        return self.response_id.encode()


class Message(BaseModel):
    """One chat message; ``content`` is redacted on construction."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    role: str
    content: str = ""

    @field_validator("content", mode="before")
    @classmethod
    def _redact(cls, value: Any) -> Any:
        if isinstance(value, list):  # OpenAI content parts: keep the text parts only
            value = "\n".join(p.get("text", "") for p in value if isinstance(p, dict))
        return _clean(value) if isinstance(value, str) else value


class Candidate(BaseModel):
    """One generated candidate and the reward model's score for it (None when n=1)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    text: str
    reward: float | None = None

    @field_validator("text", mode="before")
    @classmethod
    def _redact(cls, value: Any) -> Any:
        return _clean(value) if isinstance(value, str) else value


class Interaction(_EventBase):
    """What the gateway served: the (redacted) conversation as the policy saw it — the client's
    messages plus the grounding ``Sources:`` system message when grounding ran — the candidates and
    the pick (``grounding_doc_ids`` names the documents behind the sources)."""

    kind: Literal["interaction"] = "interaction"
    messages: list[Message] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    chosen_index: int = Field(0, ge=0, le=2**31 - 1)  # an INTEGER column: PostgreSQL's is 32-bit
    grounding_doc_ids: list[str] = Field(default_factory=list)
    safety: list[dict[str, Any]] = Field(default_factory=list)
    latency_ms: float | None = None
    trace_id: str | None = Field(None, max_length=64)

    @field_validator("trace_id")
    @classmethod
    def _trace_no_nul(cls, value: Any) -> Any:
        return _no_nul(value)

    @model_validator(mode="after")
    def _chosen_in_range(self) -> Interaction:
        if self.candidates and not 0 <= self.chosen_index < len(self.candidates):
            raise ValueError(f"chosen_index {self.chosen_index} out of range for {len(self.candidates)} candidates")
        return self


RatingRaw = Annotated[str | int | float, Field(union_mode="left_to_right")]
_RATING_HELP = "use up/down, a score in [-1, 1] or 1-5 stars"


def _shown(raw: object) -> str:
    """The rating as quoted back in an error, cut short: a 400-digit number must not fill the message."""
    if isinstance(raw, int) and abs(raw) >= 10**30:  # repr() of a 5000-digit int raises ValueError
        return "<an integer too large to be a rating>"
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def normalise_rating(raw: str | float | int, scale: Literal["auto", "score", "stars"] = "auto") -> float:
    """Map ``up``/``down``, a score in [-1, 1], or 1-5 stars onto one scale in [-1, 1].

    With ``scale="auto"`` an integer 2..5 is read as stars (1 star = -1, 3 = 0, 5 = +1) and any other
    number as a score; ``1`` is ambiguous and read as a score (+1) unless ``scale="stars"``.
    """
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in {"up", "thumbs_up", "+1", "like", "good"}:
            return 1.0
        if word in {"down", "thumbs_down", "-1", "dislike", "bad"}:
            return -1.0
        try:
            value = float(word)
        except ValueError as exc:
            raise ValueError(f"unknown rating {_shown(raw)}: {_RATING_HELP}") from exc
    else:
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond float range: a ValueError (422), not a 500
            raise ValueError(f"rating {_shown(raw)} is out of range: {_RATING_HELP}") from None
    if not math.isfinite(value):  # "inf", "nan", "1e999", 1e999 (parsed as inf): int(value) would raise
        raise ValueError(f"rating {_shown(raw)} is not a finite number: {_RATING_HELP}")
    is_int = value == int(value)
    if scale == "stars" or (scale == "auto" and is_int and 2 <= value <= 5):
        if not (is_int and 1 <= value <= 5):
            raise ValueError(f"stars must be an integer 1-5, got {_shown(raw)}")
        return (value - 3.0) / 2.0
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"score must be in [-1, 1], got {_shown(raw)}")
    return value


class Feedback(_EventBase):
    """A user's rating of one response, on one scale in [-1, 1]; ``rating_raw`` keeps what was sent."""

    kind: Literal["feedback"] = "feedback"
    rating: float = Field(ge=-1.0, le=1.0)
    rating_raw: RatingRaw
    comment: str | None = Field(None, max_length=10_000)
    idempotency_key: str | None = Field(None, max_length=256)

    @field_validator("comment", mode="before")
    @classmethod
    def _redact(cls, value: Any) -> Any:
        """Redact PII; drop NUL, which PostgreSQL text refuses (a rejection here would be a 500 after the
        gateway's own checks passed, and a dead letter after a 202 if it reached the store)."""
        return _clean(value.replace("\x00", "")) if isinstance(value, str) else value

    @field_validator("idempotency_key")
    @classmethod
    def _key_no_nul(cls, value: Any) -> Any:
        return _no_nul(value)

    @classmethod
    def from_raw(
        cls,
        response_id: str,
        raw: str | float | int,
        scale: Literal["auto", "score", "stars"] = "auto",
        **fields: Any,
    ) -> Feedback:
        """Build from what a widget sent: normalises ``raw`` and keeps it."""
        return cls(response_id=response_id, rating=normalise_rating(raw, scale), rating_raw=raw, **fields)


Event = Interaction | Feedback
_KINDS: dict[str, type[Interaction] | type[Feedback]] = {"interaction": Interaction, "feedback": Feedback}


def decode_event(payload: bytes | str) -> Event:
    """Parse one wire message; raise EventDecodeError with a short reason for the dead-letter topic."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventDecodeError(f"bad json: {exc}") from exc
    if not isinstance(data, dict):
        raise EventDecodeError("bad json: not an object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EventDecodeError(f"unknown schema_version {version!r}")
    model = _KINDS.get(str(data.get("kind")))
    if model is None:
        raise EventDecodeError(f"unknown kind {data.get('kind')!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise EventDecodeError(f"schema: {where}: {first.get('msg')}") from exc
