"""The live analysis of every canary: registry + metrics + plan -> one report per canary.

Shared by the controller (which acts on the decision) and the operator API (which shows it), so
both always agree on the numbers. The stable is compared over the same window as the canary (since
the canary's step started); when the stable has too few ratings there, which happens at a 100 % step,
its window widens to the whole rollout. Its error counters widen the same way (too few attempts since
the step's baseline: since the rollout's), since at 100 % the stable only serves the canary's fallbacks.

While gateway ``/metrics`` are configured but none could be read, the error rate is unknown: the
analysis may still roll back on the other metrics, but never passes a step or promotes (and the
controller starts no window, whose counter baseline would be missing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deploy.canary.analysis import Decision, MetricResult, decide, judge
from deploy.canary.metrics import (
    Counters,
    GatewayCounters,
    StoreMetrics,
    VersionMetrics,
    since_baseline,
)
from deploy.canary.plan import RolloutPlan
from deploy.canary.state import CanaryState, is_paused
from policies.registry import PolicyRegistry
from policies.registry_models import Version, utcnow


@dataclass(frozen=True)
class CanaryReport:
    """One canary's analysis: where it stands, the numbers, and the decision with its reason."""

    version_id: str
    stable_id: str
    weight: float
    state: CanaryState
    started: bool  # False: the controller has not adopted it yet (state is provisional)
    paused: bool
    elapsed_s: float
    canary: VersionMetrics
    stable: VersionMetrics
    results: list[MetricResult]
    decision: Decision
    new_evidence: bool
    counters_unreadable: bool = False  # gateway /metrics configured, but none could be read this time

    def to_dict(self, plan: RolloutPlan) -> dict[str, Any]:
        """The audit log's and the API's view: every number behind the decision."""
        return {
            "version_id": self.version_id, "stable_id": self.stable_id, "weight": self.weight,
            "step": self.state.step, "steps": list(plan.steps), "started": self.started,
            "paused": self.paused, "elapsed_s": round(self.elapsed_s, 1), "failures": self.decision.failures,
            "failure_limit": plan.failure_limit, "decision": self.decision.action,
            "why": self.decision.reason, "needs_operator": self.decision.needs_operator,
            "metrics": {r.metric: r.to_dict() for r in self.results},
            "canary": self.canary.to_dict(), "stable": self.stable.to_dict(),
            "gateway_metrics_unreadable": self.counters_unreadable,
        }


class _Read:
    """The default of ``CanaryAnalyzer.reports``: read the counters (None means "read, nothing came")."""


READ = _Read()
UNREADABLE = "gateway /metrics unreadable: the error rate is unknown"


def evidence(m: VersionMetrics) -> int:
    """How much the canary has been observed (grows with every rating, answer or request)."""
    return m.ratings + m.interactions + (m.attempts or 0)


class CanaryAnalyzer:
    """Builds reports; reads only (the controller and the operator API do the writing)."""

    def __init__(
        self,
        registry: PolicyRegistry,
        store: StoreMetrics,
        counters: GatewayCounters,
        plan: RolloutPlan,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.store = store
        self.counters = counters
        self.plan = plan
        self.clock = clock

    def read_counters(self) -> Counters | None:
        return self.counters.read()

    def counters_unreadable(self, counters: Counters | None) -> bool:
        """Gateway counters are configured but this read got none (every target failed)."""
        return counters is None and self.counters.enabled

    def reports(self, counters: Counters | None | _Read = READ) -> list[CanaryReport]:
        """One report per canary. ``counters``: one read shared by every report (the controller passes
        the read it keeps baselines from; ``None`` = nothing could be read); by default they are read here."""
        versions = self.registry.list()
        stable = next((v for v in versions if v.status == "stable"), None)
        if stable is None:
            return []
        current = self.read_counters() if isinstance(counters, _Read) else counters
        return [self.report(v, stable, current) for v in versions if v.status == "canary"]

    def report(self, canary: Version, stable: Version, counters: Counters | None) -> CanaryReport:
        now = self.clock()
        state = CanaryState.of(canary)
        started = state is not None
        unreadable = self.counters_unreadable(counters)
        if state is None:  # not adopted yet: analyse as step 0 from registration on
            state = CanaryState(step=0, step_started_at=canary.created_at, rollout_started_at=canary.created_at,
                                baseline=counters or {})  # fmt: skip
        since = state.step_started_at
        c = self.store.read(canary.id, since, since_baseline(counters, state.baseline, canary.id))
        s_counts = self._stable_counters(counters, state, stable.id)
        s = self.store.read(stable.id, since, s_counts)
        if s.ratings < self.plan.min_ratings_per_step and state.rollout_started_at < since:
            s = self.store.read(stable.id, state.rollout_started_at, s_counts)
        results = [judge(cond, c, s, self.plan) for cond in self.plan.conditions]
        if unreadable:
            results = [_unreadable(r) if r.metric == "error_rate" else r for r in results]
        new = evidence(c) > state.failed_evidence
        elapsed = max(0.0, (now - since).total_seconds())
        decision = decide(self.plan, results, step=state.step, elapsed_s=elapsed, ratings=c.ratings,
                          failures=state.failures, paused=is_paused(canary), new_evidence=new)  # fmt: skip
        if unreadable and decision.action in ("promote_step", "promote"):
            decision = Decision("hold", f"{UNREADABLE}; no step until they can be read", decision.failures)
        if not started and not is_paused(canary):
            why = f"not started: {UNREADABLE}" if unreadable else "not started: the controller sets the first step"
            decision = Decision("hold", why, state.failures)
        return CanaryReport(canary.id, stable.id, canary.weight, state, started, is_paused(canary), elapsed,
                            c, s, results, decision, new, unreadable)  # fmt: skip

    def _stable_counters(self, counters: Counters | None, state: CanaryState, stable_id: str) -> tuple[int, int] | None:
        """The stable's attempts and errors since the step's baseline or, when that is fewer attempts than
        the error-rate condition needs (at 100 % the stable serves only fallbacks), since the rollout's."""
        step = since_baseline(counters, state.baseline, stable_id)
        cond = self.plan.condition("error_rate")
        if step is None or cond is None or step[0] >= cond.min_samples or state.rollout_baseline is None:
            return step
        return since_baseline(counters, state.rollout_baseline, stable_id)


def _unreadable(r: MetricResult) -> MetricResult:
    """The error-rate result while no gateway counters could be read: unknown, never "not configured"."""
    return MetricResult(r.metric, "inconclusive", None, None, 0, 0, None, UNREADABLE)
