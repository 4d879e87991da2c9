"""On-disk knowledge base: a SQLite manifest of documents and chunks, plus a numpy matrix of embeddings.

Layout of the directory (``var/kb`` by default)::

    kb.sqlite        documents and chunks (text, titles, sections) - the source of truth
    vectors.npy      float32 (n_chunks, dim), one row per chunk
    vectors.json     {"encoder": name, "keys": [...]} - which chunk (id + content hash) each row belongs to

SQLite commits first, the vectors second (each written to a temporary file of its own, fsync'd and
renamed; ``vectors.json`` names the sha256 of the ``vectors.npy`` it goes with). A crash in between leaves
vectors that disagree with the manifest, or a matrix that disagrees with its keys; ``load`` notices through
``vectors.json`` and reports the chunks whose vectors are missing, so the index re-embeds those instead of
serving stale or mismatched rows. Unique temporary names let two processes (gateway workers on a first
start) write at once: the last rename wins whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.grounding.documents import Chunk, Document

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, title TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL, added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL, title TEXT NOT NULL, section TEXT NOT NULL, text TEXT NOT NULL, path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""


def vector_key(chunk: Chunk) -> str:
    """Chunk id plus a hash of the embedded text: an edited document's old vectors never match."""
    return f"{chunk.chunk_id}:{hashlib.sha1(chunk.index_text.encode('utf-8')).hexdigest()[:12]}"


@dataclass(frozen=True)
class DocumentInfo:
    """A row of ``flywheel kb list``."""

    doc_id: str
    title: str
    path: str
    sha256: str
    n_chunks: int
    added_at: float


@dataclass
class StoredState:
    """Everything the in-memory index is built from; ``vectors`` rows follow ``chunks``."""

    chunks: list[Chunk]
    vectors: np.ndarray
    missing: list[int]  # positions in ``chunks`` without a stored vector (to re-embed)


class KbStore:
    """Reads and writes one knowledge-base directory. Not thread-safe: the index serialises writers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._db = directory / "kb.sqlite"
        with closing(self._connect()) as conn, conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._db, timeout=30)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    # --- manifest ------------------------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT d.doc_id, d.title, d.path, d.sha256, COUNT(c.seq), d.added_at FROM documents d "
                "LEFT JOIN chunks c ON c.doc_id = d.doc_id GROUP BY d.doc_id ORDER BY d.doc_id"
            ).fetchall()
        return [DocumentInfo(*row) for row in rows]

    def sha256_of(self, doc_id: str) -> str | None:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT sha256 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        return row[0] if row else None

    def put_documents(self, docs: list[tuple[Document, list[Chunk]]]) -> None:
        """Insert or replace documents with their chunks, in one transaction."""
        with closing(self._connect()) as conn, conn:
            for doc, chunks in docs:
                conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc.doc_id,))
                conn.execute(
                    "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                    (doc.doc_id, doc.title, doc.path, doc.sha256, json.dumps(doc.metadata), time.time()),
                )
                conn.executemany(
                    "INSERT INTO chunks (chunk_id, doc_id, ordinal, title, section, text, path) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(c.chunk_id, c.doc_id, c.ordinal, c.title, c.section, c.text, c.path) for c in chunks],
                )

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove documents and their chunks; returns how many documents existed."""
        with closing(self._connect()) as conn, conn:
            return sum(conn.execute("DELETE FROM documents WHERE doc_id = ?", (d,)).rowcount for d in doc_ids)

    def chunks(self) -> list[Chunk]:
        """All chunks in insertion order (the row order of the vector matrix)."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT chunk_id, doc_id, ordinal, title, section, text, path FROM chunks ORDER BY seq"
            ).fetchall()
        return [Chunk(*row) for row in rows]

    # --- vectors ------------------------------------------------------------------------------
    def save_vectors(self, chunks: list[Chunk], vectors: np.ndarray, encoder: str) -> None:
        """Write the matrix, then its row ids and checksum, each atomically (temporary file, rename)."""
        buffer = io.BytesIO()
        np.save(buffer, vectors.astype(np.float32, copy=False))
        matrix = buffer.getvalue()
        meta = {
            "encoder": encoder, "dim": int(vectors.shape[1]), "keys": [vector_key(c) for c in chunks],
            "npy_sha256": hashlib.sha256(matrix).hexdigest(),
        }  # fmt: skip
        self._write_atomically("vectors.npy", matrix)
        self._write_atomically("vectors.json", json.dumps(meta).encode())

    def _write_atomically(self, name: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _stored_vectors(self) -> tuple[dict, np.ndarray] | None:
        """``vectors.json`` and the matrix it names, or None when absent, unreadable or not a pair."""
        meta_path, npy_path = self.directory / "vectors.json", self.directory / "vectors.npy"
        try:
            meta = json.loads(meta_path.read_text())
            matrix = npy_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("npy_sha256") != hashlib.sha256(matrix).hexdigest():
            return None  # a crash between the two renames, or files from before checksums: re-embed
        try:
            stored = np.load(io.BytesIO(matrix))
        except ValueError:
            return None
        if len(meta.get("keys", [])) != len(stored):
            return None
        return meta, stored

    def prune_vectors(self) -> None:
        """Drop the rows of chunks that no longer exist, without an encoder (for removals from the CLI)."""
        found = self._stored_vectors()
        if found is None:
            return  # nothing usable: the next open re-embeds what is missing
        meta, stored = found
        rows = dict(zip(meta["keys"], stored, strict=True))
        chunks = [c for c in self.chunks() if vector_key(c) in rows]
        vectors = np.array([rows[vector_key(c)] for c in chunks], dtype=np.float32).reshape(-1, stored.shape[1])
        self.save_vectors(chunks, vectors, meta.get("encoder", ""))

    def load(self, encoder: str, dim: int) -> StoredState:
        """Chunks plus the vectors that match them; vectors from another encoder count as missing."""
        chunks = self.chunks()
        vectors = np.zeros((len(chunks), dim), dtype=np.float32)
        have: dict[str, np.ndarray] = {}
        found = self._stored_vectors()
        if found is not None:
            meta, stored = found
            if meta.get("encoder") == encoder and meta.get("dim") == dim:
                have = dict(zip(meta["keys"], stored, strict=True))
        missing: list[int] = []
        for pos, chunk in enumerate(chunks):
            row = have.get(vector_key(chunk))
            if row is None:
                missing.append(pos)
            else:
                vectors[pos] = row
        return StoredState(chunks=chunks, vectors=vectors, missing=missing)
