"""A canary's rollout state, kept in its version's metrics JSON so that every process sees it.

Two keys, written by different parties so that neither overwrites the other (the registry merges
top-level keys inside its lock): ``canary`` (the controller's: step, the weight it runs at, timers,
failures, counter baselines) and ``canary_paused`` (the operator's, through the API).
``canary_analysis`` holds the latest analysis for display.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from deploy.canary.metrics import Counters
from policies.registry import CANARY_PAUSED_KEY
from policies.registry_models import Version, aware

STATE_KEY = "canary"
PAUSED_KEY = CANARY_PAUSED_KEY  # the registry checks it too (``Expected.paused``)
ANALYSIS_KEY = "canary_analysis"


@dataclass(frozen=True)
class CanaryState:
    """Where one canary's rollout stands."""

    step: int
    step_started_at: datetime
    rollout_started_at: datetime
    failures: int = 0
    failed_evidence: int = -1  # evidence count at the last counted failure (count each evidence once)
    needs_operator: bool = False
    baseline: Counters = field(default_factory=dict)  # gateway counters when the step started
    # the weight this step runs at: the plan's, or an operator's off-plan weight adopted as this step
    # (None in states written before it was kept: the plan's step weight)
    weight: float | None = None
    rollout_baseline: Counters | None = None  # gateway counters when the rollout started (None: unknown)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["step_started_at"] = self.step_started_at.isoformat()
        out["rollout_started_at"] = self.rollout_started_at.isoformat()
        return out

    @classmethod
    def of(cls, version: Version) -> CanaryState | None:
        raw = version.metrics.get(STATE_KEY)
        if not isinstance(raw, dict):
            return None
        return cls(
            step=int(raw["step"]),
            step_started_at=aware(datetime.fromisoformat(raw["step_started_at"])),
            rollout_started_at=aware(datetime.fromisoformat(raw["rollout_started_at"])),
            failures=int(raw.get("failures", 0)),
            failed_evidence=int(raw.get("failed_evidence", -1)),
            needs_operator=bool(raw.get("needs_operator", False)),
            baseline=_counters(raw.get("baseline")) or {},
            weight=float(raw["weight"]) if raw.get("weight") is not None else None,
            rollout_baseline=_counters(raw.get("rollout_baseline")),
        )

    def next_step(self, now: datetime, baseline: Counters, weight: float | None = None) -> CanaryState:
        """The state at the start of the following step (a fresh window) running at ``weight``."""
        return replace(self, step=self.step + 1, step_started_at=now, failed_evidence=-1,
                       needs_operator=False, baseline=baseline, weight=weight)  # fmt: skip


def _counters(raw: Any) -> Counters | None:
    return {k: [float(x) for x in v] for k, v in raw.items()} if isinstance(raw, dict) else None


def is_paused(version: Version) -> bool:
    return bool(version.metrics.get(PAUSED_KEY, False))
