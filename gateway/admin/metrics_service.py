"""Behind ``/admin/metrics``: per-version numbers from the feedback store, for the dashboard.

Reads only, through ``deploy.canary.metrics.StoreMetrics`` (the same numbers the canary analysis
judges), for every version in the registry. The optional series buckets the ratings over time: it
covers the last ``buckets`` buckets before now, or fewer when ``since`` is later than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from deploy.canary.metrics import StoreMetrics
from gateway.admin.metrics_protocol import (
    MetricsOut,
    RatingBucketOut,
    SeriesOut,
    VersionMetricsOut,
    VersionSeriesOut,
)
from policies.registry import PolicyRegistry
from policies.registry_models import aware, utcnow

ALL_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class MetricsService:
    def __init__(self, registry: PolicyRegistry, store: StoreMetrics, clock: Callable[[], datetime] = utcnow) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock

    async def metrics(self, since: datetime | None, bucket_s: int | None = None, buckets: int = 60) -> MetricsOut:
        return await asyncio.to_thread(self._read, aware(since) if since else None, bucket_s, buckets)

    def _read(self, since: datetime | None, bucket_s: int | None, buckets: int) -> MetricsOut:
        until = self.clock()
        versions = self.registry.list()
        data = [VersionMetricsOut.of(v, self.store.read(v.id, since or ALL_TIME)) for v in versions]
        series = None
        if bucket_s is not None:
            start = until - timedelta(seconds=bucket_s * buckets)
            if since is not None and since > start:
                start = since
            points = self.store.rating_series(start, bucket_s, until)
            series = SeriesOut(bucket_s=bucket_s, start=start, end=until, data=[
                VersionSeriesOut(version_id=v.id, points=[RatingBucketOut.of(b) for b in points.get(v.id, [])])
                for v in versions
            ])  # fmt: skip
        return MetricsOut(since=since, until=until, data=data, series=series)
