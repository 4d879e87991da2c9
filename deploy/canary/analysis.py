"""The statistics and the decision (pure: numbers in, decision out; no I/O, no clock).

Rates (thumbs-up, error, safety-block) are compared with Beta-Binomial posteriors: with a uniform
prior, a version with s successes and f failures has p ~ Beta(1 + s, 1 + f), and
P(p_canary >= p_stable - margin) is integrated exactly (to grid precision) over the canary's posterior
with the stable's regularised incomplete beta as the inner CDF. Mean reward uses the normal
approximation of the difference of means; p99 latency a plain ratio.

Why noise and peeking do not promote a bad version (docs: the controller looks every tick):
- a step can only *pass* once it has ``min_ratings_per_step`` ratings and ``min_seconds_per_step``;
  earlier looks can hold or fail, never pass;
- passing needs the posterior P(not worse by more than the margin) >= 0.95 on the step's own window,
  and every step of the plan must pass on fresh data, so a bad version must win several independent
  tests in a row;
- looks per step are bounded: at ``max_ratings_per_step`` an inconclusive step stops looking and holds
  for an operator, so the number of peeks (and the type-I inflation that comes with them) is finite.
  ``tests/test_canary_analysis.py`` measures the resulting false-promotion rate by simulation.
Failing is symmetric (P(worse by more than the margin) >= 0.95) and counts only once per new evidence.

Error rate with too few stable attempts (the stable gets almost no traffic while a canary runs at 100 %,
and live.py's widening to the whole rollout can still come up short, e.g. a plan that starts at 100 %):
the canary is judged against an error-free stable, i.e. against the margin as an absolute limit, so a
canary that fails its calls cannot pass the last step because nothing was there to compare it with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import betainc

from deploy.canary.metrics import VersionMetrics
from deploy.canary.plan import MetricCondition, RolloutPlan

Outcome = Literal["success", "failure", "inconclusive", "skipped"]
Action = Literal["promote_step", "promote", "rollback", "hold"]
_GRID = 601


def prob_not_worse(s_c: float, f_c: float, s_s: float, f_s: float, margin: float) -> float:
    """P(p_c >= p_s - margin) for p_c ~ Beta(1+s_c, 1+f_c), p_s ~ Beta(1+s_s, 1+f_s), independent."""
    a_c, b_c, a_s, b_s = 1.0 + s_c, 1.0 + f_c, 1.0 + s_s, 1.0 + f_s
    mean = a_c / (a_c + b_c)
    sd = math.sqrt(a_c * b_c / ((a_c + b_c) ** 2 * (a_c + b_c + 1)))
    lo, hi = max(0.0, mean - 9 * sd), min(1.0, mean + 9 * sd)
    edges = np.concatenate(([0.0], np.linspace(lo, hi, _GRID), [1.0]))
    mass = np.diff(betainc(a_c, b_c, edges))  # canary's posterior mass per cell
    mids = (edges[:-1] + edges[1:]) / 2
    inner = betainc(a_s, b_s, np.clip(mids + margin, 0.0, 1.0))  # P(p_s <= x + margin)
    return float(np.clip(np.sum(mass * inner), 0.0, 1.0))


def prob_rate_at_most(bad: float, good: float, limit: float) -> float:
    """P(p <= limit) for a rate p ~ Beta(1+bad, 1+good) (uniform prior)."""
    return float(betainc(1.0 + bad, 1.0 + good, min(max(limit, 0.0), 1.0)))


def prob_mean_not_worse(
    mean_c: float, var_c: float, n_c: int, mean_s: float, var_s: float, n_s: int, margin: float
) -> float:
    """P(mu_c >= mu_s - margin) under the normal approximation of the difference of means."""
    se = math.sqrt(var_c / n_c + var_s / n_s)
    if se == 0.0:
        return 1.0 if mean_c >= mean_s - margin else 0.0
    z = (mean_c - mean_s + margin) / se
    return 0.5 * math.erfc(-z / math.sqrt(2))


@dataclass(frozen=True)
class MetricResult:
    """One metric's verdict with the numbers behind it (goes into the audit log as is)."""

    metric: str
    outcome: Outcome
    canary: float | None
    stable: float | None
    n_canary: int
    n_stable: int
    p_not_worse: float | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _counts(m: VersionMetrics, metric: str) -> tuple[float | None, int, float, float]:
    """(value, n, good, bad) of a rate metric, good meaning the desirable outcome."""
    if metric == "thumbs_up_rate":
        return m.thumbs_up_rate, m.ups + m.downs, m.ups, m.downs
    if metric == "safety_block_rate":
        return m.safety_block_rate, m.interactions, m.interactions - m.blocked, m.blocked
    if m.attempts is None or m.errors is None:  # error_rate without gateway counters
        return None, 0, 0.0, 0.0
    return m.error_rate, m.attempts, m.attempts - m.errors, m.errors


