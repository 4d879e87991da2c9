"""The closed loop end to end on the fixture seed model: real vLLM, real gateway, real broker and
consumer, real store, simulated users over the public API, TRL DPO, the canary controller.

A canary trained on what the users like is promoted; one trained on reversed pairs is rolled back by
users who keep their taste (10 % of them adversarial) and stable traffic is untouched; a canary whose
backend errors is rolled back on its error rate while every user still gets an answer from stable; a
step with too few ratings holds, inconclusive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from flywheel.loop.config import LoopConfig, loop_plan
from flywheel.loop.report import PLOTS, write_report
from flywheel.loop.runner import Loop, RoundRecord
from flywheel.settings import Settings
from flywheel.simulate.preferences import load_preference, preset_path
from flywheel.procs import free_port
from tests.fixtures.feedback import ConsumerHandle, private_topics
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]


# The default preference with every thumb flipped: the same rules, each negated, at a threshold that an
# answer meets exactly when the default's is missed (negated scores are 1 - score; scores are multiples
# of 1/6 or 1/4, so "score < 0.6" is "1 - score >= 0.5"). The pairs it yields are the default's, reversed.
ANTI_DEFAULT = """
name = "anti-default"
description = "the default preference, every thumb flipped"
[rating]
threshold = 0.5
noise = 0.05
rating_probability = 0.7
adversarial_fraction = 0.05
[[rules]]
name = "no_citation"
kind = "citation"
negate = true
weight = 2.0
[[rules]]
name = "wrong_fact"
kind = "fact"
match = "all"
negate = true
weight = 2.0
[[rules]]
name = "long"
kind = "length"
max_words = 40
negate = true
weight = 1.0
[[rules]]
name = "curt"
kind = "politeness"
negate = true
weight = 1.0
"""


def _stack(gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle], name: str,
           **env: str) -> GatewayHandle:  # fmt: skip
    gw = gateway_factory(name, **private_topics(), **env)  # topics no other test on the session broker uses
    consumer_for(gw)
    return gw


def _loop(gw: GatewayHandle, seed_model_dir: Path, **overrides) -> tuple[Loop, LoopConfig]:  # type: ignore[no-untyped-def]
    settings = Settings(var_dir=gw.var_dir, database_url=gw.database_url, seed_model_path=seed_model_dir)
    config = LoopConfig(url=gw.url, chat_key=gw.api_key, admin_key=gw.admin_key, interactions_per_round=320, question_pool=24,
                        rollout_batch=60, max_rollout_interactions=900, eval_interactions=80, users=40,
                        plan=loop_plan(min_ratings=20), reports_dir=gw.var_dir / "reports")  # fmt: skip
    config = replace(config, **overrides)
    preference = load_preference(preset_path("default"))
    return Loop(config, settings, preference), config


def test_a_better_canary_is_promoted_and_the_report_shows_it(gateway_factory, consumer_for, seed_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The fixture seed (0.46 M parameters) learns the preference on the questions it was rated on
    (gate reward win rate 0.52-0.84 over six builds and settings) but cannot carry a fact
    to questions about facts it never saw: its held-out human-pair accuracy measured 0.30-0.73 and
    fresh users on held-out facts rated it 24/57 vs the seed's 25/57, depending only on the CPU's
    float kernels (AVX2, AVX512, AVX512-BF16 builds). So this test switches the human-pairs gate
    off and does not compare the held-out evaluation; `flywheel bench loop` measures that on the
    real seed, and tests/test_train_dpo.py tests the human-pairs gate itself.

    How hard to train is host-dependent on this model: at 1e-3 for 3 epochs an AVX2 host's canary
    passed the 20 % step and stayed inconclusive at 50 % (the test failed 'undecided'); at 3e-3 for 4
    epochs an AVX512-BF16 host's canary did the same twice (deterministically: the same gate figures),
    its chosen answers' likelihood rising on only 27 % of held-out pairs (over-training, as 3 epochs
    did on the default seed, see flywheel/loop/config.py). It trains at the loop's defaults (1e-3,
    2 epochs), which passed on the AVX512-BF16 host, and each step may gather up to 240 ratings
    before an operator is asked."""
    gw = _stack(gateway_factory, consumer_for, "better")
    plan = replace(loop_plan(min_ratings=20), max_ratings_per_step=240)
    loop, _ = _loop(gw, seed_model_dir, min_human_accuracy=0.0, plan=plan, max_rollout_interactions=1500)
    try:
        record = loop.run(gw.var_dir / "loop")
    finally:
        loop.close()
    (r,) = record.rounds
    assert r.outcome == "promoted", (r.outcome, r.gate_failures, r.gates)
    assert record.final_stable == r.candidate != record.seed_version
    # The rollout walked the plan: started at 20 %, held while evidence was thin, stepped, promoted.
    actions = [t.action for t in record.ticks]
    assert actions[0] == "start" and actions[-1] == "promote" and "promote_step" in actions, actions
    assert any(t.action == "hold" and "ratings" in t.reason for t in record.ticks), [t.reason for t in record.ticks]
    # Fresh users on held-out topics asked both versions the same questions with the same dice.
    seed, new = record.evaluation[record.seed_version], record.evaluation[r.candidate]
    assert seed["answers"] == new["answers"] == 80 and seed["rated"] == new["rated"] > 0, (seed, new)
    summary = write_report(record, gw.var_dir / "reports" / loop.stamp)
    text = summary.read_text()
    assert "| 1 | seed |" in text or f"| 1 | {record.seed_version} |" in text
    for plot in PLOTS:
        with Image.open(summary.parent / plot) as image:
            assert image.size[0] >= 400 and image.getextrema() != ((255, 255),) * 3
    assert json.loads((summary.parent / "loop.json").read_text())["rounds"][0]["outcome"] == "promoted"


