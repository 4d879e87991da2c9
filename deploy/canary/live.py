"""The live analysis of every canary: registry + metrics + plan -> one report per canary.

Shared by the controller (which acts on the decision) and the operator API (which shows it), so
both always agree on the numbers. The stable is compared over the same window as the canary (since
the canary's step started); when the stable has too few ratings there, which happens at a 100 % step,
its window widens to the whole rollout.
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
        }


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

    def reports(self, counters: Counters | None = None) -> list[CanaryReport]:
        versions = self.registry.list()
        stable = next((v for v in versions if v.status == "stable"), None)
        if stable is None:
            return []
        current = counters if counters is not None else self.read_counters()
        return [self.report(v, stable, current) for v in versions if v.status == "canary"]

    def report(self, canary: Version, stable: Version, counters: Counters | None) -> CanaryReport:
        now = self.clock()
        state = CanaryState.of(canary)
        started = state is not None
        if state is None:  # not adopted yet: analyse as step 0 from registration on
            state = CanaryState(step=0, step_started_at=canary.created_at, rollout_started_at=canary.created_at,
                                baseline=counters or {})  # fmt: skip
        since = state.step_started_at
        c = self.store.read(canary.id, since, since_baseline(counters, state.baseline, canary.id))
        s_counts = since_baseline(counters, state.baseline, stable.id)
        s = self.store.read(stable.id, since, s_counts)
        if s.ratings < self.plan.min_ratings_per_step and state.rollout_started_at < since:
            s = self.store.read(stable.id, state.rollout_started_at, s_counts)
        results = [judge(cond, c, s, self.plan) for cond in self.plan.conditions]
        new = evidence(c) > state.failed_evidence
        elapsed = max(0.0, (now - since).total_seconds())
        decision = decide(self.plan, results, step=state.step, elapsed_s=elapsed, ratings=c.ratings,
                          failures=state.failures, paused=is_paused(canary), new_evidence=new)  # fmt: skip
        if not started and not is_paused(canary):
            decision = Decision("hold", "not started: the controller sets the first step", state.failures)
        return CanaryReport(canary.id, stable.id, canary.weight, state, started, is_paused(canary), elapsed,
                            c, s, results, decision, new)  # fmt: skip
