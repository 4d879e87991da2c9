"""Idempotency keys for ``POST /v1/feedback``: a retried POST gets the first answer and counts once.

Two layers, because a retry may land on another gateway process (or after this one restarted):

1. Fast path, this process: an in-memory map with a TTL (oldest dropped first beyond a size cap) from ``(response_id, idempotency_key)`` to the
   first request's outcome. A repeat (even one racing the first) waits for the first's durable ack
   and answers with the same event id without writing a second event. A repeat with a *different*
   body is a conflict (409), as the key promised "the same request".
2. Across processes and restarts: the event id of a keyed rating is derived from
   ``(response_id, idempotency_key)`` (``keyed_event_id``), so every process emits the same id for
   the same key and the store's event-id ledger applies it once; the store also refuses a second
   row with the same ``(response_id, idempotency_key)``. First write wins there, whatever its body.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["IdempotencyCache", "IdempotencyConflict", "keyed_event_id"]


def keyed_event_id(response_id: str, idempotency_key: str) -> str:
    """The event id every gateway process gives a rating with this key (32 hex chars)."""
    return hashlib.sha256(f"{response_id}\x00{idempotency_key}".encode()).hexdigest()[:32]


class IdempotencyConflict(Exception):
    """The key was used before with a different body."""


@dataclass
class _Entry:
    fingerprint: str
    expires_at: float
    done: asyncio.Future[str]


class IdempotencyCache:
    """TTL map (FIFO beyond ``max_keys``) of keyed requests to the event id they were acknowledged with."""

    def __init__(self, ttl_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def claim(self, key: tuple[str, str], fingerprint: str) -> asyncio.Future[str] | None:
        """None: the caller owns the key (must ``resolve`` or ``fail`` it); else the first's outcome.

        Raises IdempotencyConflict when the key was used with another body.
        """
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise IdempotencyConflict("idempotency_key was already used with a different body")
            return entry.done
        self._entries[key] = _Entry(fingerprint, now + self.ttl_s, asyncio.get_running_loop().create_future())
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return None

    def resolve(self, key: tuple[str, str], event_id: str) -> None:
        """The owner's event was durably acknowledged: repeats now answer with ``event_id``."""
        entry = self._entries.get(key)
        if entry is not None and not entry.done.done():
            entry.done.set_result(event_id)

    def fail(self, key: tuple[str, str], exc: BaseException) -> None:
        """The owner failed: forget the key (a later retry starts afresh) and fail its waiters."""
        entry = self._entries.pop(key, None)
        if entry is not None and not entry.done.done():
            entry.done.set_exception(exc)
            entry.done.exception()  # mark retrieved: there may be no waiter at all

    def _expire(self, now: float) -> None:
        # One TTL for all: insertion order is expiry order, so expired entries sit at the front.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
