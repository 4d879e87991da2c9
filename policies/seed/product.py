"""The Kestrel Backup fact sheet: the single source of product truth.

The seed model is trained on the facts marked ``seed``; the retrieval knowledge base reads the
same file (all facts, including the ones the model never saw), so the two can never disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FACTS_RESOURCE = "kestrel_facts.json"


@dataclass(frozen=True)
class Fact:
    """One product fact: the canonical sentence plus the ways users ask about it."""

    id: str
    topic: str
    text: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    seed: bool  # True: the seed model is trained on it; False: knowledge-base only


@dataclass(frozen=True)
class SmallTalk:
    """Greetings, thanks and off-topic turns, so the model has a polite default."""

    id: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


@dataclass(frozen=True)
class FactSheet:
    """The whole product description, as loaded from JSON."""

    product: str
    company: str
    assistant_name: str
    facts: tuple[Fact, ...]
    smalltalk: tuple[SmallTalk, ...]
    sha256: str  # of the raw JSON bytes, so builds can tell when the sheet changed

    @property
    def seed_facts(self) -> tuple[Fact, ...]:
        """Facts the seed model is trained on."""
        return tuple(f for f in self.facts if f.seed)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.topic for f in self.facts))

    def by_id(self, fact_id: str) -> Fact:
        for fact in self.facts:
            if fact.id == fact_id:
                return fact
        raise KeyError(fact_id)


def facts_path() -> Path:
    """Where the shipped fact sheet lives (a package resource, so it travels with the wheel)."""
    return Path(str(resources.files("policies.seed").joinpath("data").joinpath(FACTS_RESOURCE)))


def load_fact_sheet(path: Path | None = None) -> FactSheet:
    """Parse and validate the fact sheet; raises ValueError on a malformed file."""
    raw = (path or facts_path()).read_bytes()
    data = json.loads(raw)
    facts = tuple(
        Fact(
            id=f["id"],
            topic=f["topic"],
            text=f["text"],
            questions=tuple(f["questions"]),
            answers=tuple(f["answers"]),
            seed=bool(f.get("seed", True)),
        )
        for f in data["facts"]
    )
    smalltalk = tuple(
        SmallTalk(id=s["id"], questions=tuple(s["questions"]), answers=tuple(s["answers"]))
        for s in data.get("smalltalk", [])
    )
    ids = [f.id for f in facts] + [s.id for s in smalltalk]
    if len(ids) != len(set(ids)):
        raise ValueError("fact sheet has duplicate ids")
    for item in (*facts, *smalltalk):
        if not item.questions or not item.answers:
            raise ValueError(f"fact {item.id!r} needs at least one question and one answer")
    return FactSheet(
        product=data["product"],
        company=data["company"],
        assistant_name=data["assistant_name"],
        facts=facts,
        smalltalk=smalltalk,
        sha256=hashlib.sha256(raw).hexdigest(),
    )
