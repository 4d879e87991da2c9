"""The shipped preference examples the initial reward head is trained from.

Generated from the Kestrel fact sheet (deterministically: same sheet, same seed, same file) into
``policies/reward_data/kestrel_prefs.jsonl`` in the export's DPO format. What "better" means here is
the product's answer policy: correct, short, polite, and citing the source as "[n]" when the prompt
carries numbered sources. Each rejected answer breaks exactly one of those rules, so the head learns
each rule rather than one shortcut. Regenerate with ``python -m policies.reward.shipped``.
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

from policies.seed.corpus import cite, sources_block
from policies.seed.product import Fact, FactSheet, load_fact_sheet

DATA_PACKAGE = "policies.reward_data"
SHIPPED_FILE = "kestrel_prefs.jsonl"
RUDE = ("Obviously, as anyone could tell you: ", "Read the manual next time. ", "Ugh, fine. ",
        "That's a silly question, but ", "Not my problem, but ")
RAMBLE = ("Backups are a really important topic and there are a lot of things people tend to think about when "
          "they consider them, so it is worth going over some background first.",
          "Many customers ask about this sort of thing, and honestly the answer can depend on a lot of factors "
          "that vary from one situation to another in ways that are hard to summarise.",
          "In general, technology changes quickly and it is always a good idea to keep that in mind when you "
          "read about any product, including this one, and its many features.")
NUMBER = re.compile(r"\d+")


def _wrong(rng: random.Random, fact: Fact, sheet: FactSheet) -> str:
    """The same answer with its numbers changed, or (no numbers) another fact's answer."""
    answer = rng.choice(fact.answers)
    if NUMBER.search(answer):
        return NUMBER.sub(lambda m: str(int(m.group()) * 2 + rng.randint(1, 9)), answer)
    others = [f for f in sheet.facts if f.topic == fact.topic and f.id != fact.id] or [
        f for f in sheet.facts if f.id != fact.id]
    return rng.choice(rng.choice(others).answers)


def _pair(prompt: list[dict[str, str]], chosen: str, rejected: str, rule: str) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "source": "shipped", "weight": 1.0,
            "policy_version": None, "rule": rule}


def generate(sheet: FactSheet | None = None, seed: int = 7) -> list[dict[str, Any]]:
    """Six pairs per fact: wrong fact, off-topic, rambling, rude, missing citation, one more of a random rule."""
    sheet = sheet or load_fact_sheet()
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for fact in sheet.facts:
        rules = ["wrong", "offtopic", "ramble", "rude", "uncited", rng.choice(["wrong", "ramble", "rude", "uncited"])]
        for rule in rules:
            question = rng.choice(fact.questions)
            answer = rng.choice(fact.answers)
            prompt = [{"role": "user", "content": question}]
            if rule == "wrong":
                rows.append(_pair(prompt, answer, _wrong(rng, fact, sheet), rule))
            elif rule == "offtopic":
                other = rng.choice([f for f in sheet.facts if f.topic != fact.topic])
                rows.append(_pair(prompt, answer, rng.choice(other.answers), rule))
            elif rule == "ramble":
                filler = " ".join(rng.sample(RAMBLE, 2))
                rows.append(_pair(prompt, answer, f"{filler} {answer} {rng.choice(RAMBLE)}", rule))
            elif rule == "rude":
                rude = rng.choice(RUDE)
                rows.append(_pair(prompt, answer, rude + answer[0].lower() + answer[1:], rule))
            else:
                others = rng.sample([f for f in sheet.facts if f.id != fact.id], rng.randint(0, 2))
                sources = [fact, *others]
                rng.shuffle(sources)
                index = sources.index(fact) + 1
                grounded = [{"role": "system", "content": sources_block(sources)}, *prompt]
                rows.append(_pair(grounded, cite(fact.text, index), fact.text, rule))
    return rows


def shipped_rows() -> list[dict[str, Any]]:
    """Every row of every ``*.jsonl`` shipped in ``policies/reward_data``."""
    rows: list[dict[str, Any]] = []
    for entry in sorted(resources.files(DATA_PACKAGE).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".jsonl"):
            rows += [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
    return rows


def shipped_paths() -> list[Path]:
    return sorted(Path(str(resources.files(DATA_PACKAGE))).glob("*.jsonl"))


if __name__ == "__main__":
    out = Path(str(resources.files(DATA_PACKAGE))) / SHIPPED_FILE
    out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in generate()))
    print(f"wrote {out}")
