"""Event schemas on the wire: JSON with a ``schema_version``, keyed by ``response_id``.

Free text (message contents, candidate texts, comments) is PII-redacted by the model validators
themselves, so an event object cannot hold unredacted text no matter who builds it; redaction is
idempotent, so decoding an event re-validates without changing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=_new_id, min_length=1, max_length=128)
    response_id: str = Field(min_length=1, max_length=128)
    time: datetime = Field(default_factory=_now)
    policy_version: str | None = None
    user_hash: str | None = None

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
    chosen_index: int = 0
    grounding_doc_ids: list[str] = Field(default_factory=list)
    safety: list[dict[str, Any]] = Field(default_factory=list)
    latency_ms: float | None = None
    trace_id: str | None = None

    @model_validator(mode="after")
    def _chosen_in_range(self) -> Interaction:
        if self.candidates and not 0 <= self.chosen_index < len(self.candidates):
            raise ValueError(f"chosen_index {self.chosen_index} out of range for {len(self.candidates)} candidates")
        return self


RatingRaw = Annotated[str | int | float, Field(union_mode="left_to_right")]


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
            raw = float(word)
        except ValueError as exc:
            raise ValueError(f"unknown rating {raw!r}: use up/down, a score in [-1, 1] or 1-5 stars") from exc
    value = float(raw)
    is_int = value == int(value)
    if scale == "stars" or (scale == "auto" and is_int and 2 <= value <= 5):
        if not (is_int and 1 <= value <= 5):
            raise ValueError(f"stars must be an integer 1-5, got {raw!r}")
        return (value - 3.0) / 2.0
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"score must be in [-1, 1], got {raw!r}")
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
        return _clean(value) if isinstance(value, str) else value

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
