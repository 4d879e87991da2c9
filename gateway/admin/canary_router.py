"""Routes of the canary operator API — thin: operator key, parse, hand to CanaryService."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flywheel.settings import Settings
from gateway.admin.canary_protocol import (
    CanaryActionOut,
    CanaryActionRequest,
    CanaryAnalysisList,
)
from gateway.admin.canary_service import CanaryService
from gateway.auth import KeyRing, Principal, admin_key_guard


def build_canary_router(service: CanaryService, settings: Settings) -> APIRouter:
    """``GET /admin/canary`` and ``POST /admin/canary/{id}/pause|resume|promote|abort``."""
    operator = Depends(admin_key_guard(KeyRing.from_settings(settings)))
    router = APIRouter(prefix="/admin/canary", tags=["admin"])

    @router.get("")
    async def analysis(_: Principal = operator) -> CanaryAnalysisList:
        return CanaryAnalysisList(plan=service.analyzer.plan.to_dict(), data=await service.analysis())

    @router.post("/{version_id}/pause")
    async def pause(version_id: str, body: CanaryActionRequest | None = None,
                    who: Principal = operator) -> CanaryActionOut:  # fmt: skip
        return await service.set_paused(version_id, True, who.actor, body.reason if body else None)

    @router.post("/{version_id}/resume")
    async def resume(version_id: str, body: CanaryActionRequest | None = None,
                     who: Principal = operator) -> CanaryActionOut:  # fmt: skip
        return await service.set_paused(version_id, False, who.actor, body.reason if body else None)

    @router.post("/{version_id}/promote")
    async def promote(version_id: str, body: CanaryActionRequest | None = None,
                      who: Principal = operator) -> CanaryActionOut:  # fmt: skip
        return await service.promote(version_id, who.actor, body.reason if body else None)

    @router.post("/{version_id}/abort")
    async def abort(version_id: str, body: CanaryActionRequest | None = None,
                    who: Principal = operator) -> CanaryActionOut:  # fmt: skip
        return await service.abort(version_id, who.actor, body.reason if body else None)

    return router
