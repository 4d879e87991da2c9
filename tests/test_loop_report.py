"""The loop's report from a recorded run (pure: no servers): Markdown tables, JSON, four real PNGs;
and the two small helpers the loop relies on (PPO prompts from pairs, the question pool)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from flywheel.loop.config import LoopConfig
from flywheel.loop.report import PLOTS, write_report
from flywheel.loop.runner import LoopRecord, RoundRecord, ThumbPoint, Tick, write_prompts
from flywheel.simulate.questions import QuestionBank


def _record() -> LoopRecord:
    config = LoopConfig(chat_key="chat-secret", admin_key="admin-secret").to_dict()
    rounds = [
        RoundRecord(1, "seed", "dpo", "promoted", "v1", "/v/r1", 300, 60, {"human": 280, "rlaif": 20}, 0.81,
                    {"reward_win_rate": 0.72, "kl": 3.5}, [], {}, 480, {"collect": 70, "train": 200, "rollout": 150}),
        RoundRecord(2, "v1", "dpo", "gate_failed", None, "/v/r2", 250, 50, {"human": 250}, 0.7,
                    {"reward_win_rate": 0.4, "kl": 1.0}, ["gate reward_win_rate failed: 0.400"], {}, 0, {}),
    ]  # fmt: skip
    ev = {"answers": 100, "rated": 70, "ups": 30, "downs": 40, "thumbs_up_rate": 0.43, "preference_rate": 0.4,
          "mean_score": 0.5, "mean_words": 20.0, "safety_blocks": 1, "errors": {}, "error_count": 0,
          "rule_rates": {"cites_source": 0.5, "polite": 0.1}}  # fmt: skip
    return LoopRecord(
        config=config, started_at="2026-11-25T10:00:00+00:00", seed_version="seed",
        rounds=rounds,
        thumbs=[ThumbPoint(10, 1, "collect", "seed", 100, 40), ThumbPoint(300, 1, "rollout", "v1", 20, 15),
                ThumbPoint(320, 1, "rollout", "seed", 80, 33)],
        ticks=[Tick(290, 1, "v1", "start", "step 0 at 20%", 0.2, "canary"),
               Tick(310, 1, "v1", "hold", "too few ratings: 10 of 60", 0.2, "canary"),
               Tick(330, 1, "v1", "promote_step", "step 0 (20%) passed", 0.5, "canary"),
               Tick(360, 1, "v1", "promote", "last step (100%) passed", 1.0, "stable")],
        rewards={"seed": [0.1, -0.2, 0.4], "v1": [0.5, 0.7]},
        evaluation={"seed": ev, "v1": {**ev, "thumbs_up_rate": 0.71, "rule_rates": {"cites_source": 0.9, "polite": 0.4}}},
        final_stable="v1", wall_s=900,
    )  # fmt: skip


def test_report_has_tables_json_and_four_plots(tmp_path: Path) -> None:
    summary = write_report(_record(), tmp_path / "report")
    text = summary.read_text()
    assert "| 1 | seed | v1 | promoted | 300/60 | human 280, rlaif 20 | 0.81 | 72.0% | 3.50 | 70 | 200 | 150 | 480 |" in text
    assert "- round 2: gate reward_win_rate failed: 0.400" in text
    assert "| v1 | 100 | 71.0% | 40.0% | 1.0% | 20.0 | 90.0% | 40.0% |" in text  # behaviour rates per version
    assert "| 360 | 1 | v1 | promote | 100% | last step (100%) passed |" in text
    assert "too few ratings" not in text.split("## Controller decisions")[1].split("## Plots")[0]  # holds are plotted, not listed
    assert "chat-secret" not in text and "admin-secret" not in text
    saved = json.loads((summary.parent / "loop.json").read_text())
    assert saved["rounds"][1]["outcome"] == "gate_failed" and "admin-secret" not in json.dumps(saved)
    for name in PLOTS:
        with Image.open(summary.parent / name) as image:
            assert image.format == "PNG" and image.size == (800, 450)
            assert len(image.convert("RGB").getcolors(1 << 16) or []) > 4  # something was drawn


def test_ppo_prompts_are_the_distinct_prompts_of_the_pairs(tmp_path: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": "a", "rejected": "b"} for q in ("x", "y", "x")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert write_prompts(pairs, tmp_path / "prompts.jsonl") == 2
    got = [json.loads(line)["prompt"][0]["content"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert got == ["x", "y"]


def test_question_pool_is_a_fixed_subset_per_seed() -> None:
    bank = QuestionBank.from_fact_sheet().part("train")
    pool = bank.pool(12, seed=3)
    assert len(pool) == 12 and set(pool.questions) <= set(bank.questions)
    assert pool == bank.pool(12, seed=3) and pool != bank.pool(12, seed=4)
    assert bank.pool(len(bank) + 5, seed=3) == bank
    rng = random.Random(0)
    assert {pool.sample(rng) for _ in range(500)} == set(pool.questions)  # every pooled question is asked
