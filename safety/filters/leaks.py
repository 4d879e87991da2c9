"""Output-side leak checks: the system prompt reproduced, or a credential written out.

System prompt: both texts are folded to words and the answer is blocked when it contains any run of
``ngram`` consecutive system-prompt words, so re-casing, re-punctuating, unicode tricks or
spacing the words out do not hide a verbatim copy, and a paraphrase that keeps long runs is caught too.

Secrets: high-precision vendor key formats (a false block of an answer is costly; the broader
key=value heuristics of :mod:`safety.pii` redact logs instead) plus the configured secrets (API and
operator keys, anything the deployment names), also when only a ``min_fragment``-long piece appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from safety.filters.base import Check, CheckContext
from safety.normalize import strip_invisible, words
from safety.verdict import Verdict

SECRET_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("api key (sk-)", re.compile(r"(?<![\w-])sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}")),
    ("stripe key", re.compile(r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("aws access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}")),
    ("slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("google api key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("gitlab token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),
]


class SystemPromptLeakFilter:
    """Blocks an answer that reproduces ``ngram`` consecutive words of the system prompt."""

    def __init__(self, name: str = "system_prompt_leak", *, ngram: int = 8) -> None:
        self.name = name
        self.ngram = ngram
        self._cache: tuple[str, frozenset[tuple[str, ...]]] | None = None

    def _shingles(self, prompt: str) -> frozenset[tuple[str, ...]]:
        if self._cache is not None and self._cache[0] == prompt:
            return self._cache[1]
        toks = words(prompt)
        n = min(self.ngram, len(toks))
        shingles = frozenset(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)) if n >= 3 else frozenset()
        self._cache = (prompt, shingles)
        return shingles

    def check(self, text: str, context: CheckContext) -> Check:
        if not context.system_prompt:
            return Check(Verdict(self.name, "allow"), text)
        shingles = self._shingles(context.system_prompt)
        if not shingles:
            return Check(Verdict(self.name, "allow"), text)
        n = len(next(iter(shingles)))
        toks = words(text)
        hits = sum(1 for i in range(len(toks) - n + 1) if tuple(toks[i : i + n]) in shingles)
        if hits:
            share = min(1.0, (hits + n - 1) / (len(shingles) + n - 1))
            return Check(Verdict(self.name, "block", f"{hits} run(s) of {n} system-prompt words", max(share, 0.5)), text)
        return Check(Verdict(self.name, "allow"), text)


class SecretLeakFilter:
    """Blocks an answer containing a credential format or a piece of a configured secret."""

    def __init__(self, name: str = "secret_leak", *, secrets: Iterable[str] = (), min_fragment: int = 12) -> None:
        self.name = name
        self.min_fragment = min_fragment
        self._fragments = self._build(secrets)

    def _build(self, secrets: Iterable[str]) -> dict[int, frozenset[str]]:
        by_len: dict[int, set[str]] = {}
        for secret in secrets:
            if len(secret) < 6:  # too short to tell from ordinary text
                continue
            k = min(self.min_fragment, len(secret))
            by_len.setdefault(k, set()).update(secret[i : i + k] for i in range(len(secret) - k + 1))
        return {k: frozenset(v) for k, v in by_len.items()}

    def check(self, text: str, context: CheckContext) -> Check:
        clean = strip_invisible(text)
        compact = re.sub(r"\s+", "", clean)  # "sk-abc def..." spread with spaces or newlines
        for label, pattern in SECRET_FORMATS:
            if pattern.search(clean) or pattern.search(compact):
                return Check(Verdict(self.name, "block", f"{label} format", 1.0), text)
        fragments = self._fragments
        if context.secrets:
            fragments = {**fragments}
            for k, extra in self._build(context.secrets).items():
                fragments[k] = fragments.get(k, frozenset()) | extra
        for k, pieces in fragments.items():
            for haystack in (clean, compact):
                if any(haystack[i : i + k] in pieces for i in range(len(haystack) - k + 1)):
                    return Check(Verdict(self.name, "block", "configured secret", 1.0), text)
        return Check(Verdict(self.name, "allow"), text)
