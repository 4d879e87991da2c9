"""Spool slots: each gateway process serving one port owns a spool of its own, and a restarted
process takes back the slot (and whatever is spooled in it) of the one that died."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feedback.spool import Spool, SpoolLockedError
from gateway.spool_slot import claim_spool, slot_path, stranded_spools


def test_slot_zero_keeps_the_single_process_name(tmp_path: Path) -> None:
    base = tmp_path / "gateway-8000.db"
    assert slot_path(base, 0) == base
    assert slot_path(base, 2) == tmp_path / "gateway-8000-2.db"


def test_each_process_gets_the_lowest_free_slot(tmp_path: Path) -> None:
    base = tmp_path / "gateway-8000.db"
    first = claim_spool(base, 1 << 20, max_slots=4)
    second = claim_spool(base, 1 << 20, max_slots=4)
    assert (first.path, second.path) == (base, slot_path(base, 1))
    first.close()
    again = claim_spool(base, 1 << 20, max_slots=4)  # the freed slot, not a new one
    assert again.path == base
    with pytest.raises(SpoolLockedError, match="all 2 spool slots"):
        claim_spool(base, 1 << 20, max_slots=2)
    again.close()
    second.close()


def test_a_dead_process_slot_and_its_rows_go_to_the_next_claimer(tmp_path: Path) -> None:
    """The lock dies with its process (as a killed worker's does), and the rows it spooled are there."""
    base = tmp_path / "gateway-8000.db"
    holder = claim_spool(base, 1 << 20, max_slots=4)  # slot 0 stays held by this test
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from gateway.spool_slot import claim_spool\n"
        "spool = claim_spool(Path(sys.argv[1]), 1 << 20, max_slots=4)\n"
        "spool.append('t', None, b'left behind')\n"
        "print(spool.path, flush=True)\n"
        "os._exit(9)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(base)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    assert Path(out.stdout.strip()) == slot_path(base, 1)
    successor = claim_spool(base, 1 << 20, max_slots=4)
    assert successor.path == slot_path(base, 1)
    assert [r.value for r in successor.peek(10)] == [b"left behind"]
    successor.close()
    holder.close()


def test_stranded_spools_are_the_non_empty_slots_past_the_worker_count(tmp_path: Path) -> None:
    base = tmp_path / "gateway-8000.db"
    for slot, rows in ((0, 1), (1, 1), (2, 0), (3, 2)):
        with Spool(slot_path(base, slot)) as spool:
            for i in range(rows):
                spool.append("t", None, b"x%d" % i)
    (tmp_path / "gateway-8000-notes.db").write_bytes(b"")  # not a slot: ignored
    assert stranded_spools(base, workers=2) == [slot_path(base, 3)]
    assert stranded_spools(base, workers=4) == []
    held = Spool(slot_path(base, 3))  # someone serves from it: not stranded
    assert stranded_spools(base, workers=2) == []
    held.close()