def judge(cond: MetricCondition, canary: VersionMetrics, stable: VersionMetrics, plan: RolloutPlan) -> MetricResult:
    """Success, failure or inconclusive for one metric; skipped when there is nothing to compare."""
    metric = cond.metric

    def result(outcome: Outcome, c: float | None, s: float | None, n_c: int, n_s: int,
               p: float | None, why: str) -> MetricResult:  # fmt: skip
        return MetricResult(metric, outcome, c, s, n_c, n_s, p, why)

    if cond.comparison == "ratio":
        c, s, n_c, n_s = canary.latency_p99_ms, stable.latency_p99_ms, canary.latency_n, stable.latency_n
        if n_c == 0 and n_s == 0:
            return result("skipped", c, s, n_c, n_s, None, "no latencies recorded")
        if n_c < cond.min_samples or n_s < cond.min_samples or c is None or s is None:
            return result("inconclusive", c, s, n_c, n_s, None, f"needs {cond.min_samples} answers per version")
        ratio, limit = c / s if s > 0 else math.inf, cond.max_ratio
        assert limit is not None  # MetricCondition requires it for a ratio
        if ratio > limit:
            return result("failure", c, s, n_c, n_s, None, f"p99 ratio {ratio:.2f} > {limit}")
        return result("success", c, s, n_c, n_s, None, f"p99 ratio {ratio:.2f} <= {limit}")

    if cond.comparison == "normal":
        c, s, n_c, n_s = canary.reward_mean, stable.reward_mean, canary.reward_n, stable.reward_n
        if n_c == 0 and n_s == 0:
            return result("skipped", c, s, n_c, n_s, None, "no scored answers (best-of-n off)")
        if n_c < max(2, cond.min_samples) or n_s < max(2, cond.min_samples):
            return result("inconclusive", c, s, n_c, n_s, None, f"needs {cond.min_samples} scored answers per version")
        assert c is not None and s is not None
        p = prob_mean_not_worse(c, canary.reward_var or 0.0, n_c, s, stable.reward_var or 0.0, n_s, cond.margin)
    else:
        c, n_c, good_c, bad_c = _counts(canary, metric)
        s, n_s, good_s, bad_s = _counts(stable, metric)
        if metric == "error_rate" and canary.attempts is None:
            return result("skipped", None, None, 0, 0, None, "no gateway metrics configured")
        if n_c == 0 and n_s == 0:
            return result("skipped", c, s, 0, 0, None, "no data for either version")
        if metric == "error_rate" and n_c >= cond.min_samples and n_s < cond.min_samples:
            p = prob_rate_at_most(bad_c, good_c, cond.margin)
            why = (f"stable has {n_s} of {cond.min_samples} attempts: judged against an absolute limit of "
                   f"{cond.margin}, P(error rate <= {cond.margin}) = {p:.3f}")  # fmt: skip
            if p >= plan.success_probability:
                return result("success", c, s, n_c, n_s, p, why)
            if 1.0 - p >= plan.failure_probability:
                return result("failure", c, s, n_c, n_s, p, why)
            return result("inconclusive", c, s, n_c, n_s, p, why)
        if n_c < cond.min_samples or n_s < cond.min_samples:
            return result("inconclusive", c, s, n_c, n_s, None, f"needs {cond.min_samples} samples per version")
        # for a lower-is-better rate, "not worse" is about the complementary rate, so swap the counts
        p = prob_not_worse(good_c, bad_c, good_s, bad_s, cond.margin)
    if p >= plan.success_probability:
        return result("success", c, s, n_c, n_s, p, f"P(not worse by > {cond.margin}) = {p:.3f}")
    if 1.0 - p >= plan.failure_probability:
        return result("failure", c, s, n_c, n_s, p, f"P(worse by > {cond.margin}) = {1 - p:.3f}")
    return result("inconclusive", c, s, n_c, n_s, p, f"P(not worse by > {cond.margin}) = {p:.3f}")


@dataclass(frozen=True)
class Decision:
    """What the controller should do now, why, and the failure count after this analysis."""

    action: Action
    reason: str
    failures: int
    needs_operator: bool = False


def decide(
    plan: RolloutPlan,
    results: list[MetricResult],
    *,
    step: int,
    elapsed_s: float,
    ratings: int,
    failures: int,
    paused: bool,
    new_evidence: bool,
) -> Decision:
    """The overall decision from the per-metric results and where the rollout stands."""
    if paused:
        return Decision("hold", "paused by an operator", failures)
    failed = [r.metric for r in results if r.outcome == "failure"]
    if failed:
        count = failures + (1 if new_evidence else 0)
        if count > plan.failure_limit:
            return Decision("rollback", f"failed: {', '.join(failed)} (failure {count} > limit {plan.failure_limit})",
                            count)  # fmt: skip
        return Decision("hold", f"failed: {', '.join(failed)} (failure {count} of limit {plan.failure_limit})", count)
    if elapsed_s < plan.min_seconds_per_step:
        return Decision("hold", f"step {step} has run {elapsed_s:.0f}s of {plan.min_seconds_per_step:.0f}s", failures)
    if ratings < plan.min_ratings_per_step:
        return Decision("hold", f"too few ratings: {ratings} of {plan.min_ratings_per_step}", failures)
    required = {c.metric for c in plan.conditions if c.required}
    pending = [r.metric for r in results if r.metric in required and r.outcome != "success"]
    if pending:
        if ratings >= plan.max_ratings_per_step:
            return Decision("hold", f"inconclusive at {ratings} ratings ({', '.join(pending)}): an operator decides",
                            failures, needs_operator=True)  # fmt: skip
        return Decision("hold", f"inconclusive: {', '.join(pending)}", failures)
    if step >= plan.last_step:  # beyond it only in a state written under a longer plan (the controller adopts)
        return Decision("promote", f"last step ({plan.steps[plan.last_step]:.0%}) passed", failures)
    return Decision("promote_step", f"step {step} ({plan.steps[step]:.0%}) passed", failures)
