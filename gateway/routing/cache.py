"""Each gateway process's view of the routing table: at most ``ttl_s`` old, never a DB hit per request.

A daemon thread re-reads the registry every ``ttl_s`` and swaps in the new snapshot; ``get()`` only
reads an attribute, so the hot path takes no lock, does no I/O and never blocks the event loop (only
the very first ``get()``, before any snapshot exists, reads the registry itself — call ``get()`` once
at start-up). Reading on a timer rather than on demand keeps an idle gateway fresh too: its first
request after an hour must not be routed to a canary that was rolled back in the meantime. If the
database is unreachable the last good snapshot keeps serving and the error is kept for ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from policies.registry_models import RoutingTable

log = logging.getLogger(__name__)


class RoutingTableSource(Protocol):
    """What the cache needs from the registry (``PolicyRegistry`` fits)."""

    def routing_table(self) -> RoutingTable: ...


class RoutingTableCache:
    """The registry's routing table, re-read at most once every ``ttl_s`` seconds per process."""

    def __init__(
        self,
        registry: RoutingTableSource,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._registry = registry
        self.ttl_s = ttl_s
        self._clock = clock
        self._snapshot: tuple[RoutingTable, float] | None = None  # (table, loaded at); swapped whole
        self._read_lock = threading.Lock()  # one registry read at a time, per process
        self._last_attempt = float("-inf")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        self.reads = 0

    def get(self) -> RoutingTable:
        """The current snapshot (starting the refresher on first use)."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._first_load()
        if self._thread is None:
            self.start()
        return snapshot[0]

    def refresh(self) -> RoutingTable:
        """Read the registry now (blocking) and publish the result."""
        with self._read_lock:
            self._last_attempt = self._clock()
            try:
                table = self._registry.routing_table()
            except Exception as exc:
                self.last_error = exc
                raise
            finally:
                self.reads += 1
            self._snapshot = (table, self._clock())
            self.last_error = None
            return table

    def invalidate(self) -> None:
        """Ask for a re-read now, e.g. after this process changed the registry; returns at once."""
        if self._thread is None:
            self._snapshot = None
        self._wake.set()

    @property
    def age_s(self) -> float | None:
        """Seconds since the snapshot in use was read; None before the first read."""
        snapshot = self._snapshot
        return None if snapshot is None else self._clock() - snapshot[1]

    def healthy(self, max_age_s: float | None = None) -> bool:
        """A snapshot exists and is at most ``max_age_s`` (default: 5 × ttl) old."""
        age = self.age_s
        return age is not None and age <= (max_age_s if max_age_s is not None else 5 * self.ttl_s)

    def start(self) -> None:
        """Start the background refresher (idempotent)."""
        with self._read_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="routing-table-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the refresher; ``get()`` keeps returning the last snapshot."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # --- internals ------------------------------------------------------------------------------
    def _first_load(self) -> tuple[RoutingTable, float]:
        with self._read_lock:
            if self._snapshot is not None:
                return self._snapshot
            # Without any snapshot every request would hammer the DB; fail fast within a ttl instead.
            if self.last_error is not None and self._clock() - self._last_attempt < self.ttl_s:
                raise self.last_error
        self.refresh()
        assert self._snapshot is not None
        return self._snapshot

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.ttl_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep serving the last good table
                log.warning("routing table refresh failed (serving the last one): %s", exc)
