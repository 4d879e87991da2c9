"""Synthetic support dialogues generated from the fact sheet.

Why synthetic: nothing can be downloaded here, and a tiny model only learns a narrow domain
well if it sees every fact asked many different ways. The generator also plants the variation
the feedback loop later amplifies: polite openers/closers, and answers that cite numbered
sources when a system message provides them (most do, some do not).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from policies.seed.product import Fact, FactSheet

Message = dict[str, str]

PREFIXES = ("", "", "", "", "Hi, ", "Hello, ", "Quick question: ", "Hey, ", "Hi! ", "Excuse me, ")
SUFFIXES = ("", "", "", "", " Thanks!", " Thank you.", " Please help.", " Thanks in advance.")
OPENERS = ("Happy to help!", "Thanks for asking.", "Good question!", "Sure!", "Great question.")
CLOSERS = ("Happy to help!", "Thanks for asking.", "Hope that helps!", "Let me know if you have other questions.")
PERSONAS = (
    "You are the Kestrel Backup support assistant.",
    "You are the Kestrel Backup support assistant. Answer briefly.",
    "You are a helpful support agent for Kestrel Backup.",
    "Answer questions about Kestrel Backup in one or two sentences.",
)
_LOWERABLE = {"what", "how", "can", "is", "do", "does", "where", "when", "which", "who", "why",
              "will", "are", "list", "my", "tell", "that", "great", "thanks", "thank", "good"}


@dataclass(frozen=True)
class CorpusSpec:
    """How many dialogues of which kind; a slice of SeedConfig, kept separate so tests can vary it."""

    n_dialogues: int
    eval_fraction: float
    grounded_fraction: float
    system_fraction: float
    smalltalk_fraction: float
    multi_turn_fraction: float
    polite_open_fraction: float
    polite_close_fraction: float
    cite_fraction: float
    max_sources: int
    seed: int


@dataclass(frozen=True)
class Corpus:
    """Train and held-out dialogues plus a content hash (the manifest's data hash)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    sha256: str


def _ask(rng: random.Random, question: str, decorate: bool = True) -> str:
    """A paraphrase of a hand-written question: greeting, casing, punctuation, sign-off."""
    prefix = rng.choice(PREFIXES) if decorate else ""
    first, _, rest = question.partition(" ")
    if prefix.endswith(", ") and first.lower().strip("?!.,") in _LOWERABLE:
        question = first.lower() + (" " + rest if rest else "")
    text = prefix + question
    roll = rng.random()
    if roll < 0.1:
        text = text.rstrip("?.!")
    elif roll < 0.18:
        text = text.lower()
    return text + (rng.choice(SUFFIXES) if decorate else "")


def _polite(rng: random.Random, spec: CorpusSpec, answer: str) -> str:
    if rng.random() < spec.polite_open_fraction:
        answer = f"{rng.choice(OPENERS)} {answer}"
    if rng.random() < spec.polite_close_fraction:
        answer = f"{answer} {rng.choice(CLOSERS)}"
    return answer


def cite(text: str, index: int) -> str:
    """Attach a citation marker before the final full stop: 'Foo bar [2].'"""
    body = text.rstrip()
    end = body[-1] if body and body[-1] in ".!?" else ""
    return f"{body[:-1] if end else body} [{index}]{end or '.'}"


def sources_block(facts: list[Fact]) -> str:
    """The system-message format for grounding; the gateway's grounding stage uses the same shape."""
    return "Sources:\n" + "\n".join(f"[{i}] {f.text}" for i, f in enumerate(facts, start=1))


def _qa_turn(rng: random.Random, spec: CorpusSpec, fact: Fact) -> tuple[Message, Message]:
    question = _ask(rng, rng.choice(fact.questions))
    answer = _polite(rng, spec, rng.choice(fact.answers))
    return {"role": "user", "content": question}, {"role": "assistant", "content": answer}


def _grounded(rng: random.Random, spec: CorpusSpec, fact: Fact, pool: tuple[Fact, ...]) -> dict[str, Any]:
    others = rng.sample([f for f in pool if f.id != fact.id], rng.randint(0, spec.max_sources - 1))
    sources = [fact, *others]
    rng.shuffle(sources)
    index = sources.index(fact) + 1
    system = sources_block(sources)
    if rng.random() < 0.5:
        system = f"{rng.choice(PERSONAS)}\n{system}"
    # Copying the source sentence teaches the model to answer from sources it was never trained on.
    answer = fact.text if rng.random() < 0.7 else rng.choice(fact.answers)
    cited = rng.random() < spec.cite_fraction
    if cited:
        answer = cite(answer, index)
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": _ask(rng, rng.choice(fact.questions))},
        {"role": "assistant", "content": _polite(rng, spec, answer)},
    ]
    return {"kind": "grounded", "fact_id": fact.id, "cited": cited, "messages": messages}


def _dialogue(rng: random.Random, spec: CorpusSpec, sheet: FactSheet) -> dict[str, Any]:
    pool = sheet.seed_facts
    fact = rng.choice(pool)
    roll = rng.random()
    if roll < spec.grounded_fraction:
        return _grounded(rng, spec, fact, pool)
    messages: list[Message] = []
    if rng.random() < spec.system_fraction:
        messages.append({"role": "system", "content": rng.choice(PERSONAS)})
    if roll < spec.grounded_fraction + spec.smalltalk_fraction and sheet.smalltalk:
        talk = rng.choice(sheet.smalltalk)
        messages += [{"role": "user", "content": _ask(rng, rng.choice(talk.questions), decorate=False)},
                     {"role": "assistant", "content": rng.choice(talk.answers)}]
        return {"kind": "smalltalk", "fact_id": talk.id, "messages": messages}
    kind = "qa"
    if rng.random() < spec.multi_turn_fraction:
        messages += list(_qa_turn(rng, spec, rng.choice(pool)))
        kind = "multi_turn"
    messages += list(_qa_turn(rng, spec, fact))
    return {"kind": kind, "fact_id": fact.id, "messages": messages}


def build_corpus(sheet: FactSheet, spec: CorpusSpec) -> Corpus:
    """Generate, de-duplicate and split the dialogues. Pure function of (sheet, spec)."""
    if not sheet.seed_facts:
        raise ValueError("the fact sheet has no seed facts to train on")
    rng = random.Random(spec.seed)
    seen: set[str] = set()
    dialogues: list[dict[str, Any]] = []
    attempts = 0
    while len(dialogues) < spec.n_dialogues and attempts < spec.n_dialogues * 20:
        attempts += 1
        dialogue = _dialogue(rng, spec, sheet)
        key = json.dumps(dialogue["messages"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            dialogues.append(dialogue)
    rng.shuffle(dialogues)
    n_eval = max(1, round(len(dialogues) * spec.eval_fraction))
    held_out, train = dialogues[:n_eval], dialogues[n_eval:]
    digest = hashlib.sha256(sheet.sha256.encode())
    digest.update(json.dumps({"train": train, "eval": held_out}, sort_keys=True).encode())
    return Corpus(train=train, eval=held_out, sha256=digest.hexdigest())