def test_a_canary_trained_on_reversed_pairs_is_rolled_back_despite_adversarial_raters(
    gateway_factory, consumer_for, seed_model_dir: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Training data rated by the reverse of the default taste; live users keep the default one, 10 % of
    them adversarial. Its gates (which judge by the reversed taste it was trained on) are off, as in
    the test above, so the live rollout decides: the canary is rolled back on live thumbs; stable keeps
    serving throughout.

    The collecting users flip every default thumb, so the pairs are exactly the default's, reversed, and
    the canary unlearns what the better-canary test learns, at 5x its learning rate and 4 epochs: at
    2e-3 the reversed canary stayed as good as the seed for default users (undecided at 126 and at 250
    ratings). Checked with bf16 and fp32 fixture builds."""
    collect = tmp_path / "anti-default.toml"
    collect.write_text(ANTI_DEFAULT)
    gw = _stack(gateway_factory, consumer_for, "reversed")
    default = load_preference(preset_path("default"))
    users = replace(default, rating=replace(default.rating, adversarial_fraction=0.1))
    settings = Settings(var_dir=gw.var_dir, database_url=gw.database_url, seed_model_path=seed_model_dir)
    config = LoopConfig(url=gw.url, chat_key=gw.api_key, admin_key=gw.admin_key, interactions_per_round=320,
                        question_pool=16, rollout_batch=60, max_rollout_interactions=900, eval_interactions=0,
                        users=40, plan=loop_plan(min_ratings=20), min_win_rate=0.0, min_human_accuracy=0.0,
                        dpo_learning_rate=5e-3, dpo_epochs=4.0)  # fmt: skip
    loop = Loop(config, settings, users, collect_preference=load_preference(collect))
    try:
        record = loop.run(gw.var_dir / "loop")
    finally:
        loop.close()
    (r,) = record.rounds
    assert r.candidate and r.outcome == "rolled_back", r
    assert record.final_stable == record.seed_version
    rollback = next(t for t in record.ticks if t.action == "rollback")
    assert rollback.weight == 0.0 and "thumbs_up_rate" in rollback.reason
    assert record.errors == 0  # every simulated request got an answer, every rating was accepted


def test_a_canary_whose_backend_errors_is_rolled_back_and_users_never_notice(
    gateway_factory, consumer_for, seed_model_dir: Path  # type: ignore[no-untyped-def]
) -> None:
    """A full-checkpoint canary on a dead endpoint: each canary call fails, is retried on stable and
    counted; the controller rolls it back on its error rate; no user saw an error."""
    gw = _stack(gateway_factory, consumer_for, "broken")
    with gw.admin() as admin:
        created = admin.post("/admin/policies", json={"kind": "full", "path": str(seed_model_dir), "parent": "seed",
                                                      "endpoint": f"http://127.0.0.1:{free_port()}"})  # fmt: skip
        assert created.status_code == 201, created.text
    vid = created.json()["id"]
    loop, _ = _loop(gw, seed_model_dir, eval_interactions=0)
    record = RoundRecord(round=1, parent=loop.record.seed_version, algo="none", candidate=vid)
    try:
        loop._rollout(1, record)
    finally:
        loop.close()
    assert record.outcome == "rolled_back", record
    rollback = next(t for t in loop.record.ticks if t.action == "rollback")
    assert "error_rate" in rollback.reason
    # Every answer came from stable (the fallback), none failed.
    rollout = [p for p in loop.record.thumbs if p.phase == "rollout"]
    assert rollout and {p.version for p in rollout} == {loop.record.seed_version}
    assert loop.record.errors == 0
