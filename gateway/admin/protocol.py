"""Request and response bodies of the operator API (data only; behaviour lives in service.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.registry import Expected
from policies.registry_models import AuditEntry, Status, Version


class Precondition(BaseModel):
    """Optional ``expected_*`` fields of a change: what the caller saw when it decided. The registry checks
    them inside the change's transaction and answers 409 ``precondition_failed`` if the version has
    changed since (e.g. an operator aborted or paused the canary while the controller was deciding)."""

    expected_status: Status | None = Field(None, description="refuse unless the version still has this status")
    expected_weight: float | None = Field(None, ge=0.0, le=1.0, description="refuse unless it still has this weight")
    expected_paused: bool | None = Field(None, description="refuse unless its canary is (not) paused")

    def expected(self) -> Expected | None:
        exp = Expected(self.expected_status, self.expected_weight, self.expected_paused)
        return exp if exp.to_dict() else None


class RegisterRequest(BaseModel):
    """``POST /admin/policies``. A lora is loaded into the shared vLLM; a full version brings its own."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lora", "full"]
    path: str = Field(min_length=1, description="adapter or checkpoint directory (or file) on the server")
    parent: str | None = Field(None, description="the version this one was trained from")
    notes: str | None = None
    endpoint: str | None = Field(None, description="base_url of the version's own vLLM server (full only)")
    served_model_name: str | None = Field(
        None, description="full only: the model name its server answers to (default: the path)"
    )


class WeightRequest(Precondition):
    """``POST /admin/policies/{id}/weight``: share of traffic for a canary, 0..1."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weight: float
    reason: str | None = None
    details: dict[str, Any] | None = Field(None, description="numbers behind the change, for the audit log")


class ServingRequest(BaseModel):
    """``POST /admin/policies/{id}/serving``: the version's serving defaults (null = the gateway's)."""

    model_config = ConfigDict(extra="forbid")

    best_of_n: int | None = Field(..., ge=1, description="candidates when a request names no best_of_n")
    reason: str | None = None


class ActionRequest(Precondition):
    """Optional body of promote / rollback / retire: why, for the audit log."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = None
    details: dict[str, Any] | None = Field(None, description="numbers behind the change, for the audit log")


class VersionOut(BaseModel):
    id: str
    object: Literal["policy_version"] = "policy_version"
    parent: str | None
    kind: str
    status: str
    weight: float
    served_model_name: str
    endpoint: str | None
    artifact_path: str
    artifact_sha256: str
    created_at: datetime
    notes: str | None
    metrics: dict[str, Any]

    @classmethod
    def of(cls, v: Version) -> VersionOut:
        return cls(
            id=v.id, parent=v.parent, kind=v.kind, status=v.status, weight=v.weight,
            served_model_name=v.served_model_name, endpoint=v.endpoint, artifact_path=v.artifact_path,
            artifact_sha256=v.artifact_sha256, created_at=v.created_at, notes=v.notes, metrics=v.metrics,
        )


class VersionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VersionOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    version_id: str
    from_state: dict[str, Any] | None
    to_state: dict[str, Any] | None
    details: dict[str, Any] | None

    @classmethod
    def of(cls, a: AuditEntry) -> AuditOut:
        return cls(
            id=a.id, at=a.at, actor=a.actor, action=a.action, version_id=a.version_id,
            from_state=a.from_state, to_state=a.to_state, details=a.details,
        )


class AuditList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditOut]
