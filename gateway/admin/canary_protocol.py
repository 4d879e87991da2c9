"""Bodies of the canary part of the operator API (data only; behaviour lives in canary_service.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class CanaryActionRequest(BaseModel):
    """Optional body of pause / resume / promote / abort: why, for the audit log."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = None


class CanaryAnalysisList(BaseModel):
    """``GET /admin/canary``: the plan and one live analysis per canary (see CanaryReport.to_dict)."""

    object: Literal["list"] = "list"
    plan: dict[str, Any]
    data: list[dict[str, Any]]


class CanaryActionOut(BaseModel):
    """What a canary action did, with the version's state after it."""

    id: str
    action: Literal["pause", "resume", "promote", "abort"]
    status: str
    weight: float
    paused: bool
