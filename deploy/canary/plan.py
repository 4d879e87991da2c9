"""The rollout plan: traffic steps, how much evidence a step needs, and the per-metric conditions.

The vocabulary is Argo Rollouts': each metric has a success and a failure condition, a failed analysis
counts against ``failure_limit`` (one failure more than the limit rolls back), and an analysis that is
neither success nor failure is inconclusive, which holds the rollout (for good, once a step has seen
``max_ratings_per_step`` ratings: then an operator decides).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from flywheel.settings import Settings

Comparison = Literal["beta", "normal", "ratio"]

# metric name -> (comparison, higher is better)
METRICS: dict[str, tuple[Comparison, bool]] = {
    "thumbs_up_rate": ("beta", True),
    "mean_reward": ("normal", True),
    "error_rate": ("beta", False),
    "safety_block_rate": ("beta", False),
    "latency_p99_ms": ("ratio", False),
}


class PlanError(ValueError):
    """The plan is inconsistent (steps out of order or outside (0, 1], thresholds out of range)."""


@dataclass(frozen=True)
class MetricCondition:
    """How one metric is judged against stable.

    beta/normal: success when P(canary not worse than stable by more than ``margin``) >= the plan's
    success probability; failure when P(canary worse by more than ``margin``) >= its failure
    probability. ratio (p99 latency): failure when canary / stable > ``max_ratio``, else success.
    ``required``: promotion waits for this metric's success. The others are guardrails: their failure
    rolls back, but they need not prove success (a rare event such as a safety block would otherwise
    need thousands of answers per step); they are skipped when neither version has data.

    Checked on construction (``PlanError``), since a bad threshold silently decides every rollout: a
    rate's margin must be in [0, 1) (at 1 the metric can never fail), a reward margin >= 0, and the
    latency condition needs a ``max_ratio`` >= 1 (below 1 a canary as fast as the stable fails).
    """

    metric: str
    margin: float = 0.0
    max_ratio: float | None = None  # latency_p99_ms only, and required there
    min_samples: int = 1
    required: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise PlanError(f"unknown metric {self.metric!r}; known: {sorted(METRICS)}")
        name, comparison = self.metric, self.comparison
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise PlanError(f"{name}: min_samples must be an integer >= 1, got {self.min_samples!r}")
        if comparison == "ratio":
            if self.max_ratio is None:
                raise PlanError(f"{name}: max_ratio is required (canary p99 / stable p99 that fails, e.g. 1.5)")
            if not _number(self.max_ratio) or not 1.0 <= self.max_ratio < math.inf:
                raise PlanError(f"{name}: max_ratio must be a number >= 1 (below 1 a canary as fast as the stable "
                                f"fails), got {self.max_ratio!r}")  # fmt: skip
            if self.margin:
                raise PlanError(f"{name}: margin does not apply to a p99 ratio; use max_ratio")
            return
        if self.max_ratio is not None:
            raise PlanError(f"{name}: max_ratio applies to latency_p99_ms only; use margin")
        if not _number(self.margin) or not math.isfinite(self.margin):
            raise PlanError(f"{name}: margin must be a number, got {self.margin!r}")
        if comparison == "beta" and not 0.0 <= self.margin < 1.0:
            raise PlanError(f"{name}: margin must be in [0, 1) (a difference of rates; at 1 it can never fail), "
                            f"got {self.margin}")  # fmt: skip
        if comparison == "normal" and self.margin < 0.0:
            raise PlanError(f"{name}: margin must be >= 0, got {self.margin}")

    @property
    def comparison(self) -> Comparison:
        return METRICS[self.metric][0]

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class RolloutPlan:
    """Every knob of a canary rollout (printable; the controller stores it with each decision)."""

    steps: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0)
    min_ratings_per_step: int = 100
    max_ratings_per_step: int = 1000
    min_seconds_per_step: float = 600.0
    success_probability: float = 0.95
    failure_probability: float = 0.95
    failure_limit: int = 0
    conditions: tuple[MetricCondition, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.steps or any(not 0.0 < s <= 1.0 for s in self.steps):
            raise PlanError(f"steps must be weights in (0, 1], got {self.steps}")
        if list(self.steps) != sorted(self.steps):
            raise PlanError(f"steps must not decrease, got {self.steps}")
        for name in ("success_probability", "failure_probability"):
            if not 0.5 < getattr(self, name) < 1.0:
                raise PlanError(f"{name} must be in (0.5, 1)")
        if self.min_ratings_per_step < 1:
            raise PlanError(f"min_ratings_per_step must be >= 1, got {self.min_ratings_per_step}")
        if self.max_ratings_per_step < self.min_ratings_per_step:
            raise PlanError("max_ratings_per_step must be >= min_ratings_per_step")
        if not self.min_seconds_per_step >= 0:
            raise PlanError(f"min_seconds_per_step must be >= 0, got {self.min_seconds_per_step}")
        if self.failure_limit < 0:
            raise PlanError(f"failure_limit must be >= 0, got {self.failure_limit}")
        unknown = [c.metric for c in self.conditions if c.metric not in METRICS]
        if unknown:
            raise PlanError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
        metrics = [c.metric for c in self.conditions]
        twice = sorted({m for m in metrics if metrics.count(m) > 1})
        if twice:
            raise PlanError(f"one condition per metric; {twice} appear more than once")

    @property
    def last_step(self) -> int:
        return len(self.steps) - 1

    def condition(self, metric: str) -> MetricCondition | None:
        return next((c for c in self.conditions if c.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> RolloutPlan:
        """The plan from the ``canary_*`` settings (env, .env or flywheel.toml); a bad one is a PlanError
        that says so."""
        try:
            return cls._from_settings(settings)
        except PlanError as exc:
            raise PlanError(f"canary settings (FLYWHEEL_CANARY_*): {exc}") from None

    @classmethod
    def _from_settings(cls, settings: Settings) -> RolloutPlan:
        s = settings
        return cls(
            steps=tuple(s.canary_steps),
            min_ratings_per_step=s.canary_min_ratings_per_step,
            max_ratings_per_step=s.canary_max_ratings_per_step,
            min_seconds_per_step=s.canary_min_seconds_per_step,
            success_probability=s.canary_success_probability,
            failure_probability=s.canary_failure_probability,
            failure_limit=s.canary_failure_limit,
            conditions=(
                MetricCondition("thumbs_up_rate", margin=s.canary_margin,
                                min_samples=s.canary_min_ratings_per_step, required=True),
                MetricCondition("mean_reward", margin=s.canary_reward_margin, min_samples=s.canary_min_latency_samples),
                MetricCondition("error_rate", margin=s.canary_error_rate_margin,
                                min_samples=s.canary_min_latency_samples),
                MetricCondition("safety_block_rate", margin=s.canary_safety_block_margin,
                                min_samples=s.canary_min_latency_samples),
                MetricCondition("latency_p99_ms", max_ratio=s.canary_latency_p99_max_ratio,
                                min_samples=s.canary_min_latency_samples),
            ),
        )

    @classmethod
    def from_toml(cls, path: Path, base: RolloutPlan | None = None) -> RolloutPlan:
        """A plan from the ``[canary]`` table of a TOML file; ``[[canary.conditions]]`` replace the
        base plan's conditions (metric, margin, max_ratio, min_samples, required)."""
        table = tomllib.loads(path.read_text()).get("canary", {})
        base = base or cls()
        known = {f.name for f in fields(cls)}
        extra = set(table) - known
        if extra:
            raise PlanError(f"unknown [canary] keys {sorted(extra)}")
        values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(cls)}
        values.update({k: v for k, v in table.items() if k != "conditions"})
        try:
            values["steps"] = tuple(float(x) for x in values["steps"])
        except (TypeError, ValueError):
            raise PlanError(f"[canary] steps must be a list of numbers, got {values['steps']!r}") from None
        if "conditions" in table:
            values["conditions"] = tuple(_condition(c) for c in table["conditions"])
        return cls(**values)


def _condition(raw: Any) -> MetricCondition:
    """One ``[[canary.conditions]]`` table; unknown keys are a PlanError, not a TypeError."""
    known = {f.name for f in fields(MetricCondition)}
    if not isinstance(raw, dict) or set(raw) - known:
        extra = sorted(set(raw) - known) if isinstance(raw, dict) else raw
        raise PlanError(f"[[canary.conditions]]: unknown keys {extra}; known: {sorted(known)}")
    return MetricCondition(**raw)
