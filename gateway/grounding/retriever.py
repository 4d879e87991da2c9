"""What the request pipeline calls: ``Retriever.search(query, k) -> list[Hit]``.

Build one Retriever per process (``Retriever.from_settings``) and share it: the encoder loads once
(seconds) and the index stays in memory, so a search costs one query embedding plus two scans.
Searching is thread-safe; adding and removing documents may happen while searches run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flywheel.settings import Settings
from gateway.grounding.encoder import Encoder
from gateway.grounding.index import AddReport, HybridIndex, Mode
from gateway.grounding.kb import shipped_kb_dir

_INIT_MARKER = "initialised"


@dataclass(frozen=True)
class Hit:
    """One retrieved passage, with what a citation needs."""

    doc_id: str
    title: str
    chunk_id: str
    text: str
    score: float  # fused RRF score in hybrid mode: compare within one result list only
    section: str = ""
    path: str = ""
    similarity: float = 0.0  # query-passage cosine in [-1, 1]: usable as an absolute relevance floor


def open_index(settings: Settings, encoder: Encoder) -> HybridIndex:
    """The knowledge base at ``settings.effective_kb_dir`` with the settings' chunking and fusion knobs."""
    return HybridIndex(
        settings.effective_kb_dir,
        encoder,
        chunk_words=settings.grounding_chunk_words,
        chunk_overlap=settings.grounding_chunk_overlap,
        candidates=settings.grounding_candidates,
        rrf_k=settings.grounding_rrf_k,
    )


def init_default_kb(index: HybridIndex, source: Path | None = None, force: bool = False) -> AddReport:
    """Ingest the shipped Kestrel documentation (idempotent: unchanged files are skipped unless ``force``)."""
    report = index.add_paths([source or shipped_kb_dir()], force)
    (index.directory / _INIT_MARKER).touch()
    return report


def ensure_default_kb(index: HybridIndex) -> AddReport | None:
    """Ingest the shipped docs on first use only: an operator who later empties the KB keeps it empty."""
    if (index.directory / _INIT_MARKER).exists() or index.documents():
        return None
    return init_default_kb(index)


class Retriever:
    """Searches one hybrid index and returns citation-ready hits."""

    def __init__(self, index: HybridIndex, default_k: int = 4) -> None:
        self.index = index
        self.default_k = default_k

    @classmethod
    def from_settings(cls, settings: Settings, encoder: Encoder | None = None) -> Retriever:
        """Load the encoder (unless one is passed in), open the KB, seed it with the shipped docs if new."""
        encoder = encoder or Encoder.from_settings(settings)
        index = open_index(settings, encoder)
        if settings.kb_auto_init:
            ensure_default_kb(index)
        return cls(index, default_k=settings.grounding_top_k)

    def search(self, query: str, k: int | None = None, mode: Mode = "hybrid") -> list[Hit]:
        """The best ``k`` passages for ``query`` (default ``grounding_top_k``), best first."""
        return [
            Hit(
                doc_id=s.chunk.doc_id,
                title=s.chunk.title,
                chunk_id=s.chunk.chunk_id,
                text=s.chunk.text,
                score=s.score,
                section=s.chunk.section,
                path=s.chunk.path,
                similarity=s.similarity,
            )
            for s in self.index.search(query, self.default_k if k is None else k, mode)
        ]
