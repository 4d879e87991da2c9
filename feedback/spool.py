"""A durable local spool for events the broker could not take yet.

SQLite in WAL mode with ``synchronous=FULL``: a committed append is on disk (fsync'd) and survives a
crash or restart of the process. Rows come back FIFO by an autoincrement sequence, and are deleted
only when the caller acks them (after Kafka acknowledged them), so delivery is at-least-once.

Writes use group commit: concurrent ``append`` calls that arrive while a commit is in flight are
written together in the next transaction, so thousands of durable appends per second cost a few
fsyncs, not thousands. The spool is bounded in bytes (``SpoolFullError``) so an outage cannot fill
the disk. One process owns a spool file at a time (an ``flock`` on a side file enforces it).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Spool", "SpoolError", "SpoolFullError", "SpoolLockedError", "SpoolRecord"]


class SpoolError(RuntimeError):
    """Base of spool errors."""


class SpoolFullError(SpoolError):
    """Appending would exceed the spool's byte bound; the event was not stored."""


class SpoolLockedError(SpoolError):
    """Another process already owns this spool file."""


@dataclass(frozen=True)
class SpoolRecord:
    """One spooled message: where it goes and its exact bytes."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"") + len(self.topic)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key   BLOB,
    value BLOB NOT NULL,
    size  INTEGER NOT NULL
)
"""

Pending = tuple[str, bytes | None, bytes]


class Spool:
    """FIFO of (topic, key, value) rows on disk: ``append`` → ``peek`` → ``ack``."""

    def __init__(self, path: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] | None = open(self.path.with_suffix(self.path.suffix + ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise SpoolLockedError(f"spool {self.path} is in use by another process") from exc
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db_lock = threading.Lock()
        self._cv = threading.Condition()
        self._pending: list[tuple[int, list[Pending]]] = []
        self._pending_bytes = 0
        self._next_ticket = 1
        self._committed_ticket = 0
        self._errors: dict[int, BaseException] = {}
        self._flushing = False
        row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM spool").fetchone()
        self._bytes, self._count = int(row[0]), int(row[1])

    # --- sizes -----------------------------------------------------------------------------
    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return self._count

    # --- writing ---------------------------------------------------------------------------
    def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Store one message durably (fsync'd) before returning; SpoolFullError if over the bound."""
        self.append_many([(topic, key, value)])

    def append_many(self, records: list[Pending]) -> None:
        """Store messages durably, in order, in one transaction shared with concurrent callers."""
        ticket = self.submit(records)
        if ticket:
            self.wait(ticket)

    def submit(self, records: list[Pending]) -> int:
        """Queue records for the next group commit and return a ticket for ``wait``.

        Commit order is submission order, so a caller holding its own lock across ``submit`` (not
        ``wait``) fixes the on-disk order without serialising the fsyncs. SpoolFullError if over.
        """
        if not records:
            return 0
        size = sum(len(v) + len(k or b"") + len(t) for t, k, v in records)
        with self._cv:
            if self._bytes + self._pending_bytes + size > self.max_bytes:
                raise SpoolFullError(
                    f"spool {self.path} is full ({self._bytes + self._pending_bytes} of {self.max_bytes} bytes)"
                )
            ticket = self._next_ticket
            self._next_ticket += 1
            self._pending.append((ticket, records))
            self._pending_bytes += size
            return ticket

    def wait(self, ticket: int) -> None:
        """Block until the ticket's records are committed (leading the commit if nobody is)."""
        with self._cv:
            while self._committed_ticket < ticket:
                if self._flushing:
                    self._cv.wait()
                    continue
                self._flush_locked()
            error = self._errors.pop(ticket, None)
        if error is not None:
            raise SpoolError(f"spool write failed: {error}") from error

    def _flush_locked(self) -> None:
        """Leader of a group commit: write everything pending in one transaction (cv held on entry/exit)."""
        self._flushing = True
        batch, self._pending = self._pending, []
        batch_bytes, self._pending_bytes = self._pending_bytes, 0
        last = batch[-1][0]
        self._cv.release()
        error: BaseException | None = None
        rows = [(t, k, v, len(v) + len(k or b"") + len(t)) for _, recs in batch for t, k, v in recs]
        try:
            with self._db_lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO spool(topic, key, value, size) VALUES (?,?,?,?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite already rolled back on e.g. "database or disk is full"
                        self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            error = exc
        finally:
            self._cv.acquire()
            self._flushing = False
            self._committed_ticket = last
            if error is None:
                self._bytes += batch_bytes
                self._count += len(rows)
            else:
                for ticket, _ in batch:
                    self._errors[ticket] = error
            self._cv.notify_all()

    # --- reading ---------------------------------------------------------------------------
    def peek(self, limit: int = 500) -> list[SpoolRecord]:
        """The oldest ``limit`` rows, oldest first, without removing them."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value FROM spool ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [SpoolRecord(int(s), str(t), None if k is None else bytes(k), bytes(v)) for s, t, k, v in rows]

    def ack(self, records: list[SpoolRecord]) -> None:
        """Delete rows that the broker has acknowledged; SpoolError (rows kept, spool usable) if that fails.

        A failed statement rolls the transaction back, as in ``_flush_locked``: left open, it would make
        every later BEGIN IMMEDIATE fail and the spool would take no appends until a restart.
        """
        if not records:
            return
        seqs = [(r.seq,) for r in records]
        with self._db_lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    before = self._db.total_changes
                    self._db.executemany("DELETE FROM spool WHERE seq = ?", seqs)
                    removed = self._db.total_changes - before
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SpoolError(f"spool ack failed: {exc}") from exc
            if removed != len(records):  # some were acked before: recount instead of guessing
                row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM spool").fetchone()
                with self._cv:
                    self._bytes, self._count = int(row[0]), int(row[1])
                return
        with self._cv:
            self._count -= removed
            self._bytes -= sum(r.size for r in records)

    def close(self) -> None:
        with self._db_lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
