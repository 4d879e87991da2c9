"""Which spool file a gateway process owns when several processes serve one port.

A spool is single-writer (an ``flock`` guards it). Worker processes are interchangeable, so each takes
the lowest-numbered spool of its port that no live process holds: slot 0 is ``gateway-<port>.db`` (the
name a single process has always used), slot *i* is ``gateway-<port>-<i>.db``. A worker that dies
releases its lock with its process, and the worker started in its place takes the same slot and replays
whatever the dead one left spooled, so nothing spooled is stranded by a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from feedback.spool import Spool, SpoolLockedError
from flywheel.settings import Settings

log = logging.getLogger(__name__)


def spool_base(settings: Settings) -> Path:
    """Slot 0 of the gateway serving ``settings.port``: FLYWHEEL_SPOOL_PATH, else var/spool/gateway-<port>.db."""
    return settings.spool_path or settings.var_dir / "spool" / f"gateway-{settings.port}.db"


def slot_path(base: Path, slot: int) -> Path:
    """Slot 0 is ``base`` itself; slot *i* adds ``-i`` before the suffix."""
    return base if slot == 0 else base.with_name(f"{base.stem}-{slot}{base.suffix}")


def claim_spool(base: Path, max_bytes: int, max_slots: int) -> Spool:
    """Open and lock the first free spool slot of ``base``; SpoolLockedError if all ``max_slots`` are held."""
    for slot in range(max_slots):
        try:
            return Spool(slot_path(base, slot), max_bytes)
        except SpoolLockedError:
            continue
    raise SpoolLockedError(f"all {max_slots} spool slots of {base} are held by other processes")


def stranded_spools(base: Path, workers: int) -> list[Path]:
    """Non-empty spools in slots a run with ``workers`` processes will not open (a run that had more):
    what they hold is delivered once the gateway runs with that many workers again."""
    stranded = []
    for path in sorted(base.parent.glob(f"{base.stem}-*{base.suffix}")):
        suffix = path.stem[len(base.stem) + 1 :]
        if suffix.isdigit() and int(suffix) >= workers and _holds_rows(path):
            stranded.append(path)
    return stranded


def _holds_rows(path: Path) -> bool:
    try:
        spool = Spool(path, max_bytes=1 << 62)
    except SpoolLockedError:
        return False  # someone is serving from it, so it is not stranded
    try:
        return len(spool) > 0
    finally:
        spool.close()
