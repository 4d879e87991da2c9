"""Load and measurement parts of `flywheel bench feedback`: rating bodies, the wrk script, store lag.

Why a pool of bodies: real ratings name many responses (so they spread over Kafka partitions); the
tokens are HMACs that Lua cannot compute, so they are minted here, written one JSON body a line, and
the wrk script cycles through them. Each POST is a new event (no idempotency key), so reusing a
body is fine. Store lag is measured where it ends: a consumer in this process whose store records,
for each rating it commits, commit time minus the event's creation time at the gateway (same host,
same clock).
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.consumer import FeedbackConsumer
from feedback.events import Feedback
from feedback.store import FeedbackStore
from feedback.tokens import FeedbackTokenSigner
from flywheel.bench.loadgen import WrkResult, lua_script, parse_wrk_output, wrk_path
from flywheel.settings import Settings

__all__ = [
    "LagRecordingStore", "RunningConsumer", "percentile", "rating_bodies", "run_wrk_pool", "wait_for",
    "write_pool_script",
]

_POOL_LUA = """
-- rating pool: each thread cycles through the pre-minted bodies, from its own starting point
local bodies = {{}}
local counter = 0
init = function(args)
  for line in io.lines({path}) do bodies[#bodies + 1] = line end
  counter = math.random(#bodies)
end
request = function()
  counter = counter % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end
"""


def rating_bodies(n: int, secret: str, users: int = 500, policy_version: str = "bench") -> list[str]:
    """``n`` valid rating bodies for distinct made-up responses, spread over ``users`` raters."""
    signer = FeedbackTokenSigner(secret, ttl_s=7 * 24 * 3600)
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        rid = f"bench-{run}-{i}"
        body = {"response_id": rid, "feedback_token": signer.issue(rid, policy_version),
                "rating": ("up", "down", 4, 0.5)[i % 4], "user": f"user-{i % users}"}  # fmt: skip
        out.append(json.dumps(body, separators=(",", ":")))
    return out


def write_pool_script(work: Path, bodies: list[str], api_key: str) -> Path:
    """The loadgen script (auth header, exact-percentile ``done()``) plus the pool's ``request()``."""
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "ratings.txt"
    pool.write_text("\n".join(bodies) + "\n")
    script = work / "feedback.lua"
    script.write_text(lua_script(bodies[0], api_key) + _POOL_LUA.format(path=json.dumps(str(pool.resolve()))))
    return script


def run_wrk_pool(url: str, script: Path, concurrency: int, duration_s: float, threads: int = 1) -> WrkResult:
    """One closed-loop wrk run with the pool script; WrkResult counts non-2xx answers as errors."""
    argv = [wrk_path(), f"-t{max(1, min(threads, concurrency))}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
            "--timeout=30s", "--latency", "-s", str(script), url]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 90, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {proc.stderr.strip() or proc.stdout[-1000:]}")
    return parse_wrk_output(proc.stdout)


class LagRecordingStore(FeedbackStore):
    """A FeedbackStore that notes, per rating, when it was created and how long after that it was committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._lags: dict[str, tuple[datetime, float]] = {}

    def apply_batch(self, events: Any) -> int:
        applied = super().apply_batch(events)
        now = datetime.now(UTC)
        with self._lock:
            for e in events:
                if isinstance(e, Feedback) and e.event_id not in self._lags:  # first commit only
                    self._lags[e.event_id] = (e.time, (now - e.time).total_seconds())
        return applied

    def take_lags(self, since: datetime | None = None) -> list[float]:
        """Lags (seconds) recorded since the last call, of ratings created at or after ``since``; forget all.
        ``since`` keeps a late rating of an earlier point out of the current one's count."""
        with self._lock:
            lags, self._lags = self._lags, {}
        return [lag for created, lag in lags.values() if since is None or created >= since]

    def seen(self, since: datetime | None = None) -> int:
        """Ratings recorded since the last ``take_lags`` (created at or after ``since``)."""
        with self._lock:
            return sum(1 for created, _ in self._lags.values() if since is None or created >= since)


class RunningConsumer:
    """FeedbackConsumer on a thread, stopped with ``close()``."""

    def __init__(self, settings: Settings, store: FeedbackStore) -> None:
        self._stop = threading.Event()
        self.consumer = FeedbackConsumer(settings, store, client_id="flywheel-bench-consumer")
        self._thread = threading.Thread(target=self.consumer.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def wait_for(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False

