"""The policy registry's tables and the immutable snapshots the rest of the code sees.

Rows (``PolicyVersionRow``, ``PolicyAuditRow``, ``RegistryStateRow``) never leave ``policies.registry``;
callers get frozen dataclasses (``Version``, ``AuditEntry``, ``RoutingTable``) so that a snapshot
cannot change under a request and cannot be written back by accident.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from flywheel.db import Base

Kind = Literal["base", "lora", "full"]
Status = Literal["stable", "canary", "retired", "rolled_back", "failed"]
ACTIVE_STATUSES: tuple[str, ...] = ("stable", "canary")


def utcnow() -> datetime:
    return datetime.now(UTC)


class PolicyVersionRow(Base):
    """One policy version. ``seq`` orders versions by registration and names them (``v<seq>``)."""

    __tablename__ = "policy_versions"
    __table_args__ = (
        # Database-level backstop for the "exactly one stable" invariant: a partial unique index
        # (both SQLite and PostgreSQL support it) makes a second stable row impossible to commit.
        Index(
            "uq_policy_versions_one_stable",
            "status",
            unique=True,
            sqlite_where=text("status = 'stable'"),
            postgresql_where=text("status = 'stable'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    parent: Mapped[str | None] = mapped_column(String(32), nullable=True)
    kind: Mapped[str] = mapped_column(String(8))
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    served_model_name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), index=True)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PolicyAuditRow(Base):
    """One change to the registry: who, when, what, and the state before and after."""

    __tablename__ = "policy_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    version_id: Mapped[str] = mapped_column(String(32), index=True)
    from_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    to_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class RegistryStateRow(Base):
    """A single row that every writer updates first: the lock that serialises registry changes.

    ``revision`` counts routing-relevant changes; ``next_seq`` hands out version numbers.
    """

    __tablename__ = "policy_registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    next_seq: Mapped[int] = mapped_column(Integer, default=1)


REGISTRY_TABLES = [PolicyVersionRow.__table__, PolicyAuditRow.__table__, RegistryStateRow.__table__]


def aware(moment: datetime) -> datetime:
    """SQLite drops the zone of a stored datetime; every value we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Version:
    """A registered policy version as callers see it (``weight`` of the stable is the remainder)."""

    id: str
    parent: str | None
    kind: str
    artifact_path: str
    artifact_sha256: str
    endpoint: str | None
    served_model_name: str
    created_at: datetime
    status: str
    weight: float
    notes: str | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    version_id: str
    from_state: dict[str, Any] | None
    to_state: dict[str, Any] | None
    details: dict[str, Any] | None


@dataclass(frozen=True)
class RouteEntry:
    """Where a request for one version goes. ``endpoint`` None means the shared vLLM server.

    ``seq`` is the registration order; the splitter uses it to give each canary a fixed lane.
    """

    version_id: str
    served_model_name: str
    endpoint: str | None
    status: str
    weight: float
    seq: int = 0
    best_of_n: int | None = None  # the version's default when a request names none
    created: int = 0  # registration time, Unix seconds (GET /v1/models reports it as OpenAI's ``created``)


@dataclass(frozen=True)
class RoutingTable:
    """A consistent snapshot of who gets traffic: one stable plus canaries in registration order."""

    stable: RouteEntry
    canaries: tuple[RouteEntry, ...] = ()
    revision: int = 0

    def entries(self) -> tuple[RouteEntry, ...]:
        return (self.stable, *self.canaries)

    def find(self, name: str) -> RouteEntry | None:
        """The entry whose version id, else whose served model name, is ``name`` (clients may pin either).

        Ids first: the seed's id and the name vLLM serves it under are both "seed" by default."""
        entries = self.entries()
        return next((e for e in entries if e.version_id == name), None) or next(
            (e for e in entries if e.served_model_name == name), None
        )


# --- rows to snapshots --------------------------------------------------------------------------
def stable_weight(rows: Iterable[PolicyVersionRow]) -> float:
    """The stable's share: whatever the canaries leave."""
    return max(0.0, 1.0 - sum(r.weight for r in rows if r.status == "canary"))


def to_version(row: PolicyVersionRow, stable_share: float) -> Version:
    return Version(
        id=row.id, parent=row.parent, kind=row.kind, artifact_path=row.artifact_path,
        artifact_sha256=row.artifact_sha256, endpoint=row.endpoint,
        served_model_name=row.served_model_name, created_at=aware(row.created_at), status=row.status,
        weight=stable_share if row.status == "stable" else row.weight, notes=row.notes,
        metrics=dict(row.metrics or {}),
    )


SERVING_KEY = "serving"  # per-version serving defaults inside ``metrics`` (see PolicyRegistry.set_serving)


def to_entry(row: PolicyVersionRow, weight: float) -> RouteEntry:
    serving = (row.metrics or {}).get(SERVING_KEY) or {}
    return RouteEntry(
        version_id=row.id, served_model_name=row.served_model_name, endpoint=row.endpoint,
        status=row.status, weight=weight, seq=row.seq, best_of_n=serving.get("best_of_n"),
        created=int(aware(row.created_at).timestamp()),
    )


def to_audit(row: PolicyAuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id, at=aware(row.at), actor=row.actor, action=row.action, version_id=row.version_id,
        from_state=row.from_state, to_state=row.to_state, details=row.details,
    )
