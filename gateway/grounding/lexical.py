"""BM25 over chunk text, through `bm25s`, with a tokenizer tuned for support questions.

bm25s precomputes a sparse matrix of per-term document scores whose IDF and average length depend
on the whole corpus and it has no update API, so a lexical index is immutable: the hybrid index
builds a new one from the stored chunks whenever the chunk set changes (well under a second for
10,000 chunks), and nothing BM25-specific is persisted; the stored chunks are the source of truth.
"""

from __future__ import annotations

import re

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

_ERROR_CODE = re.compile(r"\b([a-z])-(\d{2,})\b")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(STOPWORDS_EN_PLUS) | {"kestrel", "backup"}  # in every document: no signal


def _stem(word: str) -> str:
    """A tiny suffix stripper (plural, -ing, -ed, final e) so "restoring" meets "restore".

    Crude on purpose: no stemming dependency, and both sides of the match are stemmed the same way.
    """
    if word.isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stop words; an error code such as ``K-518`` becomes ``k518``."""
    text = _ERROR_CODE.sub(r"\1\2", text.lower())
    return [_stem(w) for w in _WORD.findall(text) if w not in _STOP and (len(w) > 1 or w.isdigit())]


class LexicalIndex:
    """An immutable BM25 index over token lists; ``scores`` gives one score per indexed row."""

    def __init__(self, token_lists: list[list[str]]) -> None:
        self.size = len(token_lists)
        self._bm25: bm25s.BM25 | None = None
        self._vocab: dict[str, int] = {}
        if any(token_lists):
            self._bm25 = bm25s.BM25()
            # an empty chunk gets a placeholder token so rows stay aligned with the chunk list
            self._bm25.index([tokens or ["\x00"] for tokens in token_lists], show_progress=False)
            self._vocab = self._bm25.vocab_dict

    def scores(self, query: str) -> np.ndarray:
        """BM25 scores of every row for ``query``; zeros when no query term is in the corpus."""
        ids = [self._vocab[t] for t in tokenize(query) if t in self._vocab]
        if self._bm25 is None or not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(ids), dtype=np.float32)
