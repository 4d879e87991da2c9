"""The canary analysis (pure): posteriors, per-metric verdicts, and peeking under simulation."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.canary.analysis import decide, judge, prob_not_worse
from deploy.canary.metrics import VersionMetrics
from deploy.canary.plan import MetricCondition, PlanError, RolloutPlan

PLAN = RolloutPlan(
    steps=(0.05, 0.2, 0.5, 1.0), min_ratings_per_step=100, max_ratings_per_step=1000, min_seconds_per_step=0,
    conditions=(MetricCondition("thumbs_up_rate", margin=0.05, min_samples=100, required=True),),
)
THUMBS = PLAN.conditions[0]


def rated(ups: int, downs: int) -> VersionMetrics:
    return VersionMetrics("v", "2025-01-01T00:00:00+00:00", ratings=ups + downs, ups=ups, downs=downs)


def overall(canary: VersionMetrics, stable: VersionMetrics, step: int = 0) -> str:
    result = judge(THUMBS, canary, stable, PLAN)
    return decide(PLAN, [result], step=step, elapsed_s=1e9, ratings=canary.ratings, failures=0,
                  paused=False, new_evidence=True).action  # fmt: skip


def test_posterior_matches_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    c, s = rng.beta(61, 41, 200_000), rng.beta(241, 161, 200_000)
    assert prob_not_worse(60, 40, 240, 160, 0.05) == pytest.approx(float((c >= s - 0.05).mean()), abs=0.005)


def test_clearly_better_canary_passes_and_promotes_at_the_last_step() -> None:
    better, stable = rated(170, 30), rated(600, 400)
    assert judge(THUMBS, better, stable, PLAN).outcome == "success"
    assert overall(better, stable, step=0) == "promote_step"
    assert overall(better, stable, step=PLAN.last_step) == "promote"


def test_clearly_worse_canary_fails_and_rolls_back() -> None:
    worse, stable = rated(80, 120), rated(700, 300)
    result = judge(THUMBS, worse, stable, PLAN)
    assert result.outcome == "failure" and result.p_not_worse is not None and result.p_not_worse < 0.05
    assert overall(worse, stable) == "rollback"


def test_too_few_samples_are_inconclusive_and_hold() -> None:
    few, stable = rated(30, 0), rated(600, 400)
    assert judge(THUMBS, few, stable, PLAN).outcome == "inconclusive"
    assert overall(few, stable) == "hold"


def test_failure_limit_paused_and_minimum_time_hold() -> None:
    worse, stable = rated(80, 120), rated(700, 300)
    failed = [judge(THUMBS, worse, stable, PLAN)]
    lenient = RolloutPlan(steps=PLAN.steps, conditions=PLAN.conditions, failure_limit=1, min_seconds_per_step=60)
    first = decide(lenient, failed, step=0, elapsed_s=0, ratings=200, failures=0, paused=False, new_evidence=True)
    assert (first.action, first.failures) == ("hold", 1)
    again = decide(lenient, failed, step=0, elapsed_s=0, ratings=200, failures=1, paused=False, new_evidence=False)
    assert (again.action, again.failures) == ("hold", 1)  # the same evidence is counted once
    assert decide(lenient, failed, step=0, elapsed_s=0, ratings=300, failures=1, paused=False,
                  new_evidence=True).action == "rollback"  # fmt: skip
    assert decide(PLAN, failed, step=0, elapsed_s=0, ratings=200, failures=0, paused=True,
                  new_evidence=True).action == "hold"  # fmt: skip
    good = [judge(THUMBS, rated(170, 30), stable, PLAN)]
    early = decide(lenient, good, step=0, elapsed_s=30, ratings=200, failures=0, paused=False, new_evidence=True)
    assert early.action == "hold" and "30s of 60s" in early.reason


def test_inconclusive_at_the_step_cap_asks_an_operator() -> None:
    borderline, stable = rated(560, 440), rated(600, 400)  # 0.56 vs 0.60: right at the margin's edge
    result = judge(THUMBS, borderline, stable, PLAN)
    assert result.outcome == "inconclusive"
    d = decide(PLAN, [result], step=1, elapsed_s=1e9, ratings=1000, failures=0, paused=False, new_evidence=True)
    assert d.action == "hold" and d.needs_operator


def _rollout(rng: np.random.Generator, p_canary: float, p_stable: float, look_every: int = 100) -> str:
    """One simulated rollout: every step looks after each ``look_every`` new ratings on a fresh window,
    from the minimum to the cap; the stable gets four times the canary's ratings."""
    for step in range(len(PLAN.steps)):
        outcome = "hold"
        for n in range(PLAN.min_ratings_per_step, PLAN.max_ratings_per_step + 1, look_every):
            if n == PLAN.min_ratings_per_step:
                c = rng.random(PLAN.max_ratings_per_step) < p_canary
                s = rng.random(4 * PLAN.max_ratings_per_step) < p_stable
            ups_c, ups_s = int(c[:n].sum()), int(s[: 4 * n].sum())
            outcome = overall(rated(ups_c, n - ups_c), rated(ups_s, 4 * n - ups_s), step)
            if outcome != "hold":
                break
        if outcome in ("rollback", "hold"):
            return outcome
        if outcome == "promote":
            return "promote"
    raise AssertionError("a plan always ends in promote, rollback or hold")


def test_peeking_does_not_promote_a_version_worse_than_the_margin() -> None:
    rng = np.random.default_rng(2025)
    outcomes = [_rollout(rng, p_canary=0.53, p_stable=0.60) for _ in range(500)]  # worse by 0.07 > 0.05
    false_promotions = outcomes.count("promote") / len(outcomes)
    assert false_promotions <= 0.01, false_promotions
    assert outcomes.count("rollback") / len(outcomes) >= 0.5


def test_an_equal_canary_is_rarely_rolled_back_and_usually_promoted() -> None:
    rng = np.random.default_rng(11)
    outcomes = [_rollout(rng, p_canary=0.6, p_stable=0.6) for _ in range(200)]
    assert outcomes.count("rollback") / len(outcomes) <= 0.15
    assert outcomes.count("promote") / len(outcomes) >= 0.5


def test_plan_validation_and_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError):
        RolloutPlan(steps=(0.5, 0.2))
    with pytest.raises(PlanError):
        RolloutPlan(steps=(0.0, 1.0))
    path = tmp_path / "plan.toml"
    path.write_text('[canary]\nsteps = [0.1, 1]\nmin_ratings_per_step = 20\n'
                    '[[canary.conditions]]\nmetric = "thumbs_up_rate"\nmargin = 0.02\nrequired = true\n')  # fmt: skip
    plan = RolloutPlan.from_toml(path)
    assert plan.steps == (0.1, 1.0) and plan.min_ratings_per_step == 20
    assert plan.condition("thumbs_up_rate") == MetricCondition("thumbs_up_rate", margin=0.02, required=True)
