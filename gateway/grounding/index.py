"""The hybrid index: BM25 and dense cosine similarity over the same chunks, fused by reciprocal rank.

BM25 wins on exact tokens (error codes, plan names, prices); the encoder wins on paraphrases
("my disk is full" vs "storage quota"). Reciprocal rank fusion (Cormack et al., 2009) combines the two
rankings without calibrating their incomparable scores: each chunk scores sum(1 / (rrf_k + rank)).

Searches read an immutable snapshot (chunks, vector matrix, BM25 index) that writers replace in one
assignment under a lock, so searching never blocks on, nor sees half of, an add or a remove.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from gateway.grounding.documents import (
    Chunk,
    Document,
    DocumentError,
    chunk_document,
    iter_document_files,
    load_document,
)
from gateway.grounding.encoder import Encoder
from gateway.grounding.lexical import LexicalIndex, tokenize
from gateway.grounding.store import DocumentInfo, KbStore, vector_key

Mode = Literal["hybrid", "bm25", "dense"]
MODES: tuple[Mode, ...] = ("bm25", "dense", "hybrid")


@dataclass(frozen=True)
class ScoredChunk:
    """One ranked chunk. ``score`` is the ranking score of the mode asked for (fused for hybrid)."""

    chunk: Chunk
    score: float
    similarity: float  # query-chunk cosine; 0.0 in bm25 mode (no query embedding)
    bm25: float  # 0.0 in dense mode


@dataclass
class AddReport:
    """What an add did, per document id."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    n_chunks: int = 0


@dataclass(frozen=True)
class _Snapshot:
    chunks: list[Chunk]
    vectors: np.ndarray  # (len(chunks), dim), unit rows
    lexical: LexicalIndex


def _top(scores: np.ndarray, n: int, positive_only: bool = False) -> np.ndarray:
    """Indices of the ``n`` highest scores, best first (argpartition: O(N) instead of a full sort)."""
    if positive_only:
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > n:
            candidates = candidates[np.argpartition(-scores[candidates], n - 1)[:n]]
    else:
        candidates = np.argpartition(-scores, n - 1)[:n] if len(scores) > n else np.arange(len(scores))
    return candidates[np.argsort(-scores[candidates], kind="stable")]


class HybridIndex:
    """A persistent, incrementally updated knowledge base under ``directory``.

    Opening it loads the stored chunks and vectors (re-embedding only what is missing or stale) and
    builds the BM25 index in memory.
    """

    def __init__(
        self,
        directory: Path,
        encoder: Encoder,
        *,
        chunk_words: int = 120,
        chunk_overlap: int = 30,
        candidates: int = 50,
        rrf_k: int = 60,
    ) -> None:
        self.directory = directory
        self.encoder = encoder
        self.chunk_words = chunk_words
        self.chunk_overlap = chunk_overlap
        self.candidates = candidates
        self.rrf_k = rrf_k
        self._store = KbStore(directory)
        self._lock = threading.Lock()
        self._snap = _Snapshot([], np.zeros((0, encoder.dim), dtype=np.float32), LexicalIndex([]))
        with self._lock:
            self._sync()

    # --- writing --------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Rebuild the snapshot from the store; reuse in-memory vectors, embed only new or edited chunks."""
        state = self._store.load(self.encoder.name, self.encoder.dim)
        known = {vector_key(c): row for c, row in zip(self._snap.chunks, self._snap.vectors, strict=True)}
        todo: list[int] = []
        for pos in state.missing:
            row = known.get(vector_key(state.chunks[pos]))
            if row is None:
                todo.append(pos)
            else:
                state.vectors[pos] = row
        if todo:
            state.vectors[todo] = self.encoder.encode([state.chunks[p].index_text for p in todo])
        if state.missing or len(state.chunks) != len(self._snap.chunks):
            self._store.save_vectors(state.chunks, state.vectors, self.encoder.name)
        lexical = LexicalIndex([tokenize(c.index_text) for c in state.chunks])
        self._snap = _Snapshot(state.chunks, state.vectors, lexical)

    def add_documents(self, docs: Iterable[Document], force: bool = False) -> AddReport:
        """Insert new documents, replace edited ones (same doc id, new content), skip unchanged ones.

        ``force`` re-chunks unchanged documents too: needed after changing the chunking settings.
        """
        report = AddReport()
        with self._lock:
            batch: list[tuple[Document, list[Chunk]]] = []
            for doc in docs:
                old = self._store.sha256_of(doc.doc_id)
                if old == doc.sha256 and not force:
                    report.unchanged.append(doc.doc_id)
                    continue
                chunks = chunk_document(doc, self.chunk_words, self.chunk_overlap)
                batch.append((doc, chunks))
                report.n_chunks += len(chunks)
                (report.added if old is None else report.updated).append(doc.doc_id)
            if batch:
                self._store.put_documents(batch)
                self._sync()
        return report

    def add_paths(self, paths: Iterable[Path], force: bool = False) -> AddReport:
        """Ingest files and directories (Markdown and text, recursively)."""
        docs = [load_document(file, root) for file, root in iter_document_files(paths)]
        ids = [d.doc_id for d in docs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise DocumentError(f"two files map to the same doc id: {', '.join(duplicates)}")
        return self.add_documents(docs, force)

    def remove(self, doc_id: str) -> bool:
        """Delete a document and its chunks; False if there was no such document."""
        with self._lock:
            if not self._store.delete_documents([doc_id]):
                return False
            self._sync()
            return True

    def reload(self) -> None:
        """Pick up changes another process (e.g. ``flywheel kb add``) made to the directory."""
        with self._lock:
            self._sync()

    # --- reading --------------------------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        return self._store.documents()

    def __len__(self) -> int:
        return len(self._snap.chunks)

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid") -> list[ScoredChunk]:
        """The ``k`` best chunks for ``query`` by BM25, by cosine similarity, or by both fused."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; want one of {MODES}")
        snap = self._snap  # one read: the rest of the search sees a consistent index
        n = len(snap.chunks)
        if n == 0 or k <= 0 or not query.strip():
            return []
        pool = min(n, max(self.candidates, k))
        if mode == "bm25":
            bm25 = snap.lexical.scores(query)
            order = _top(bm25, min(n, k), positive_only=True)
            return [ScoredChunk(snap.chunks[i], float(bm25[i]), 0.0, float(bm25[i])) for i in order]
        similarity = self.encoder.similarities(snap.vectors, self.encoder.encode([query])[0])
        if mode == "dense":
            order = _top(similarity, min(n, k))
            return [ScoredChunk(snap.chunks[i], float(similarity[i]), float(similarity[i]), 0.0) for i in order]
        bm25 = snap.lexical.scores(query)
        fused: dict[int, float] = {}
        for ranking in (_top(bm25, pool, positive_only=True), _top(similarity, pool)):
            for rank, i in enumerate(ranking.tolist()):
                fused[i] = fused.get(i, 0.0) + 1.0 / (self.rrf_k + rank + 1)
        best = sorted(fused, key=lambda i: (-fused[i], -similarity[i]))[:k]
        return [ScoredChunk(snap.chunks[i], fused[i], float(similarity[i]), float(bm25[i])) for i in best]
