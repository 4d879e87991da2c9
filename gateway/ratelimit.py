"""Per-caller token buckets: a burst is fine, a flood from one caller is a 429.

Used twice: per (chat key, user or session) for ratings (``gateway/feedback``) and per chat key for
chat completions (``gateway/chat``). In-process and per gateway process on purpose: the limit protects
this process's vLLM and broker paths and makes data poisoning slow; the export's per-user cap is what
bounds any one user's influence on a dataset, however many gateways they spread ratings over. Buckets
live in an LRU dict so that a stream of distinct keys costs bounded memory (an evicted bucket just
starts full again). Hand-written (40 lines) because the libraries for this (``limits``, ``slowapi``)
are synchronous or storage-backed and add a lock or a round trip to the chat hot path.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenBucketLimiter", "retry_after"]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBucketLimiter:
    """``rate`` tokens per second refill up to ``burst``; each request takes one."""

    def __init__(
        self, rate_per_s: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, int(wait_s + 0.999)))
