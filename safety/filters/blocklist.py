"""A per-deployment blocklist of topics (named term lists shipped here) and literal terms.

Terms are folded like the text (see :mod:`safety.normalize`) and matched on word boundaries, so
"kill" never matches "skill"; multi-word terms also match with their spaces or punctuation
removed ("p.i.p.e-b o m b"). Topic lists hold phrases, not single verbs: "how do I kill a stuck
backup process" must stay answerable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from safety.filters.base import Check, CheckContext
from safety.normalize import fold, squash
from safety.verdict import Verdict

TOPICS: dict[str, tuple[str, ...]] = {
    "weapons": (
        "pipe bomb", "build a bomb", "make a bomb", "making a bomb", "build an explosive", "make explosives",
        "homemade explosive", "explosive device", "detonator", "napalm", "nerve agent", "sarin", "ricin",
        "ghost gun", "untraceable gun", "3d printed gun", "convert to full auto", "molotov cocktail",
        "thermite bomb", "dirty bomb", "bioweapon", "chemical weapon",
    ),
    "drugs": (
        "cook meth", "make meth", "synthesize meth", "methamphetamine synthesis", "make crack", "extract dmt",
        "synthesize fentanyl", "make fentanyl", "grow psilocybin", "buy cocaine", "sell drugs",
    ),
    "malware": (
        "write ransomware", "build ransomware", "create ransomware", "ransomware code", "write a keylogger",
        "build a keylogger", "create a keylogger", "write malware", "create malware", "build a botnet",
        "credential stealer", "write a virus", "zero day exploit for", "ddos attack script", "phishing kit",
    ),
    "self_harm": (
        "kill myself", "end my life", "suicide method", "how to self harm", "ways to hurt myself",
    ),
}


class BlocklistFilter:
    """Blocks a text containing any configured term or any phrase of a configured topic."""

    def __init__(self, name: str = "blocklist", *, topics: Iterable[str] = (), terms: Iterable[str] = ()) -> None:
        self.name = name
        entries: list[tuple[str, str]] = []  # (label, term)
        for topic in topics:
            if topic not in TOPICS:
                raise ValueError(f"unknown blocklist topic {topic!r}; known: {', '.join(sorted(TOPICS))}")
            entries += [(f"topic {topic}", t) for t in TOPICS[topic]]
        entries += [("term", t) for t in terms if t.strip()]
        self._word_patterns: list[tuple[str, str, re.Pattern[str]]] = []
        self._squashed: list[tuple[str, str, str]] = []
        for label, term in entries:
            folded = fold(term)
            parts = [re.escape(p) for p in re.split(r"[^a-z0-9]+", folded) if p]
            if not parts:
                continue
            pattern = re.compile(r"(?<![a-z0-9])" + r"[^a-z0-9]*".join(parts) + r"(?![a-z0-9])")
            self._word_patterns.append((label, term, pattern))
            joined = squash(term)
            if len(parts) > 1 and len(joined) >= 8:  # short squashed terms would match inside words
                self._squashed.append((label, term, joined))

    @property
    def empty(self) -> bool:
        return not self._word_patterns

    def check(self, text: str, context: CheckContext) -> Check:
        folded = fold(text)
        for label, term, pattern in self._word_patterns:
            if pattern.search(folded):
                return Check(Verdict(self.name, "block", f"{label}: {term!r}", 1.0), text)
        if self._squashed:
            squashed = squash(text)
            for label, term, joined in self._squashed:
                if joined in squashed:
                    return Check(Verdict(self.name, "block", f"{label}: {term!r} (obfuscated)", 0.9), text)
        return Check(Verdict(self.name, "allow"), text)
