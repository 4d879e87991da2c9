"""Routes of the operator API — thin: authenticate (operator key), parse, hand to AdminService."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from flywheel.settings import Settings
from gateway.admin.protocol import (
    ActionRequest,
    AuditList,
    AuditOut,
    RegisterRequest,
    ServingRequest,
    VersionList,
    VersionOut,
    WeightRequest,
)
from gateway.admin.service import AdminService
from gateway.auth import KeyRing, Principal, admin_key_guard


def build_admin_router(service: AdminService, settings: Settings) -> APIRouter:
    """Every route requires an operator key; the key's fingerprint is the audit actor."""
    operator = Depends(admin_key_guard(KeyRing.from_settings(settings)))
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/policies")
    async def list_policies(_: Principal = operator) -> VersionList:
        return VersionList(data=[VersionOut.of(v) for v in await service.list_versions()])

    @router.post("/policies", status_code=201)
    async def register_policy(body: RegisterRequest, who: Principal = operator) -> VersionOut:
        version = await service.register(
            body.kind, body.path, who.actor, parent=body.parent, notes=body.notes,
            endpoint=body.endpoint, served_model_name=body.served_model_name,
        )
        return VersionOut.of(version)

    @router.post("/policies/{version_id}/weight")
    async def set_weight(version_id: str, body: WeightRequest, who: Principal = operator) -> VersionOut:
        return VersionOut.of(await service.set_weight(version_id, body.weight, who.actor, body.reason, body.details,
                                                      expected=body.expected()))

    @router.post("/policies/{version_id}/serving")
    async def set_serving(version_id: str, body: ServingRequest, who: Principal = operator) -> VersionOut:
        return VersionOut.of(await service.set_serving(version_id, body.best_of_n, who.actor, body.reason))

    @router.post("/policies/{version_id}/promote")
    async def promote(
        version_id: str, body: ActionRequest | None = None, who: Principal = operator
    ) -> VersionOut:
        return VersionOut.of(
            await service.promote(version_id, who.actor, body.reason if body else None, body.details if body else None,
                                 expected=body.expected() if body else None)
        )

    @router.post("/policies/{version_id}/rollback")
    async def rollback(
        version_id: str, body: ActionRequest | None = None, who: Principal = operator
    ) -> VersionOut:
        return VersionOut.of(
            await service.rollback(version_id, who.actor, body.reason if body else None, body.details if body else None,
                                 expected=body.expected() if body else None)
        )

    @router.post("/policies/{version_id}/retire")
    async def retire(
        version_id: str, body: ActionRequest | None = None, who: Principal = operator
    ) -> VersionOut:
        return VersionOut.of(
            await service.retire(version_id, who.actor, body.reason if body else None, body.details if body else None,
                                 expected=body.expected() if body else None)
        )

    @router.get("/audit")
    async def audit(limit: int = Query(100, ge=1, le=1000), _: Principal = operator) -> AuditList:
        return AuditList(data=[AuditOut.of(a) for a in await service.audit(limit)])

    return router
