"""Retrieval quality on a question → answering-document set: recall@k and MRR per retrieval mode.

Scored at the document level (the first chunk of each document counts), because a question is
answered by a document and chunk boundaries move whenever chunking settings change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.grounding.index import MODES, HybridIndex, Mode


@dataclass(frozen=True)
class QaItem:
    """A question and the documents that answer it (any of them counts as a hit)."""

    question: str
    doc_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModeScores:
    """Quality of one mode; ``recall[k]`` is the share of questions answered in the top k documents."""

    mode: str
    recall: dict[int, float]
    mrr: float
    n: int
    mean_ms: float


def load_qa(path: Path) -> list[QaItem]:
    """Read ``{"question": ..., "doc_ids": [...]}`` lines (``doc_id`` singular accepted too)."""
    items: list[QaItem] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        ids = row.get("doc_ids") or [row.get("doc_id")]
        if not row.get("question") or not all(ids):
            raise ValueError(f"{path}:{lineno}: need 'question' and 'doc_ids'")
        items.append(QaItem(row["question"], tuple(ids)))
    return items


def ranked_docs(index: HybridIndex, question: str, mode: Mode, depth: int = 50) -> list[str]:
    """Document ids in the order their best chunk ranks."""
    return list(dict.fromkeys(hit.chunk.doc_id for hit in index.search(question, depth, mode)))


def evaluate(
    index: HybridIndex,
    items: list[QaItem],
    modes: tuple[Mode, ...] = MODES,
    ks: tuple[int, ...] = (1, 3, 5),
) -> dict[str, ModeScores]:
    """Recall@k and mean reciprocal rank for each mode over ``items``."""
    known = {d.doc_id for d in index.documents()}
    unknown = sorted({d for item in items for d in item.doc_ids} - known)
    if unknown:
        raise ValueError(f"evaluation set names documents not in the index: {', '.join(unknown)}")
    results: dict[str, ModeScores] = {}
    for mode in modes:
        hits = {k: 0 for k in ks}
        rr = 0.0
        started = time.perf_counter()
        for item in items:
            docs = ranked_docs(index, item.question, mode)
            rank = next((i + 1 for i, d in enumerate(docs) if d in item.doc_ids), None)
            if rank is not None:
                rr += 1.0 / rank
                for k in ks:
                    hits[k] += rank <= k
        n = len(items)
        elapsed = time.perf_counter() - started
        results[mode] = ModeScores(
            mode=mode,
            recall={k: hits[k] / n for k in ks},
            mrr=rr / n,
            n=n,
            mean_ms=1000 * elapsed / n,
        )
    return results
