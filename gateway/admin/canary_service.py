"""Behind ``/admin/canary``: the live analysis, and the operator's pause, resume, promote and abort.

Pause and resume write ``canary_paused`` into the version's metrics (the controller, in another
process, reads it on its next tick) and are audited with the analysis at that moment. Force-promote
and abort go through AdminService, so adapters are handled exactly as for ``/admin/policies``, with
"still a canary" as a precondition checked inside the registry's transaction: the status check at the
start of the request alone would let a canary aborted meanwhile (by the controller or another
operator) be promoted from ``rolled_back``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from deploy.canary.live import CanaryAnalyzer
from deploy.canary.state import PAUSED_KEY
from gateway.admin.canary_protocol import CanaryActionOut
from gateway.admin.service import AdminService, _api_error
from gateway.errors import Conflict
from policies.registry import Expected
from policies.registry_errors import RegistryError
from policies.registry_models import Version


class CanaryService:
    def __init__(self, admin: AdminService, analyzer: CanaryAnalyzer) -> None:
        self.admin = admin
        self.analyzer = analyzer
        self.registry = analyzer.registry

    async def analysis(self) -> list[dict[str, Any]]:
        reports = await asyncio.to_thread(self.analyzer.reports)
        return [r.to_dict(self.analyzer.plan) for r in reports]

    async def _canary(self, version_id: str) -> Version:
        try:
            version = await asyncio.to_thread(self.registry.get, version_id)
        except RegistryError as exc:
            raise _api_error(exc) from None
        if version.status != "canary":
            raise Conflict(f"{version_id} is {version.status}, not a canary", code="not_a_canary")
        return version

    async def _numbers(self, version_id: str) -> dict[str, Any]:
        """The analysis of one canary at this moment (for the audit record of an operator action)."""
        for report in await self.analysis():
            if report["version_id"] == version_id:
                return report
        return {}

    def _out(self, action: str, v: Version) -> CanaryActionOut:
        return CanaryActionOut(id=v.id, action=action, status=v.status, weight=v.weight,  # type: ignore[arg-type]
                               paused=bool(v.metrics.get(PAUSED_KEY, False)))  # fmt: skip

    async def set_paused(self, version_id: str, paused: bool, actor: str, reason: str | None) -> CanaryActionOut:
        await self._canary(version_id)
        details = {"canary_action": "pause" if paused else "resume", "reason": reason, **await self._numbers(version_id)}
        try:
            version = await asyncio.to_thread(self.registry.update_metrics, version_id, {PAUSED_KEY: paused})
            action = "canary_pause" if paused else "canary_resume"
            await asyncio.to_thread(self.registry.annotate, version_id, action, actor, details)
        except RegistryError as exc:
            raise _api_error(exc) from None
        return self._out("pause" if paused else "resume", version)

    async def promote(self, version_id: str, actor: str, reason: str | None) -> CanaryActionOut:
        await self._canary(version_id)
        details = {"canary_action": "force_promote", **await self._numbers(version_id)}
        version = await self.admin.promote(version_id, actor, reason or "canary: forced by an operator", details,
                                           expected=Expected(status="canary"))  # fmt: skip
        return self._out("promote", version)

    async def abort(self, version_id: str, actor: str, reason: str | None) -> CanaryActionOut:
        await self._canary(version_id)
        details = {"canary_action": "abort", **await self._numbers(version_id)}
        version = await self.admin.rollback(version_id, actor, reason or "canary: aborted by an operator", details,
                                            expected=Expected(status="canary"))  # fmt: skip
        return self._out("abort", version)
