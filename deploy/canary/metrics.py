"""Per-version metrics over a window (since a canary step started), from the store and the gateways.

From the feedback store (SQL through SQLAlchemy, SQLite or PostgreSQL): ratings, the latest per
(response, rater) as in the preference export (up = rating > 0, down = rating < 0; a neutral 0 counts
as a rating but neither), mean reward of served answers (the
chosen candidate's reward, when best-of-n scored it), safety-block rate (interactions with any
stage whose action was ``block``), p99 latency (``latency_ms``). ``rating_series`` buckets the ratings
over time for the operator dashboard (``GET /admin/metrics``).

Error rate comes from the gateways' Prometheus ``/metrics`` (``canary_gateway_metrics_urls``: fixed
URLs, or ``dns+`` names standing for every pod of a headless Service; combined over processes by
:class:`GatewayCounters`): a version's attempts are ``flywheel_requests_total`` plus
``flywheel_canary_fallbacks_total`` (a failed canary call is retried on stable and counted there),
its failures ``flywheel_errors_total``. Counters are cumulative per process, so the controller keeps
a baseline per step and uses the difference (a version's attempts or errors below their baseline mean
the counting restarted: both are then taken as they are now, never one reset and one not). The store
records served answers only, never failed calls, so without gateway URLs the error rate is
``unavailable`` and not judged. A page that cannot be read, or is not Prometheus text (a URL missing
``/metrics`` answers HTML), counts as unreadable for that read; the others are still used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from deploy.canary.targets import expand
from feedback.store_models import FeedbackRow, InteractionRow
from flywheel.db import session_factory
from policies.registry_models import aware

log = logging.getLogger(__name__)
Counters = dict[str, list[float]]  # version -> [attempts, errors]


@dataclass(frozen=True)
class VersionMetrics:
    """One version's numbers over one window (JSON-able for the audit log)."""

    version_id: str
    since: str
    ratings: int = 0
    ups: int = 0
    downs: int = 0
    interactions: int = 0
    reward_n: int = 0
    reward_mean: float | None = None
    reward_var: float | None = None
    blocked: int = 0
    latency_n: int = 0
    latency_p99_ms: float | None = None
    attempts: int | None = None
    errors: int | None = None

    @property
    def thumbs_up_rate(self) -> float | None:
        return self.ups / (self.ups + self.downs) if self.ups + self.downs else None

    @property
    def safety_block_rate(self) -> float | None:
        return self.blocked / self.interactions if self.interactions else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.attempts if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(thumbs_up_rate=self.thumbs_up_rate, safety_block_rate=self.safety_block_rate,
                   error_rate=self.error_rate)  # fmt: skip
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


@dataclass(frozen=True)
class RatingBucket:
    """One version's ratings in one time bucket: ``[start, start + bucket_s)``."""

    start: datetime
    ratings: int = 0
    ups: int = 0
    downs: int = 0

    @property
    def thumbs_up_rate(self) -> float | None:
        return self.ups / (self.ups + self.downs) if self.ups + self.downs else None


def p99(values: list[float]) -> float | None:
    """Nearest-rank 99th percentile (no interpolation: an observed latency)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def latest_per_rater(rows: Iterable[tuple[str, str | None, float]]) -> list[float]:
    """One rating per (response, rater): the last of ``(response_id, user_hash, rating)`` rows in time
    order, as the preference export counts them. A rater who re-clicks thumbs down ten times weighs
    like one rater in the canary's thumbs-up rate, not ten."""
    latest: dict[tuple[str, str | None], float] = {}
    for response_id, user_hash, rating in rows:
        latest[(response_id, user_hash)] = rating
    return list(latest.values())


def _blocked(safety: list[dict[str, Any]] | None) -> bool:
    return any(isinstance(stage, dict) and stage.get("action") == "block" for stage in safety or [])


def _chosen_reward(candidates: list[dict[str, Any]] | None, chosen: int) -> float | None:
    if not candidates or not 0 <= chosen < len(candidates):
        return None
    reward = candidates[chosen].get("reward")
    return float(reward) if isinstance(reward, int | float) else None


