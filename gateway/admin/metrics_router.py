"""Route of the per-version metrics — thin: operator key, parse, hand to MetricsService."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query

from flywheel.settings import Settings
from gateway.admin.metrics_protocol import MetricsOut
from gateway.admin.metrics_service import MetricsService
from gateway.auth import KeyRing, Principal, admin_key_guard

MAX_BUCKET_S = 7 * 24 * 3600


def build_metrics_router(service: MetricsService, settings: Settings) -> APIRouter:
    """``GET /admin/metrics?since=&bucket_s=&buckets=``."""
    operator = Depends(admin_key_guard(KeyRing.from_settings(settings)))
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/metrics")
    async def metrics(
        since: datetime | None = Query(None, description="ISO time (UTC when no zone is given); default all time"),
        bucket_s: int | None = Query(None, ge=1, le=MAX_BUCKET_S, description="add a series in buckets this long"),
        buckets: int = Query(60, ge=1, le=1000, description="how many buckets the series covers, ending now"),
        _: Principal = operator,
    ) -> MetricsOut:
        return await service.metrics(since, bucket_s, buckets)

    return router
