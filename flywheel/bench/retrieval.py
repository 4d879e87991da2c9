"""Retrieval latency at knowledge-base scale: ``run_retrieval_bench(n_chunks=10000) -> dict``.

The shipped KB has ~100 chunks, too few to show how search cost grows, so this builds a temporary
index of ``n_chunks`` synthetic chunks made from the shipped documents (sentences recombined across
documents, words shuffled inside clauses, numbers changed), plus the real documents, and times
searches with the evaluation questions in each mode. Nothing is asserted: it only reports.

Synthetic vectors: embedding 10,000 passages on 2 CPU cores takes minutes, while search latency
depends only on the matrix shape and the BM25 postings, not on which unit vectors fill the matrix.
So each sentence is embedded once and a chunk's vector is the normalised mean of its sentences'
vectors plus a little noise (``exact_vectors=True`` embeds every chunk instead). Queries are always
embedded for real, inside the timed search.
"""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway.grounding.documents import Chunk, Document, chunk_document, iter_document_files, load_document
from gateway.grounding.encoder import Encoder
from gateway.grounding.evaluation import load_qa
from gateway.grounding.index import MODES, HybridIndex
from gateway.grounding.kb import shipped_eval_path, shipped_kb_dir
from gateway.grounding.store import KbStore

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\d+")
CHUNKS_PER_DOC = 10


def _sentences() -> list[tuple[str, str]]:
    """(title, sentence) pairs from the shipped documents."""
    pairs: list[tuple[str, str]] = []
    for file, root in iter_document_files([shipped_kb_dir()]):
        doc = load_document(file, root)
        for chunk in chunk_document(doc):
            pairs += [(doc.title, s) for s in _SENTENCE.split(chunk.text) if len(s.split()) >= 5]
    return pairs


def _perturb(sentence: str, rng: random.Random) -> str:
    """Paraphrase-ish noise: change numbers, shuffle a clause, so chunks are similar but not duplicates."""
    sentence = _NUMBER.sub(lambda m: str(rng.randint(1, 999)) if rng.random() < 0.5 else m.group(0), sentence)
    clauses = sentence.split(", ")
    i = rng.randrange(len(clauses))
    words = clauses[i].split()
    if len(words) > 3 and rng.random() < 0.5:
        middle = words[1:-1]
        rng.shuffle(middle)
        clauses[i] = " ".join([words[0], *middle, words[-1]])
    return ", ".join(clauses)


def _synthetic(
    n_chunks: int, encoder: Encoder, rng: random.Random, exact: bool
) -> list[tuple[Document, list[Chunk], np.ndarray]]:
    """Synthetic documents of ``CHUNKS_PER_DOC`` chunks each, with their chunk vectors."""
    pairs = _sentences()
    noise = np.random.default_rng(rng.randrange(2**32))
    base = encoder.encode([s for _, s in pairs])
    docs: list[tuple[Document, list[Chunk], np.ndarray]] = []
    for d in range(0, n_chunks, CHUNKS_PER_DOC):
        doc_id = f"synthetic/{d // CHUNKS_PER_DOC:05d}"
        chunks: list[Chunk] = []
        vectors: list[np.ndarray] = []
        for ordinal in range(min(CHUNKS_PER_DOC, n_chunks - d)):
            picks = rng.sample(range(len(pairs)), rng.randint(3, 6))
            title = pairs[picks[0]][1].split(",")[0][:60]
            text = " ".join(_perturb(pairs[p][1], rng) for p in picks)
            chunks.append(Chunk(f"{doc_id}#{ordinal}", doc_id, ordinal, title, "", text, ""))
            if not exact:
                vec = base[picks].mean(axis=0) + noise.normal(0, 0.02, encoder.dim).astype(np.float32)
                vectors.append(vec / np.linalg.norm(vec))
        if exact:
            matrix = encoder.encode([c.index_text for c in chunks])
        else:
            matrix = np.asarray(vectors, dtype=np.float32)
        doc = Document(doc_id, chunks[0].title, f"<synthetic {doc_id}>", " ".join(c.text for c in chunks), doc_id)
        docs.append((doc, chunks, matrix))
    return docs


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in samples_s)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def run_retrieval_bench(
    n_chunks: int = 10_000,
    n_queries: int = 200,
    k: int = 5,
    encoder: Encoder | None = None,
    exact_vectors: bool = False,
    seed: int = 0,
    encoder_threads: int | None = 1,
) -> dict:
    """Build a ``n_chunks`` index in a temporary directory and time searches; returns a JSON-able dict."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    encoder = encoder or Encoder.load(threads=encoder_threads)
    load_s = time.perf_counter() - t0
    questions = [item.question for item in load_qa(shipped_eval_path())]
    queries = [questions[i % len(questions)] for i in range(n_queries)]
    with tempfile.TemporaryDirectory(prefix="flywheel-retrieval-bench-") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        synthetic = _synthetic(n_chunks, encoder, rng, exact_vectors)
        store = KbStore(directory)
        store.put_documents([(doc, chunks) for doc, chunks, _ in synthetic])
        store.save_vectors(
            [c for _, chunks, _ in synthetic for c in chunks],
            np.concatenate([m for _, _, m in synthetic]) if synthetic else np.zeros((0, encoder.dim), np.float32),
            encoder.name,
        )
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = HybridIndex(directory, encoder)  # loads vectors, builds BM25 over every chunk
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.add_paths([shipped_kb_dir()])  # real documents: embedded for real, BM25 rebuilt once
        add_s = time.perf_counter() - t0
        encoder.encode(queries[:5])  # warm-up: first calls allocate
        for mode in MODES:
            index.search(queries[0], k, mode)
        encode = []
        # Queries repeat (200 drawn from the QA set): clear the encoder's vector cache before every
        # timed call, so each one pays for its embedding as a new question would.
        for q in queries:
            encoder.clear_cache()
            t = time.perf_counter()
            encoder.encode([q])
            encode.append(time.perf_counter() - t)
        search: dict[str, list[float]] = {mode: [] for mode in MODES}
        for q in queries:  # modes interleaved, so a busy neighbour slows all of them alike
            for mode in MODES:
                encoder.clear_cache()
                t = time.perf_counter()
                index.search(q, k, mode)
                search[mode].append(time.perf_counter() - t)
        n_indexed = len(index)
    return {
        "n_chunks": n_indexed,
        "n_synthetic": n_chunks,
        "n_queries": n_queries,
        "k": k,
        "exact_vectors": exact_vectors,
        "encoder": encoder.name,
        "encoder_backend": encoder.backend,
        "torch_threads": _torch_threads(),
        "encoder_load_s": round(load_s, 2),
        "generate_s": round(generate_s, 2),
        "open_index_s": round(open_s, 2),
        "add_shipped_docs_s": round(add_s, 2),
        "query_encode": _percentiles(encode),
        "search": {mode: _percentiles(samples) for mode, samples in search.items()},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run_retrieval_bench(), indent=2))
