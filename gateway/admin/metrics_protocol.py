"""Bodies of ``GET /admin/metrics`` (data only; behaviour lives in metrics_service.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from deploy.canary.metrics import RatingBucket, VersionMetrics
from policies.registry_models import Version


class VersionMetricsOut(BaseModel):
    """One version's numbers from the feedback store over the window."""

    version_id: str
    status: str
    weight: float
    ratings: int = Field(description="every rating, neutral ones included")
    ups: int
    downs: int
    thumbs_up_rate: float | None = Field(description="ups / (ups + downs); null without a thumb")
    interactions: int = Field(description="answers served and stored")
    reward_n: int = Field(description="answers whose chosen candidate has a reward (best-of-n)")
    reward_mean: float | None
    blocked: int = Field(description="interactions with a safety stage that blocked")
    safety_block_rate: float | None
    latency_n: int
    latency_p99_ms: float | None

    @classmethod
    def of(cls, version: Version, m: VersionMetrics) -> VersionMetricsOut:
        return cls(
            version_id=version.id, status=version.status, weight=version.weight, ratings=m.ratings, ups=m.ups,
            downs=m.downs, thumbs_up_rate=m.thumbs_up_rate, interactions=m.interactions, reward_n=m.reward_n,
            reward_mean=m.reward_mean, blocked=m.blocked, safety_block_rate=m.safety_block_rate,
            latency_n=m.latency_n, latency_p99_ms=m.latency_p99_ms,
        )


class RatingBucketOut(BaseModel):
    """Ratings in ``[start, start + bucket_s)``."""

    start: datetime
    ratings: int
    ups: int
    downs: int
    thumbs_up_rate: float | None

    @classmethod
    def of(cls, b: RatingBucket) -> RatingBucketOut:
        return cls(start=b.start, ratings=b.ratings, ups=b.ups, downs=b.downs, thumbs_up_rate=b.thumbs_up_rate)


class VersionSeriesOut(BaseModel):
    version_id: str
    points: list[RatingBucketOut] = Field(description="buckets holding at least one rating, oldest first")


class SeriesOut(BaseModel):
    """Thumbs-up rate over time: buckets of ``bucket_s`` seconds from ``start`` to ``end``."""

    bucket_s: int
    start: datetime
    end: datetime
    data: list[VersionSeriesOut]


class MetricsOut(BaseModel):
    """``GET /admin/metrics``: every registered version's numbers since ``since`` (null: all time)."""

    object: Literal["metrics"] = "metrics"
    since: datetime | None
    until: datetime
    data: list[VersionMetricsOut]
    series: SeriesOut | None = Field(None, description="present when bucket_s is given")
