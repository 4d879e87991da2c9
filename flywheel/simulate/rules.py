"""Rules over an answer's text: what a simulated user checks before rating.

Each rule answers one yes/no question about the answer (or ``None`` when the question does not
apply, e.g. a ``fact`` rule for a question with no expected fact), so that a preference is data —
a list of rules with weights — and a new preference needs a new config file, not new code.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Match = Literal["any", "all"]

# The citation shape the grounding stage and the seed corpus use: "... 5 GB [2]."
CITATION_PATTERN = r"\[\d+\]"
# Polite phrases the seed policy already says some of the time (its corpus's openers and closers,
# its small talk); a preference file may replace the list.
POLITE_MARKERS: tuple[str, ...] = (
    "happy to help", "thanks for asking", "good question", "great question", "sure!", "hope that helps",
    "let me know if you have other questions", "you're welcome",
)  # fmt: skip
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Answer:
    """What a rule looks at: the answer text and the facts the question expects."""

    text: str
    expected: tuple[str, ...] = ()  # fact keywords from the question bank; empty: no fact expected


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def _has(text: str, phrase: str, case_sensitive: bool) -> bool:
    return phrase in text if case_sensitive else phrase.lower() in text.lower()


def _matches(text: str, phrases: Sequence[str], match: Match, case_sensitive: bool) -> bool:
    found = (_has(text, p, case_sensitive) for p in phrases)
    return all(found) if match == "all" else any(found)


@dataclass(frozen=True)
class Rule(ABC):
    """Common fields: ``name`` (reported per version), ``weight`` (share of the score), ``negate``
    (the rule holds when its check fails: how a file states the opposite preference)."""

    name: str
    weight: float = 1.0
    negate: bool = False

    @abstractmethod
    def check(self, answer: Answer) -> bool | None:
        """Whether the answer has the behaviour; ``None`` when the rule does not apply."""

    def holds(self, answer: Answer) -> bool | None:
        """The check, negated if asked; ``None`` when the rule does not apply to this answer."""
        result = self.check(answer)
        return None if result is None else result != self.negate


@dataclass(frozen=True)
class LengthRule(Rule):
    """Word count within [min_words, max_words]."""

    min_words: int = 0
    max_words: int | None = None

    def check(self, answer: Answer) -> bool:
        n = word_count(answer.text)
        return n >= self.min_words and (self.max_words is None or n <= self.max_words)


@dataclass(frozen=True)
class ContainsRule(Rule):
    """Any (or all) of the phrases appear."""

    phrases: tuple[str, ...] = ()
    match: Match = "any"
    case_sensitive: bool = False

    def check(self, answer: Answer) -> bool:
        return _matches(answer.text, self.phrases, self.match, self.case_sensitive)


@dataclass(frozen=True)
class ForbidsRule(Rule):
    """None of the phrases appear."""

    phrases: tuple[str, ...] = ()
    case_sensitive: bool = False

    def check(self, answer: Answer) -> bool:
        return not _matches(answer.text, self.phrases, "any", self.case_sensitive)


@dataclass(frozen=True)
class PatternRule(Rule):
    """A regular expression matches somewhere in the answer."""

    regex: str = ""
    case_sensitive: bool = False

    def check(self, answer: Answer) -> bool:
        flags = 0 if self.case_sensitive else re.IGNORECASE
        return re.search(self.regex, answer.text, flags) is not None


@dataclass(frozen=True)
class ForbidPatternRule(PatternRule):
    """The regular expression matches nowhere."""

    def check(self, answer: Answer) -> bool:
        return not super().check(answer)


@dataclass(frozen=True)
class CitationRule(Rule):
    """At least ``min_count`` numbered source markers such as ``[1]``."""

    min_count: int = 1
    regex: str = CITATION_PATTERN

    def check(self, answer: Answer) -> bool:
        return len(re.findall(self.regex, answer.text)) >= self.min_count


@dataclass(frozen=True)
class PolitenessRule(Rule):
    """At least ``min_count`` distinct polite marker phrases (case-insensitive)."""

    markers: tuple[str, ...] = POLITE_MARKERS
    min_count: int = 1

    def check(self, answer: Answer) -> bool:
        return sum(_has(answer.text, m, False) for m in self.markers) >= self.min_count


@dataclass(frozen=True)
class FactRule(Rule):
    """The answer names the fact the question asks for: any or all of its expected keywords.
    Does not apply (``None``) to a question without expected keywords."""

    match: Match = "all"

    def check(self, answer: Answer) -> bool | None:
        if not answer.expected:
            return None
        return _matches(answer.text, answer.expected, self.match, case_sensitive=False)


RULE_KINDS: dict[str, type[Rule]] = {
    "length": LengthRule,
    "contains": ContainsRule,
    "forbids": ForbidsRule,
    "pattern": PatternRule,
    "forbid_pattern": ForbidPatternRule,
    "citation": CitationRule,
    "politeness": PolitenessRule,
    "fact": FactRule,
}


def evaluate(rules: Sequence[Rule], answer: Answer) -> dict[str, bool | None]:
    """Each rule's verdict by name (``None``: does not apply)."""
    return {rule.name: rule.holds(answer) for rule in rules}


def score(rules: Sequence[Rule], verdicts: dict[str, bool | None]) -> float:
    """The weighted share of the applicable rules that hold, in [0, 1]; 0.5 (no opinion) when none apply."""
    applicable = [(r.weight, verdicts[r.name]) for r in rules if verdicts.get(r.name) is not None]
    total = sum(w for w, _ in applicable)
    if total <= 0:
        return 0.5
    return sum(w for w, ok in applicable if ok) / total
