"""Fold text to one canonical form before pattern matching, so tricks do not slip past.

Attackers write ``ＩＧＮＯＲＥ``, ``ign\u200bore``, ``іgnore`` (Cyrillic i), ``1gn0r3``, ``ïgnörë``
or ``i g n o r e``. Pattern filters match on :func:`fold` (lowercase ASCII-ish words, single
spaces) and, for multi-word blocklist terms, on :func:`squash` (letters and digits only).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["fold", "squash", "strip_invisible"]

# Lookalikes that NFKC leaves alone (Cyrillic, Greek, a few Latin variants), mapped after lowercasing.
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
        "ɡ": "g", "ӏ": "l", "ԛ": "q", "ԝ": "w", "һ": "h", "ɑ": "a", "ı": "i", "ł": "l", "ø": "o",
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ѵ": "v", "ß": "ss", "æ": "ae", "œ": "oe",
    }
)
# Leetspeak, applied only inside tokens that also contain letters (so "2024" stays a number).
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"})
_LEET_TOKEN = re.compile(r"[a-z0-9@$]*[a-z][a-z0-9@$]*|[a-z0-9@$]*[0-9@$][a-z][a-z0-9@$]*")
_INNER_SYMBOLS = re.compile(r"(?<=[a-z])[!|](?=[a-z])")  # "k!ll", "ign|re"
# Letters spelled out one at a time: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e" (one separator each).
_SPACED = re.compile(r"(?<![a-z0-9])[a-z](?:[ .\-_*·/]+[a-z](?![a-z0-9])){2,}")
_SPACED_SEP = re.compile(r"[ .\-_*·/]+")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_WS = re.compile(r"\s+")


def strip_invisible(text: str) -> str:
    """NFKC, then drop format characters (zero-width spaces and joiners, soft hyphens, bidi controls)."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def _join_spaced(match: re.Match[str]) -> str:
    return _SPACED_SEP.sub("", match.group(0))


def fold(text: str) -> str:
    """Lowercase, invisible-free, diacritic-free, confusable- and leet-folded text with single spaces."""
    text = strip_invisible(text).casefold().translate(_CONFUSABLES)
    text = _strip_marks(text)
    text = _INNER_SYMBOLS.sub("i", text)
    text = _LEET_TOKEN.sub(lambda m: m.group(0).translate(_LEET), text)
    text = _join_spaced_runs(text)
    return _WS.sub(" ", text).strip()


def _join_spaced_runs(text: str) -> str:
    # Two or more spaces separate spelled-out words ("i g n o r e  a l l"): keep one there.
    parts = re.split(r"(\s{2,})", text)
    return "".join(p if p.isspace() else _SPACED.sub(_join_spaced, p) for p in parts)


def squash(text: str) -> str:
    """:func:`fold` with every non-alphanumeric removed ("p.i.p.e b-o-m-b" -> "pipebomb")."""
    return _NON_WORD.sub("", fold(text))


def words(text: str) -> list[str]:
    """The folded text as a list of alphanumeric words (for n-gram comparisons)."""
    return [w for w in _NON_WORD.split(fold(text)) if w]
