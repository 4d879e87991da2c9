"""What a simulation saw, per policy version: how often users liked it, and how often it showed
each behaviour the preference rewards (the number that tells whether training moved the policy)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from flywheel.simulate.rating import Thumb


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


@dataclass
class VersionStats:
    """Counts for one policy version (or for all of them: ``SimulationReport.totals``).

    answers: completions received; rated/ups/downs: ratings accepted by the gateway (decided, when
    the run does not post feedback); liked: sum of the honest P(up) over answers (no noise, no
    adversaries); rule_hits / rule_applicable: answers where each rule held / applied.
    """

    version: str
    answers: int = 0
    rated: int = 0
    ups: int = 0
    downs: int = 0
    safety_blocks: int = 0
    words: int = 0
    score_sum: float = 0.0
    liked: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    rule_hits: Counter[str] = field(default_factory=Counter)
    rule_applicable: Counter[str] = field(default_factory=Counter)

    def add_answer(self, verdicts: dict[str, bool | None], words: int, score: float, p_up: float,
                   blocked: bool) -> None:  # fmt: skip
        self.answers += 1
        self.words += words
        self.score_sum += score
        self.liked += p_up
        self.safety_blocks += blocked
        for name, held in verdicts.items():
            if held is not None:
                self.rule_applicable[name] += 1
                self.rule_hits[name] += held

    def add_rating(self, thumb: Thumb) -> None:
        self.rated += 1
        self.ups += thumb == "up"
        self.downs += thumb == "down"

    def merge(self, other: VersionStats) -> None:
        for name in ("answers", "rated", "ups", "downs", "safety_blocks", "words", "score_sum", "liked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.rule_hits.update(other.rule_hits)
        self.rule_applicable.update(other.rule_applicable)

    @property
    def thumbs_up_rate(self) -> float | None:
        return _rate(self.ups, self.rated)

    @property
    def preference_rate(self) -> float | None:
        """Share of answers the preference likes, before noise and adversaries."""
        return _rate(self.liked, self.answers)

    @property
    def mean_score(self) -> float | None:
        return _rate(self.score_sum, self.answers)

    @property
    def mean_words(self) -> float | None:
        return _rate(self.words, self.answers)

    @property
    def rule_rates(self) -> dict[str, float | None]:
        """Per rule: the share of the answers it applied to where it held (the behaviour rate)."""
        names = dict.fromkeys([*self.rule_applicable, *self.rule_hits])
        return {n: _rate(self.rule_hits[n], self.rule_applicable[n]) for n in names}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "answers": self.answers, "rated": self.rated, "ups": self.ups,
            "downs": self.downs, "thumbs_up_rate": self.thumbs_up_rate, "preference_rate": self.preference_rate,
            "mean_score": self.mean_score, "mean_words": self.mean_words, "safety_blocks": self.safety_blocks,
            "errors": dict(self.errors), "error_count": sum(self.errors.values()), "rule_rates": self.rule_rates,
        }  # fmt: skip


@dataclass(frozen=True)
class InteractionRecord:
    """One answered question, kept when the config asks for records (tests, debugging a preference)."""

    index: int
    user: str
    question: str
    response_id: str
    policy_version: str
    text: str
    score: float
    verdicts: dict[str, bool | None]
    rating: Thumb | None  # what the user decided; None: did not rate
    event_id: str | None  # the gateway's event id when the rating was posted and accepted


@dataclass
class SimulationReport:
    """One run: per-version stats, errors not tied to a version, and what was run."""

    preference: str
    rules: tuple[str, ...]
    interactions: int
    versions: dict[str, VersionStats] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # chat errors of a routed run (version unknown)
    wall_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    records: list[InteractionRecord] = field(default_factory=list)  # only with keep_records

    def version(self, version_id: str) -> VersionStats:
        if version_id not in self.versions:
            self.versions[version_id] = VersionStats(version_id)
        return self.versions[version_id]

    @property
    def totals(self) -> VersionStats:
        total = VersionStats("all")
        for stats in self.versions.values():
            total.merge(stats)
        total.errors.update(self.errors)
        return total

    @property
    def error_count(self) -> int:
        return sum(self.totals.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "preference": self.preference, "rules": list(self.rules), "interactions": self.interactions,
            "wall_s": round(self.wall_s, 3), "config": self.config,
            "versions": {v: s.to_dict() for v, s in sorted(self.versions.items())},
            "unattributed_errors": dict(self.errors), "totals": self.totals.to_dict(),
            **({"records": [dataclasses.asdict(r) for r in self.records]} if self.records else {}),
        }  # fmt: skip

    def table(self) -> Table:
        """Per version: answers, ratings, thumbs-up rate, each rule's rate, words, blocks, errors."""
        title = (f"simulate: preference {self.preference!r}, {self.interactions} interactions "
                 f"in {self.wall_s:.1f}s")  # fmt: skip
        table = Table(title=title, title_justify="left")
        for column in ("version", "answers", "rated", "up", "down", "up rate", "liked", *self.rules,
                       "words", "blocked", "errors"):  # fmt: skip
            table.add_column(column, justify="left" if column == "version" else "right")
        rows = [*sorted(self.versions.values(), key=lambda s: s.version), self.totals]
        for stats in rows:
            rates = stats.rule_rates
            table.add_row(
                stats.version, str(stats.answers), str(stats.rated), str(stats.ups), str(stats.downs),
                _pct(stats.thumbs_up_rate), _pct(stats.preference_rate), *(_pct(rates.get(r)) for r in self.rules),
                "-" if stats.mean_words is None else f"{stats.mean_words:.1f}", str(stats.safety_blocks),
                _errors(stats.errors),
                end_section=stats is rows[-2] if len(rows) > 1 else False,
            )  # fmt: skip
        return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _errors(errors: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(errors.items())) or "0"
