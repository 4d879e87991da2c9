"""Crafted preference data for the trainer tests: the preferred property is obvious and measurable.

The same fact answered three ways, ranked "Happy to help! X" > "X" > "<rude> X", one pair type per
row in turn (happy vs rude, happy vs plain, plain vs rude). So a reward model must learn the whole
order, DPO must make the policy open with "Happy to help!" more often, and the *reversed* data
teaches rudeness, which the gates must catch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from policies.seed.product import load_fact_sheet

PROPERTY = "Happy to help!"
RUDE = ("Ugh, fine.", "Read the manual.", "Not my problem.", "Obviously.", "Whatever.")


def has_property(text: str) -> bool:
    return PROPERTY.lower() in text.lower()


def property_rows(seed: int = 0, per_fact: int = 6, source: str = "human") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) rows in the export's DPO format; held-out uses facts the train set never saw."""
    rng = random.Random(seed)
    facts = list(load_fact_sheet().seed_facts)
    rng.shuffle(facts)
    held_facts = set(f.id for f in facts[: max(4, len(facts) // 6)])
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for fact in facts:
        for i in range(per_fact):
            question = fact.questions[i % len(fact.questions)]
            answer = rng.choice(fact.answers)
            happy, plain, rude = f"{PROPERTY} {answer}", answer, f"{rng.choice(RUDE)} {answer}"
            chosen, rejected = [(happy, rude), (happy, plain), (plain, rude)][i % 3]
            row = {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "source": source, "weight": 1.0, "policy_version": "seed",
            }
            (held if fact.id in held_facts else train).append(row)
    return train, held


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reversed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


def write_property_data(directory: Path, reverse: bool = False, **kw: Any) -> Path:
    """``prefs.jsonl`` + ``prefs.heldout.jsonl`` (the export's naming) under ``directory``."""
    train, held = property_rows(**kw)
    if reverse:
        train, held = reversed_rows(train), reversed_rows(held)
    write_rows(directory / "prefs.heldout.jsonl", held)
    return write_rows(directory / "prefs.jsonl", train)


def trainer_settings(var_dir: Path, seed_model_dir: Path):  # type: ignore[no-untyped-def]
    """Settings for a trainer test: its own var/ and the fixture seed model as the stable policy."""
    from flywheel.settings import Settings

    return Settings(var_dir=var_dir, seed_model_path=seed_model_dir)


def property_rate(texts: list[str]) -> float:
    return sum(map(has_property, texts)) / max(1, len(texts))
