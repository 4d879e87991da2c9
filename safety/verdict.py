"""What a safety filter decides, and what a whole chain decided.

Kept as plain frozen dataclasses with ``to_dict()`` so the same object goes into the response's
``flywheel.safety`` field, the interaction event and the logs without a second schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["allow", "redact", "block"]

# Severity order: a chain's action is its most severe verdict.
_RANK: dict[str, int] = {"allow": 0, "redact": 1, "block": 2}


@dataclass(frozen=True)
class Verdict:
    """One filter's decision. ``score`` is the filter's confidence in [0, 1] (1 = certain match)."""

    filter: str
    action: Action
    reason: str = ""
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"filter": self.filter, "action": self.action, "reason": self.reason, "score": round(self.score, 4)}


def allow(name: str, reason: str = "", score: float = 0.0) -> Verdict:
    return Verdict(name, "allow", reason, score)


def worst(actions: list[Action]) -> Action:
    """The most severe action of a list (``allow`` for an empty one)."""
    best: Action = "allow"
    for action in actions:
        if _RANK[action] > _RANK[best]:
            best = action
    return best


@dataclass(frozen=True)
class ChainResult:
    """Every verdict of one pass, plus the text to use next (possibly redacted).

    ``text`` is the checked text after redactions (output side; for input the last user message).
    ``messages`` is the redacted copy of the request's messages (input side only).
    A blocked result keeps the redacted text so callers can log it; they must never send it.
    """

    stage: Literal["input", "output"]
    verdicts: tuple[Verdict, ...]
    text: str
    messages: list[dict[str, Any]] | None = None
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> Action:
        return worst([v.action for v in self.verdicts])

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def redacted(self) -> bool:
        return any(v.action == "redact" for v in self.verdicts)

    @property
    def blocking(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.action == "block"]

    def reason(self) -> str:
        """A short operator-facing reason (never shown to end users: they get the refusal)."""
        hits = self.blocking or [v for v in self.verdicts if v.action != "allow"]
        return "; ".join(f"{v.filter}: {v.reason}" for v in hits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary for ``flywheel.safety`` and the interaction event (no raw text)."""
        return {
            "stage": self.stage,
            "action": self.action,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "latency_ms": round(self.latency_ms, 3),
        }
