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


# --- the error rate when the stable has too few attempts (a canary at 100 %) -------------------------
ERRORS = MetricCondition("error_rate", margin=0.01, min_samples=50)


def calls(attempts: int, errors: int) -> VersionMetrics:
    return VersionMetrics("v", "2025-01-01T00:00:00+00:00", attempts=attempts, errors=errors)


def test_error_rate_without_enough_stable_attempts_is_judged_against_the_margin() -> None:
    few_stable = calls(12, 0)  # at 100 % the stable only serves the canary's fallbacks
    failing = judge(ERRORS, calls(200, 30), few_stable, PLAN)
    assert failing.outcome == "failure" and "absolute limit of 0.01" in failing.why, failing
    assert judge(ERRORS, calls(2000, 0), few_stable, PLAN).outcome == "success"
    assert judge(ERRORS, calls(200, 2), few_stable, PLAN).outcome == "inconclusive"  # 1 %: can't tell
    assert judge(ERRORS, calls(20, 10), few_stable, PLAN).outcome == "inconclusive", "the canary needs its samples"
    assert judge(ERRORS, calls(200, 30), calls(500, 60), PLAN).outcome == "inconclusive", "compared with stable"
    failed = decide(PLAN, [failing], step=PLAN.last_step, elapsed_s=1e9, ratings=10_000, failures=0, paused=False,
                    new_evidence=True)  # fmt: skip
    assert failed.action == "rollback"


# --- plan validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"metric": "latency_p99_ms"}, "max_ratio is required"),
        ({"metric": "latency_p99_ms", "max_ratio": 0.0}, "max_ratio must be a number >= 1"),
        ({"metric": "latency_p99_ms", "max_ratio": -1.5}, "max_ratio must be a number >= 1"),
        ({"metric": "latency_p99_ms", "max_ratio": 0.8}, "max_ratio must be a number >= 1"),
        ({"metric": "latency_p99_ms", "max_ratio": float("nan")}, "max_ratio must be a number >= 1"),
        ({"metric": "latency_p99_ms", "max_ratio": 1.5, "margin": 0.1}, "margin does not apply"),
        ({"metric": "thumbs_up_rate", "margin": 1.0}, r"margin must be in \[0, 1\)"),
        ({"metric": "error_rate", "margin": -0.01}, r"margin must be in \[0, 1\)"),
        ({"metric": "safety_block_rate", "margin": 2}, r"margin must be in \[0, 1\)"),
        ({"metric": "mean_reward", "margin": -0.1}, "margin must be >= 0"),
        ({"metric": "mean_reward", "margin": float("inf")}, "margin must be a number"),
        ({"metric": "error_rate", "max_ratio": 1.5}, "max_ratio applies to latency_p99_ms only"),
        ({"metric": "thumbs_up_rate", "min_samples": 0}, "min_samples must be an integer >= 1"),
        ({"metric": "p50"}, "unknown metric 'p50'"),
    ],
)
def test_a_bad_condition_is_a_plan_error(condition: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        MetricCondition(**condition)


def test_a_bad_toml_condition_or_setting_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flywheel.cli import user_error_message
    from flywheel.settings import Settings

    path = tmp_path / "plan.toml"
    path.write_text('[canary]\n[[canary.conditions]]\nmetric = "latency_p99_ms"\nmin_samples = 20\n')
    with pytest.raises(PlanError, match="latency_p99_ms: max_ratio is required") as caught:
        RolloutPlan.from_toml(path)
    assert user_error_message(caught.value) == str(caught.value), "the CLI prints it as its one line"
    path.write_text('[canary]\n[[canary.conditions]]\nmetric = "error_rate"\nlimit = 0.1\n')
    with pytest.raises(PlanError, match=r"unknown keys \['limit'\]"):
        RolloutPlan.from_toml(path)
    path.write_text('[canary]\n[[canary.conditions]]\nmetric = "latency_p99_ms"\nmax_ratio = 2.0\n')
    assert RolloutPlan.from_toml(path).condition("latency_p99_ms") == MetricCondition("latency_p99_ms", max_ratio=2.0)
    with pytest.raises(PlanError, match="one condition per metric"):
        RolloutPlan(conditions=(THUMBS, THUMBS))
    with pytest.raises(PlanError, match="failure_limit"):
        RolloutPlan(failure_limit=-1)

    bad_settings = [("canary_latency_p99_max_ratio", 0.0), ("canary_margin", 1.0), ("canary_error_rate_margin", -1)]
    for name, value in bad_settings:
        with pytest.raises(ValueError, match=name) as bad:
            Settings(**{name: value})
        line = user_error_message(bad.value)
        assert line is not None and "\n" not in line and f"FLYWHEEL_{name.upper()}" in line, line
    plan = RolloutPlan.from_settings(Settings())
    latency = plan.condition("latency_p99_ms")
    assert latency is not None and latency.max_ratio == 1.5
