"""Preference export on a crafted store: exactly the expected pairs, a bounded share for any one user,
and files that TRL 1.16's DPOTrainer and RewardTrainer prepare as they are."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from feedback.events import Event, Feedback, Interaction, hash_user
from feedback.export import export_pairs, heldout_path
from feedback.pairs import ExportConfig, _norm
from feedback.store import FeedbackStore
from flywheel.db import create_schema, make_engine

SALT = "export-test-salt"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
P = {name: [{"role": "user", "content": text}] for name, text in {
    "restore": "How do I restore a file?",
    "price": "How much does Kestrel Backup cost?",
    "low_margin": "Does it run on Linux?",
    "conflict": "Can I back up a NAS?",
}.items()}  # fmt: skip


def _user(name: str) -> str:
    return hash_user(name, SALT)  # type: ignore[return-value]


def _served(rid: str, prompt: str, answers: list[tuple[str, float | None]], chosen: int = 0, user: str | None = None,
            version: str = "v1") -> Interaction:  # fmt: skip
    return Interaction(
        response_id=rid, policy_version=version, messages=P.get(prompt) or [{"role": "user", "content": prompt}],
        candidates=[{"text": t, "reward": r} for t, r in answers], chosen_index=chosen,
        user_hash=_user(user) if user else None, time=T0,
    )  # fmt: skip


def _rate(rid: str, raw: str | float, user: str, minutes: int = 0) -> Feedback:
    return Feedback.from_raw(rid, raw, user_hash=_user(user), time=T0 + timedelta(minutes=minutes))


@pytest.fixture
def store(feedback_store: FeedbackStore) -> FeedbackStore:
    return feedback_store


def crafted() -> list[Event]:
    return [
        # (a) rated: one prompt, A1 up (after u1 changed their mind), A2 and A3 down; r10 repeats A1.
        _served("r1", "restore", [("Open Settings, then Restore.", None)]),
        _served("r2", "restore", [("I cannot help with files.", None)]),
        _served("r3", "restore", [("Restore is not supported.", None)]),
        _served("r10", "restore", [("  open settings, then   RESTORE. ", None)]),
        _rate("r1", "down", "u1", 0), _rate("r1", "up", "u1", 5),
        _rate("r2", "down", "u2"), _rate("r3", 1, "u3", 1), _rate("r3", 2, "u3", 2),  # 2 stars = -0.5, latest
        _rate("r10", "up", "u9"),
        # (b) best-of-n: margin 0.8 kept (B1 over B2); (c) r4 rated down -> B3 (best other) over B1.
        _served("r4", "price", [("It costs $5 a month.", 0.9), ("Bananas.", 0.1), ("Plans start at $5.", 0.5)]),
        _rate("r4", "down", "u4"),
        # (b) margin 0.2 < 0.5: dropped
        _served("r5", "low_margin", [("Yes, on Linux.", 0.6), ("Yes it does.", 0.4)]),
        # (a) conflict: D1 > D2 from one pair of answers, D2 > D1 from another: both directions dropped
        _served("r6", "conflict", [("D1 yes", None)]), _served("r7", "conflict", [("D2 no", None)]),
        _served("r8", "conflict", [("D2 no", None)]), _served("r9", "conflict", [("D1 yes", None)]),
        _rate("r6", "up", "u5"), _rate("r7", "down", "u6"), _rate("r8", "up", "u7"), _rate("r9", "down", "u8"),
        # a rating whose interaction never arrived: ignored, not an error
        _rate("r-missing", "up", "u1"),
    ]


EXPECTED = {
    ("How do I restore a file?", "open settings, then restore.", "i cannot help with files.", "rated", 1.0),
    ("How do I restore a file?", "open settings, then restore.", "restore is not supported.", "rated", 0.75),
    ("How much does Kestrel Backup cost?", "it costs $5 a month.", "bananas.", "best_of_n", 0.8),
    ("How much does Kestrel Backup cost?", "plans start at $5.", "it costs $5 a month.", "rated_vs_candidate", 0.5),
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exact_pairs_and_datasheet(store: FeedbackStore, tmp_path: Path) -> None:
    store.apply_batch(crafted())
    out = tmp_path / "prefs.jsonl"
    result = export_pairs(store.engine, "jsonl", out, ExportConfig(heldout_fraction=0.0))
    rows = _read(out)
    got = {(r["prompt"][0]["content"], _norm(r["chosen"]), _norm(r["rejected"]), r["source"], r["weight"]) for r in rows}
    assert got == EXPECTED
    assert len(rows) == len(EXPECTED)
    assert all(r["policy_version"] == "v1" and len(r["pair_id"]) == 24 for r in rows)
    assert _read(heldout_path(out)) == []
    assert result.pairs.dropped["conflicting"] == 2
    assert result.pairs.dropped["duplicate"] == 2  # A1 (r10) over A2 and over A3 again
    assert result.pairs.dropped["below_reward_margin"] == 1
    sheet = json.loads(out.with_name("prefs.datasheet.json").read_text())
    assert sheet["by_source"] == {"best_of_n": 1, "rated": 2, "rated_vs_candidate": 1}
    assert sheet["ratings_used"] == {"down": 5, "up": 4}  # latest per rater and response: u1 up, u3 2 stars
    assert sheet["pairs"] == {"total": 4, "train": 4, "heldout": 0}
    md = out.with_name("prefs.datasheet.md").read_text()
    assert "Pairs by source" in md and "| rated | 2 |" in md and "Users by pairs contributed" in md


def test_split_is_by_prompt(store: FeedbackStore, tmp_path: Path) -> None:
    events: list[Event] = []
    for i in range(60):  # 60 prompts, each with an up and a down answer from two users
        events += [_served(f"a{i}", f"question {i}", [(f"good {i}", None)]),
                   _served(f"b{i}", f"question {i}", [(f"bad {i}", None)]),
                   _rate(f"a{i}", "up", f"user{i}"), _rate(f"b{i}", "down", f"other{i}")]  # fmt: skip
    store.apply_batch(events)
    out = tmp_path / "split.jsonl"
    result = export_pairs(store.engine, "dpo", out, ExportConfig(heldout_fraction=0.3))
    train = {r["prompt"][0]["content"] for r in _read(out)}
    held = {r["prompt"][0]["content"] for r in _read(heldout_path(out))}
    assert train and held and not train & held
    assert len(train) + len(held) == 60 == result.train + result.heldout
    again = export_pairs(store.engine, "dpo", tmp_path / "again.jsonl", ExportConfig(heldout_fraction=0.3))
    assert {r["pair_id"] for r in _read(heldout_path(tmp_path / "again.jsonl"))} == {
        r["pair_id"] for r in _read(heldout_path(out))
    }
    assert again.heldout == result.heldout


def test_one_user_cannot_dominate(store: FeedbackStore, tmp_path: Path) -> None:
    """Mallory posts 3,000 ratings (1,000 prompts up+down, one answer re-rated 1,000 times)."""
    honest: list[Event] = []
    for i in range(40):
        honest += [_served(f"h{i}a", f"honest {i}", [(f"right {i}", None)]),
                   _served(f"h{i}b", f"honest {i}", [(f"wrong {i}", None)]),
                   _rate(f"h{i}a", "up", f"alice{i}"), _rate(f"h{i}b", "down", f"bob{i}")]  # fmt: skip
    mallory: list[Event] = []
    for i in range(1000):
        mallory += [_served(f"m{i}a", f"is X great {i}", [(f"X is great {i}", None)], user="mallory"),
                    _served(f"m{i}b", f"is X great {i}", [(f"X is awful {i}", None)], user="mallory"),
                    _rate(f"m{i}a", "up", "mallory", i), _rate(f"m{i}b", "down", "mallory", i)]  # fmt: skip
    mallory += [_rate("m0a", "up", "mallory", 2000 + i) for i in range(1000)]
    store.apply_batch(honest)
    store.apply_batch(mallory)
    cap = 25
    out = tmp_path / "capped.jsonl"
    result = export_pairs(store.engine, "jsonl", out, ExportConfig(max_pairs_per_user=cap, heldout_fraction=0.0))
    rows = _read(out)
    from_mallory = [r for r in rows if "X is" in r["chosen"]]
    assert len(from_mallory) == cap
    assert len([r for r in rows if r["chosen"].startswith("right")]) == 40  # honest pairs all kept
    assert len(from_mallory) / len(rows) < 0.4
    assert result.pairs.dropped["user_cap"] == 1000 - cap
    sheet = json.loads(out.with_name("capped.datasheet.json").read_text())
    assert sheet["users"]["pairs_per_user_buckets"]["reached_cap"] == 1
    assert sheet["users"]["largest_user_share"] == round(cap / len(rows), 4)
    assert sheet["ratings_used"]["up"] == 1000 + 40  # 1,000 re-ratings of m0a count once


def test_export_cli_and_trl_accept_the_files(sqlite_url: str, tmp_path: Path, seed_model_dir: Path) -> None:
    """`export` writes dpo and reward files; TRL's trainers prepare them without complaint (SQLite only:
    the store half is covered on both databases above)."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from flywheel.commands.export import export

    engine = make_engine(sqlite_url)
    create_schema(engine)
    FeedbackStore(engine).apply_batch(crafted())
    engine.dispose()

    app = typer.Typer()
    app.command()(export)
    url = sqlite_url
    paths = {}
    for fmt in ("dpo", "reward"):
        paths[fmt] = tmp_path / f"{fmt}.jsonl"
        res = CliRunner().invoke(app, ["--format", fmt, "--out", str(paths[fmt]), "--database-url", url,
                                       "--heldout-fraction", "0"])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "4 train pairs" in res.output

    tokenizer = AutoTokenizer.from_pretrained(seed_model_dir)
    dpo_data = datasets.load_dataset("json", data_files=str(paths["dpo"]), split="train")
    assert dpo_data.num_rows == 4 and dpo_data[0]["chosen"][0]["role"] == "assistant"
    common = {"output_dir": str(tmp_path / "trl"), "report_to": "none", "max_length": 128, "bf16": False,
              "use_cpu": True, "dataset_num_proc": None}  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(seed_model_dir)
    dpo = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=dpo_data, processing_class=tokenizer)
    prepared = dpo.train_dataset
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    assert prepared.num_rows == 4 and all(len(r) > 0 for r in prepared["chosen_ids"])

    reward_data = datasets.load_dataset("json", data_files=str(paths["reward"]), split="train")
    rm = AutoModelForSequenceClassification.from_pretrained(seed_model_dir, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    reward = RewardTrainer(model=rm, args=RewardConfig(**common), train_dataset=reward_data, processing_class=tokenizer)
    assert {"chosen_ids", "rejected_ids", "margin"} <= set(reward.train_dataset.column_names)
    assert reward.train_dataset.num_rows == 4
