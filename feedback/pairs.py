"""Preference pairs from stored interactions and ratings: three sources, deduped, capped per user.

Sources (``Pair.source``):

- ``rated``: two served answers to the same prompt, one rated up and one rated down (weight = half the
  rating gap, so up vs down = 1.0).
- ``best_of_n``: the candidate the gateway picked vs the lowest-scored candidate of the same request,
  when the reward margin is at least ``min_reward_margin`` (weight = the margin, at most 1).
- ``rated_vs_candidate``: a rated answer vs another candidate of its own request: an up-rated answer
  beats the lowest-scored alternative; a down-rated one loses to the best-scored alternative
  (weight = half the rating: the user saw only one side).

Data poisoning is the named risk: every rating-derived pair is attributed to its raters (latest
rating per rater and response counts, so re-rating the same response adds nothing), and no user may
contribute more than ``max_pairs_per_user`` pairs; which of a user's pairs survive is decided by a
hash of the pair, not by arrival order, so timing cannot pick them. ``best_of_n`` pairs come from
the reward model, not from a user, and are capped per requesting user only when that user is known.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

__all__ = ["ExportConfig", "InteractionRecord", "Pair", "PairSet", "RatingRecord", "build_pairs", "prompt_hash"]

Source = Literal["rated", "best_of_n", "rated_vs_candidate"]
_PRIORITY: dict[str, int] = {"rated": 0, "rated_vs_candidate": 1, "best_of_n": 2}
UNKNOWN_USER = "unknown"


@dataclass(frozen=True)
class ExportConfig:
    """Every knob of an export; printed into the datasheet so that a dataset says how it was made."""

    min_reward_margin: float = 0.5  # best_of_n: chosen minus lowest reward must reach this
    max_pairs_per_user: int = 50  # poisoning bound: pairs any one rater (or requester) may contribute
    max_pairs_per_prompt: int = 20  # many up x many down answers to one prompt: keep this many
    heldout_fraction: float = 0.1  # share of prompts (by hash) in the held-out split
    since: datetime | None = None  # only interactions and ratings at or after this time
    policy_version: str | None = None  # only answers served by this version


@dataclass(frozen=True)
class InteractionRecord:
    response_id: str
    messages: list[dict[str, str]]
    candidates: list[tuple[str, float | None]]
    chosen_index: int
    policy_version: str | None
    user_hash: str | None


@dataclass(frozen=True)
class RatingRecord:
    response_id: str
    rating: float
    user_hash: str | None
    time: datetime


@dataclass(frozen=True)
class Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    source: Source
    weight: float
    policy_version: str | None
    prompt_hash: str
    users: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.prompt_hash, _norm(self.chosen), _norm(self.rejected))

    @property
    def pair_id(self) -> str:
        return hashlib.sha256("\x00".join(self.key).encode()).hexdigest()[:24]


@dataclass
class PairSet:
    """The kept pairs and what was dropped on the way (for the datasheet)."""

    pairs: list[Pair]
    dropped: Counter[str] = field(default_factory=Counter)
    candidates_by_source: Counter[str] = field(default_factory=Counter)
    ratings_used: Counter[str] = field(default_factory=Counter)
    pairs_per_user: Counter[str] = field(default_factory=Counter)
    capped_users: set[str] = field(default_factory=set)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def prompt_hash(messages: Iterable[dict[str, Any]]) -> str:
    """Same conversation, same hash (case and whitespace do not matter): the split and pairing key."""
    canon = [[m.get("role", ""), _norm(str(m.get("content") or ""))] for m in messages]
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()


@dataclass
class _Scored:
    """One served answer with its raters' latest ratings."""

    rec: InteractionRecord
    score: float
    raters: frozenset[str]

    @property
    def answer(self) -> str:
        return self.rec.candidates[self.rec.chosen_index][0]


def _scores(
    interactions: dict[str, InteractionRecord], ratings: Iterable[RatingRecord], used: Counter[str]
) -> dict[str, _Scored]:
    latest: dict[tuple[str, str], RatingRecord] = {}
    for r in ratings:
        if r.response_id not in interactions:
            continue  # rated before its interaction was consumed: picked up by a later export
        k = (r.response_id, r.user_hash or UNKNOWN_USER)
        if k not in latest or r.time >= latest[k].time:
            latest[k] = r
    per_response: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (rid, user), r in latest.items():
        per_response[rid].append((user, r.rating))
        used["up" if r.rating > 0 else "down" if r.rating < 0 else "neutral"] += 1
    return {
        rid: _Scored(interactions[rid], sum(v for _, v in votes) / len(votes), frozenset(u for u, _ in votes))
        for rid, votes in per_response.items()
        if interactions[rid].candidates
    }


def _stable_order(pairs: Iterable[Pair]) -> list[Pair]:
    return sorted(pairs, key=lambda p: p.pair_id)


