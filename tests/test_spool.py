"""The durable spool: FIFO, ack semantics, restart survival, byte bound, concurrent group commit."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from feedback.spool import Spool, SpoolError, SpoolFullError, SpoolLockedError


def test_fifo_peek_ack(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        for i in range(10):
            spool.append("t", f"k{i}".encode(), f"v{i}".encode())
        assert len(spool) == 10
        first = spool.peek(3)
        assert [r.value for r in first] == [b"v0", b"v1", b"v2"]
        assert spool.peek(3) == first  # peek does not consume
        spool.ack(first)
        assert [r.value for r in spool.peek(100)] == [f"v{i}".encode() for i in range(3, 10)]
        spool.ack(first)  # acking twice is harmless
        assert len(spool) == 7
        spool.append("t", None, b"tail")
        assert spool.peek(100)[-1].key is None
        assert spool.peek(100)[-1].value == b"tail"


def test_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        spool.append_many([("a", b"1", b"x" * 10), ("b", b"2", b"y" * 20)])
        used = spool.bytes_used
    with Spool(path) as spool:
        assert len(spool) == 2
        assert spool.bytes_used == used
        assert [(r.topic, r.value) for r in spool.peek()] == [("a", b"x" * 10), ("b", b"y" * 20)]


def test_survives_kill9_of_writer(tmp_path: Path) -> None:
    """A child appends and is SIGKILLed without close: every append that returned is on disk."""
    path = tmp_path / "s.db"
    code = (
        "import sys, os, signal\n"
        "from feedback.spool import Spool\n"
        f"s = Spool({str(path)!r})\n"
        "for i in range(200): s.append('t', None, str(i).encode())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, check=False)
    assert proc.returncode == -9
    with Spool(path) as spool:
        assert [int(r.value) for r in spool.peek(1000)] == list(range(200))


def test_bounded(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_bytes=1000) as spool:
        spool.append("t", None, b"x" * 900)
        with pytest.raises(SpoolFullError, match="full"):
            spool.append("t", None, b"x" * 200)
        assert len(spool) == 1
        spool.ack(spool.peek())
        spool.append("t", None, b"x" * 200)  # room again after ack
        assert len(spool) == 1


def test_one_owner(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db"), pytest.raises(SpoolLockedError):
        Spool(tmp_path / "s.db")


def test_group_commit_concurrent(tmp_path: Path) -> None:
    """Many threads appending durably: nothing lost, per-thread order kept, and appends that arrive
    during a commit share the next one (fewer transactions than appends)."""
    threads, per = 8, 250
    with Spool(tmp_path / "s.db") as spool:
        commits = 0

        def count_commits(statement: str) -> None:
            nonlocal commits
            commits += statement.strip().upper() == "COMMIT"

        spool._db.set_trace_callback(count_commits)  # sqlite3's own statement hook: no timing involved

        def work(tid: int) -> None:
            for i in range(per):
                spool.append("t", None, f"{tid}:{i}".encode())

        ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        spool._db.set_trace_callback(None)
        values = [r.value.decode() for r in spool.peek(threads * per + 1)]
        assert len(values) == threads * per
        for tid in range(threads):
            mine = [int(v.split(":")[1]) for v in values if v.startswith(f"{tid}:")]
            assert mine == list(range(per))
        assert 0 < commits < threads * per


def test_failed_ack_rolls_back_and_the_spool_stays_usable(tmp_path: Path) -> None:
    """A DELETE that fails inside ack (here a trigger refuses it) must not leave the connection in a
    transaction: every later BEGIN IMMEDIATE would fail, so no append or ack would work until a restart."""
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        for i in range(3):
            spool.append("t", None, f"v{i}".encode())
        other = sqlite3.connect(str(path))
        other.execute("CREATE TRIGGER refuse BEFORE DELETE ON spool BEGIN SELECT RAISE(ABORT, 'ack refused'); END")
        other.commit()
        with pytest.raises(SpoolError, match="ack refused"):
            spool.ack(spool.peek(2))
        assert not spool._db.in_transaction
        assert len(spool) == 3 and [r.value for r in spool.peek()] == [b"v0", b"v1", b"v2"]  # nothing half-acked
        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        spool.append("t", None, b"v3")  # BEGIN IMMEDIATE works again
        spool.ack(spool.peek(2))
        assert [r.value for r in spool.peek()] == [b"v2", b"v3"]
        assert len(spool) == 2
    with Spool(path) as spool:  # and what is on disk agrees
        assert [r.value for r in spool.peek()] == [b"v2", b"v3"]
