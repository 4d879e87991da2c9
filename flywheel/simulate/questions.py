"""The questions simulated users ask: the product's facts, as the fact sheet phrases them.

The fact sheet (policies/seed/data/kestrel_facts.json) is the source the knowledge base and the seed
policy share, so every question has a known right answer; ``data/fact_keywords.toml`` says which
words an answer must name to state it (for the ``fact`` rule). Questions repeat verbatim across
users on purpose: the same prompt rated up once and down once is what preference pairs are made of.
"""

from __future__ import annotations

import hashlib
import random
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from policies.seed.product import FactSheet, load_fact_sheet

Part = Literal["all", "train", "heldout"]
KEYWORDS_RESOURCE = "fact_keywords.toml"


@dataclass(frozen=True)
class Question:
    """One question and what a right answer names."""

    text: str
    fact_id: str
    topic: str
    expected: tuple[str, ...]


def load_fact_keywords() -> dict[str, tuple[str, ...]]:
    """Fact id → keywords, from the shipped data file."""
    raw = resources.files("flywheel.simulate.data").joinpath(KEYWORDS_RESOURCE).read_text(encoding="utf-8")
    return {fact_id: tuple(words) for fact_id, words in tomllib.loads(raw).items()}


def _heldout(fact_id: str, fraction: float) -> bool:
    """Stable by fact id (not by run seed), so every round's fresh users get the same held-out facts."""
    digest = hashlib.sha256(f"flywheel-simulate:{fact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class QuestionBank:
    """An ordered, immutable set of questions; sampling is by a caller's seeded RNG."""

    questions: tuple[Question, ...]

    @classmethod
    def from_fact_sheet(
        cls, sheet: FactSheet | None = None, keywords: dict[str, tuple[str, ...]] | None = None,
        include_kb_only: bool = True,
    ) -> QuestionBank:  # fmt: skip
        """Every question of every fact (``include_kb_only``: also facts the seed policy never saw,
        answerable only from retrieved sources)."""
        sheet = sheet or load_fact_sheet()
        keywords = load_fact_keywords() if keywords is None else keywords
        facts = sheet.facts if include_kb_only else sheet.seed_facts
        return cls(tuple(Question(q, f.id, f.topic, keywords.get(f.id, ())) for f in facts for q in f.questions))

    def part(self, part: Part, heldout_fraction: float = 0.2) -> QuestionBank:
        """``train`` or ``heldout`` questions (split by fact), or all of them."""
        if part == "all":
            return self
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        want = part == "heldout"
        chosen = tuple(q for q in self.questions if _heldout(q.fact_id, heldout_fraction) == want)
        if not chosen:
            raise ValueError(f"no {part} questions at heldout_fraction={heldout_fraction}")
        return QuestionBank(chosen)

    def pool(self, k: int, seed: int) -> QuestionBank:
        """``k`` questions drawn once by ``seed``: the loop asks each of them many times, because
        up-vs-down preference pairs need several rated answers to one prompt."""
        if k >= len(self.questions):
            return self
        return QuestionBank(tuple(random.Random(f"{seed}:pool").sample(self.questions, k)))

    def sample(self, rng: random.Random) -> Question:
        return rng.choice(self.questions)

    @property
    def topics(self) -> Sequence[str]:
        return tuple(dict.fromkeys(q.topic for q in self.questions))

    def __len__(self) -> int:
        return len(self.questions)