def _rated_pairs(scored: dict[str, _Scored], cfg: ExportConfig, dropped: Counter[str]) -> list[Pair]:
    by_prompt: dict[str, list[_Scored]] = defaultdict(list)
    for s in scored.values():
        by_prompt[prompt_hash(s.rec.messages)].append(s)
    out: list[Pair] = []
    for ph, answers in by_prompt.items():
        ups = [a for a in answers if a.score > 0]
        downs = [a for a in answers if a.score < 0]
        found: dict[tuple[str, str, str], Pair] = {}
        for u in ups:
            for d in downs:
                if _norm(u.answer) == _norm(d.answer):
                    continue
                p = Pair(u.rec.messages, u.answer, d.answer, "rated", round((u.score - d.score) / 2, 4),
                         u.rec.policy_version, ph, u.raters | d.raters)  # fmt: skip
                # the same texts rated by several raters: one pair (one slot of the cap), all of them attributed
                if p.key in found:
                    dropped["duplicate"] += 1
                    p = _merge(found[p.key], p)
                found[p.key] = p
        kept = _stable_order(found.values())[: cfg.max_pairs_per_prompt]
        dropped["per_prompt_cap"] += len(found) - len(kept)
        out += kept
    return out


def _best_of_n_pairs(records: Iterable[InteractionRecord], cfg: ExportConfig, dropped: Counter[str]) -> list[Pair]:
    out: list[Pair] = []
    for rec in records:
        scored = [(t, r) for t, r in rec.candidates if r is not None]
        if len(rec.candidates) < 2 or len(scored) != len(rec.candidates):
            continue
        chosen, chosen_reward = rec.candidates[rec.chosen_index]
        rejected, low = min(rec.candidates, key=lambda c: c[1])  # type: ignore[arg-type,return-value]
        margin = chosen_reward - low  # type: ignore[operator]
        if _norm(chosen) == _norm(rejected):
            continue
        if margin < cfg.min_reward_margin:
            dropped["below_reward_margin"] += 1
            continue
        users = frozenset({rec.user_hash}) if rec.user_hash else frozenset()
        out.append(Pair(rec.messages, chosen, rejected, "best_of_n", round(min(1.0, margin), 4),
                        rec.policy_version, prompt_hash(rec.messages), users))  # fmt: skip
    return out


def _rated_vs_candidate_pairs(scored: dict[str, _Scored]) -> list[Pair]:
    out: list[Pair] = []
    for s in scored.values():
        served = s.answer
        others = [(t, r) for i, (t, r) in enumerate(s.rec.candidates) if i != s.rec.chosen_index]
        others = [(t, r) for t, r in others if _norm(t) != _norm(served)]
        if not others or s.score == 0:
            continue
        if s.score > 0:  # beats the weakest alternative (or the first, when nothing was scored)
            other = min(others, key=lambda c: c[1] if c[1] is not None else 0.0)[0]
            chosen, rejected = served, other
        else:  # loses to the strongest alternative
            other = max(others, key=lambda c: c[1] if c[1] is not None else 0.0)[0]
            chosen, rejected = other, served
        out.append(Pair(s.rec.messages, chosen, rejected, "rated_vs_candidate", round(abs(s.score) / 2, 4),
                        s.rec.policy_version, prompt_hash(s.rec.messages), s.raters))  # fmt: skip
    return out


def _merge(old: Pair, new: Pair) -> Pair:
    """Two pairs with one key: the stronger evidence (source, then weight) stays, attributed to everyone
    behind either, whichever came first (or a rater's pair could escape the user cap by arrival order)."""
    stronger = new if (_PRIORITY[new.source], -new.weight) < (_PRIORITY[old.source], -old.weight) else old
    return replace(stronger, users=old.users | new.users)


def _dedupe(pairs: list[Pair], dropped: Counter[str]) -> list[Pair]:
    """One pair per (prompt, chosen, rejected); both directions present means conflicting evidence: drop."""
    best: dict[tuple[str, str, str], Pair] = {}
    for p in pairs:
        old = best.get(p.key)
        if old is None:
            best[p.key] = p
            continue
        dropped["duplicate"] += 1
        best[p.key] = _merge(old, p)
    conflicting = {k for k in best if (k[0], k[2], k[1]) in best}
    dropped["conflicting"] += len(conflicting)
    return [p for k, p in best.items() if k not in conflicting]


def _cap_users(pairs: list[Pair], cap: int, result: PairSet) -> list[Pair]:
    kept: list[Pair] = []
    for p in _stable_order(pairs):
        if any(result.pairs_per_user[u] >= cap for u in p.users):
            result.dropped["user_cap"] += 1
            result.capped_users |= {u for u in p.users if result.pairs_per_user[u] >= cap}
            continue
        for u in p.users:
            result.pairs_per_user[u] += 1
        kept.append(p)
    return kept


def build_pairs(
    interactions: Iterable[InteractionRecord], ratings: Iterable[RatingRecord], cfg: ExportConfig
) -> PairSet:
    """All three sources, deduped, then capped per user; deterministic for the same store."""
    records = {r.response_id: r for r in interactions if r.candidates and 0 <= r.chosen_index < len(r.candidates)}
    if cfg.policy_version is not None:
        records = {k: r for k, r in records.items() if r.policy_version == cfg.policy_version}
    result = PairSet(pairs=[])
    scored = _scores(records, ratings, result.ratings_used)
    found = [
        *_rated_pairs(scored, cfg, result.dropped),
        *_best_of_n_pairs(records.values(), cfg, result.dropped),
        *_rated_vs_candidate_pairs(scored),
    ]
    result.candidates_by_source.update(p.source for p in found)
    result.pairs = _cap_users(_dedupe(found, result.dropped), cfg.max_pairs_per_user, result)
    return result