class StoreMetrics:
    """Reads a version's window from the feedback store's ``interactions`` and ``feedback`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def read(self, version_id: str, since: datetime, counters: tuple[int, int] | None = None) -> VersionMetrics:
        with self._sessions() as session:
            rated = session.execute(
                select(FeedbackRow.response_id, FeedbackRow.user_hash, FeedbackRow.rating)
                .where(FeedbackRow.policy_version == version_id, FeedbackRow.time >= since)
                .order_by(FeedbackRow.time, FeedbackRow.id)
            ).all()  # fmt: skip
            rows = session.execute(
                select(InteractionRow.candidates, InteractionRow.chosen_index, InteractionRow.safety,
                       InteractionRow.latency_ms)
                .where(InteractionRow.policy_version == version_id, InteractionRow.time >= since)
            ).all()  # fmt: skip
        ratings = latest_per_rater(rated)
        rewards = [r for r in (_chosen_reward(c, i) for c, i, _, _ in rows) if r is not None]
        latencies = [float(ms) for _, _, _, ms in rows if ms is not None]
        mean = sum(rewards) / len(rewards) if rewards else None
        var = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) if mean is not None and len(rewards) > 1 else None
        return VersionMetrics(
            version_id=version_id, since=since.isoformat(), ratings=len(ratings),
            ups=sum(1 for r in ratings if r > 0), downs=sum(1 for r in ratings if r < 0),
            interactions=len(rows), reward_n=len(rewards), reward_mean=mean, reward_var=var,
            blocked=sum(1 for _, _, s, _ in rows if _blocked(s)),
            latency_n=len(latencies), latency_p99_ms=p99(latencies),
            attempts=counters[0] if counters else None, errors=counters[1] if counters else None,
        )

    def rating_series(self, since: datetime, bucket_s: float, until: datetime) -> dict[str, list[RatingBucket]]:
        """Ratings per version in buckets of ``bucket_s`` seconds from ``since`` (the first bucket's
        start) to ``until``; only buckets holding a rating are returned, oldest first."""
        with self._sessions() as session:
            rows = session.execute(
                select(FeedbackRow.policy_version, FeedbackRow.time, FeedbackRow.rating)
                .where(FeedbackRow.time >= since, FeedbackRow.time < until, FeedbackRow.policy_version.is_not(None))
            ).all()  # fmt: skip
        counts: dict[str, dict[int, list[int]]] = {}  # version -> bucket index -> [ratings, ups, downs]
        for version, at, rating in rows:
            index = int((aware(at) - since).total_seconds() // bucket_s)
            slot = counts.setdefault(version, {}).setdefault(index, [0, 0, 0])
            slot[0] += 1
            slot[1] += rating > 0
            slot[2] += rating < 0
        return {
            version: [RatingBucket(since + timedelta(seconds=i * bucket_s), *buckets[i]) for i in sorted(buckets)]
            for version, buckets in counts.items()
        }


class GatewayCounters:
    """Request and error counters per version over the gateways' ``/metrics`` pages, as one cumulative
    counter that never goes backwards while the set of gateway processes changes.

    ``urls`` are fixed URLs or ``dns+http://name:port/metrics`` names that stand for every pod behind a
    headless Service (:mod:`deploy.canary.targets`), re-resolved on every read. Each process's counters
    are cumulative since *it* started, so a plain sum drops when a pod goes away and jumps when one
    arrives. Instead each read adds, per target, what its counters grew by since this object last read
    it (all of it for a target seen for the first time; its current value when it is below the last
    one, i.e. it restarted). A pod that leaves keeps what it contributed, and a target that cannot be
    read this time is skipped and caught up with on the next read. What a pod counted between its last
    read and its end is lost, so keep reads frequent (the controller reads every analysis).
    """

    def __init__(self, urls: list[str], timeout_s: float = 5.0) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self._last: dict[str, Counters] = {}  # per target URL: its counters at the last read
        self._totals: Counters = {}
        self.unreadable: dict[str, str] = {}  # target URL -> why it could not be read, at the last read

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def read(self) -> Counters | None:
        """Cumulative counters; None when unconfigured or when no target could be read at all."""
        if not self.urls:
            return None
        read_any = False
        self.unreadable = {}
        for target in expand(self.urls):
            current = self._scrape(target)
            if current is None:
                continue
            read_any = True
            last = self._last.get(target, {})
            for version, values in current.items():
                before = last.get(version, [0.0, 0.0])
                total = self._totals.setdefault(version, [0.0, 0.0])
                for slot in (0, 1):
                    total[slot] += values[slot] - before[slot] if values[slot] >= before[slot] else values[slot]
            self._last[target] = current
        if not read_any:
            return None
        return {version: list(values) for version, values in self._totals.items()}

    def _scrape(self, url: str) -> Counters | None:
        """One target's counters; None (and a warning naming the URL) when it cannot be read or parsed."""
        totals: Counters = {}
        try:
            text = httpx.get(url, timeout=self.timeout_s).raise_for_status().text
            for family in text_string_to_metric_families(text):  # lazy: parse errors surface while iterating
                for sample in family.samples:
                    slot = {"flywheel_requests_total": 0, "flywheel_canary_fallbacks_total": 0,
                            "flywheel_errors_total": 1}.get(sample.name)  # fmt: skip
                    version = sample.labels.get("policy_version")
                    if slot is not None and version:
                        totals.setdefault(version, [0.0, 0.0])[slot] += sample.value
        except httpx.HTTPError as exc:
            return self._unreadable(url, f"{type(exc).__name__}: {exc}")
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # the parser's errors on non-Prometheus text
            return self._unreadable(url, f"not Prometheus text ({exc})"[:200])
        return totals

    def _unreadable(self, url: str, why: str) -> None:
        self.unreadable[url] = why
        log.warning("gateway metrics %s unreadable: %s", url, why)
        return None


def since_baseline(current: Counters | None, baseline: Counters, version_id: str) -> tuple[int, int] | None:
    """Attempts and errors of one version since the baseline. The two are one count of one version, so a
    reset is decided for the pair: if either is below its baseline, both restarted and count from 0
    (deciding per counter would pair errors since a restart with attempts since the baseline)."""
    if current is None:
        return None
    now = current.get(version_id, [0.0, 0.0])
    base = baseline.get(version_id, [0.0, 0.0])
    reset = now[0] < base[0] or now[1] < base[1]
    attempts, errors = (now[0], now[1]) if reset else (now[0] - base[0], now[1] - base[1])
    attempts_i = round(max(attempts, errors))
    return attempts_i, round(min(errors, attempts_i))
