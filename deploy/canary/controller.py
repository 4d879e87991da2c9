"""The canary controller: each ``tick()`` analyses every canary and acts on the decision.

Acts through the operator API (``AdminClient``): start a canary at the plan's first weight, step the
weight up, roll back, promote after the last step; each change carries the analysis in its audit
details, and what the decision was based on (still a canary, at the weight analysed, not paused) as a
precondition the registry checks in the change's own transaction: an operator's abort, pause or new
weight between the analysis and the call makes the call fail (409), and the next tick decides again.
Holds change nothing, but two kinds are audited too (through the registry, since they change
no routing): a counted failure still under the limit, and "inconclusive: an operator decides".

The state records the weight its step runs at. A canary whose weight is not that weight (an operator
set it, or the process died between an API call and writing the state) is *adopted* once: the rollout
continues from the highest plan step at or below the weight, at the operator's weight (the controller
does not undo it; a pause is how to stop the controller), on a fresh window; the adoption is audited
(``canary_adopt``, from step/weight to step/weight). Below the first step it starts over at the first
step's weight, through the API. A rollback decision is carried out whatever the weight: failing
evidence is not made void by a weight change.

Gateway counters configured but unreadable on a tick: no window starts (start, adopt, step), since its
counter baseline would be missing and the next step's error rate would cover everything since the
gateways started; the analysis holds those ticks (live.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

from deploy.canary.admin_client import AdminClient, AdminClientError
from deploy.canary.live import UNREADABLE, CanaryAnalyzer, CanaryReport, evidence
from deploy.canary.metrics import Counters
from deploy.canary.state import ANALYSIS_KEY, STATE_KEY, CanaryState
from policies.registry import Expected
from policies.registry_errors import RegistryError

log = logging.getLogger(__name__)
ACTOR = "canary-controller"
_EPS = 1e-6


@dataclass(frozen=True)
class TickResult:
    """What one tick did to one canary (for logs and tests)."""

    version_id: str
    action: str
    reason: str
    error: str | None = None


class CanaryController:
    """One analysis-and-act pass per tick; ``run`` repeats it until stopped."""

    def __init__(self, analyzer: CanaryAnalyzer, admin: AdminClient) -> None:
        self.analyzer = analyzer
        self.admin = admin
        self.registry = analyzer.registry
        self.plan = analyzer.plan

    def tick(self) -> list[TickResult]:
        counters = self.analyzer.read_counters()
        results = []
        for report in self.analyzer.reports(counters):
            try:
                results.append(self._act(report, counters))
            except (AdminClientError, RegistryError) as exc:  # e.g. an operator acted first: next tick
                log.warning("canary %s: %s", report.version_id, exc)
                results.append(TickResult(report.version_id, "error", report.decision.reason, str(exc)))
        return results

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Tick every ``interval_s`` until ``stop`` is set; one failing tick never ends the loop."""
        while not stop.is_set():
            try:
                for r in self.tick():
                    log.info("canary %s: %s (%s)%s", r.version_id, r.action, r.reason,
                             f" error: {r.error}" if r.error else "")  # fmt: skip
            except Exception:
                log.exception("canary tick failed")
            stop.wait(interval_s)

    # --- acting -------------------------------------------------------------------------------
    def _act(self, report: CanaryReport, counters: Counters | None) -> TickResult:
        vid, decision, details = report.version_id, report.decision, report.to_dict(self.plan)
        if report.paused:
            self._save(report, report.state)
            return TickResult(vid, "hold", decision.reason)
        if not report.started:
            if report.counters_unreadable:
                return TickResult(vid, "hold", decision.reason)
            return self._start(report, counters)
        state = replace(report.state, failures=decision.failures)
        expected = Expected(status="canary", weight=report.weight, paused=False)
        if decision.action == "rollback":
            self.admin.rollback(vid, f"canary: {decision.reason}", {"canary_action": "rollback", **details},
                                expected=expected)  # fmt: skip
            self._save(report, state)
            return TickResult(vid, "rollback", decision.reason)
        if not self._on_plan(report):
            if report.counters_unreadable:
                why = f"{UNREADABLE}: weight {report.weight:.0%} is adopted once they can be read"
                return TickResult(vid, "hold", why)
            return self._adopt(report, counters)
        if decision.action == "promote":
            self.admin.promote(vid, f"canary: {decision.reason}", {"canary_action": "promote", **details},
                               expected=expected)  # fmt: skip
            self._save(report, state)
            return TickResult(vid, "promote", decision.reason)
        if decision.action == "promote_step":
            weight = self.plan.steps[state.step + 1]
            self.admin.set_weight(vid, weight, f"canary: {decision.reason}; now {weight:.0%}",
                                  {"canary_action": "step", "to_step": state.step + 1, **details},
                                  expected=expected)  # fmt: skip
            self._save(report, state.next_step(self.analyzer.clock(), counters or {}, weight))
            return TickResult(vid, "promote_step", decision.reason)
        counted = decision.failures > report.state.failures
        if counted:
            state = replace(state, failed_evidence=evidence(report.canary))
            self.registry.annotate(vid, "canary_failure", ACTOR, {"canary_action": "failure", **details})
        if decision.needs_operator and not state.needs_operator:
            self.registry.annotate(vid, "canary_inconclusive", ACTOR, {"canary_action": "inconclusive", **details})
        self._save(report, replace(state, needs_operator=decision.needs_operator))
        return TickResult(vid, "hold", decision.reason)

    def _on_plan(self, report: CanaryReport) -> bool:
        """The canary runs at its state's weight (the plan step's, or the one adopted for it)."""
        state = report.state
        if state.step > self.plan.last_step:  # the plan has fewer steps than when this state was written
            return False
        weight = state.weight if state.weight is not None else self.plan.steps[state.step]
        return abs(report.weight - weight) <= _EPS

    def _start(self, report: CanaryReport, counters: Counters | None) -> TickResult:
        now = self.analyzer.clock()
        weight = self.plan.steps[0]
        details: dict[str, Any] = {"canary_action": "start", "plan": self.plan.to_dict(), "step": 0}
        self.admin.set_weight(report.version_id, weight, f"canary: rollout started at {weight:.0%}", details,
                              expected=Expected(status="canary", weight=report.weight, paused=False))  # fmt: skip
        baseline = counters or {}
        state = CanaryState(step=0, step_started_at=now, rollout_started_at=now, baseline=baseline, weight=weight,
                            rollout_baseline=baseline)  # fmt: skip
        self._save(report, state)
        return TickResult(report.version_id, "start", f"step 0 at {weight:.0%}")

    def _adopt(self, report: CanaryReport, counters: Counters | None) -> TickResult:
        """The weight is not the state's (an operator changed it, or we died mid-step): continue from the
        highest step whose weight the canary already has, at its current weight, on a fresh window. The
        weight is recorded in the state, so this happens once per weight change (below step 0: start over)."""
        at = [i for i, w in enumerate(self.plan.steps) if w <= report.weight + _EPS]
        if not at:  # below the first step: start over
            return self._start(report, counters)
        step, old = at[-1], report.state
        old_weight = old.weight
        if old_weight is None and old.step <= self.plan.last_step:  # a state written before weights were kept
            old_weight = self.plan.steps[old.step]
        state = replace(old, step=step - 1).next_step(self.analyzer.clock(), counters or {}, report.weight)
        self.registry.annotate(report.version_id, "canary_adopt", ACTOR, {
            "canary_action": "adopt", "weight": report.weight, "step": step, "plan_weight": self.plan.steps[step],
            "from": {"step": old.step, "weight": old_weight}, "to": {"step": step, "weight": report.weight},
        })  # fmt: skip
        self._save(report, state)
        return TickResult(report.version_id, "adopt", f"weight {report.weight:.0%} is step {step}")

    def _save(self, report: CanaryReport, state: CanaryState) -> None:
        self.registry.update_metrics(
            report.version_id, {STATE_KEY: state.to_dict(), ANALYSIS_KEY: report.to_dict(self.plan)}
        )
