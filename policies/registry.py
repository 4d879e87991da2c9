"""The policy registry: which versions exist, which one is stable, how much traffic each canary gets.

Every change runs in one transaction that first UPDATEs the single ``policy_registry_state`` row.
That statement takes the write lock on SQLite (the first write of a deferred transaction, so there is
no stale read snapshot to upgrade) and a row lock on PostgreSQL (like ``SELECT ... FOR UPDATE``), so
writers from any number of processes run one after the other and each sees the previous one's
result: two concurrent promotes cannot both win, two weight changes cannot together exceed 1.
A partial unique index on ``status = 'stable'`` backs the "exactly one stable" rule in the database.

A caller that decided on a snapshot (the canary controller, an operator's button) passes ``expected``:
what it saw. It is checked inside that same transaction, so a change made in between (an abort, a
pause, another weight) refuses the stale action (``PreconditionFailed``) instead of undoing the newer one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.db import Base, session_factory
from policies.artifacts import adapter_name, artifact_sha256, changed_error, verify_artifact
from policies.registry_models import (
    ACTIVE_STATUSES,
    REGISTRY_TABLES,
    AuditEntry,
    PolicyAuditRow,
    PolicyVersionRow,
    SERVING_KEY,
    RegistryStateRow,
    RoutingTable,
    Version,
    stable_weight,
    to_audit,
    to_entry,
    to_version,
    utcnow,
)
from policies.registry_errors import (
    InvalidArtifact,
    InvalidTransition,
    NoStableVersion,
    PreconditionFailed,
    RegistryError,
    VersionNotFound,
    WeightError,
)

SEED_ID = "seed"
_EPS = 1e-9
CANARY_PAUSED_KEY = "canary_paused"  # in a version's metrics: an operator paused its canary rollout


def _check_seed(row: PolicyVersionRow, path: Path, sha: str) -> None:
    """The registered seed must still be the bytes it was registered with. ``sha`` is the hash of the
    seed this process was given (``path``); a seed registered from another path is checked where it is,
    when this machine sees that path (a registry shared by hosts may record a path only one of them has)."""
    recorded = Path(row.artifact_path)
    actual = sha if recorded == path else artifact_sha256(recorded) if recorded.exists() else None
    if actual is not None and actual != row.artifact_sha256:
        raise changed_error("the registered seed model", recorded, actual, row.artifact_sha256,
                            "every LoRA version was trained on the old one; put the registered seed back "
                            "(same seed-model config) or start a new registry for the new seed")


def _state(row: PolicyVersionRow) -> dict[str, Any]:
    return {"status": row.status, "weight": row.weight}


@dataclass(frozen=True)
class Expected:
    """What a caller saw when it decided on a change; ``None`` fields are not checked. Checked inside the
    change's transaction, so a decision made on a snapshot cannot act on a version that changed since."""

    status: str | None = None
    weight: float | None = None
    paused: bool | None = None  # the canary's ``canary_paused`` flag (an operator's pause)

    def check(self, version_id: str, status: str, weight: float, metrics: dict[str, Any] | None) -> None:
        """Raise ``PreconditionFailed`` naming every difference between what was expected and what is."""
        paused = bool((metrics or {}).get(CANARY_PAUSED_KEY, False))
        wrong = []
        if self.status is not None and status != self.status:
            wrong.append(f"is {status}, expected {self.status}")
        if self.weight is not None and abs(weight - self.weight) > _EPS:
            wrong.append(f"has weight {weight:.4g}, expected {self.weight:.4g}")
        if self.paused is not None and paused != self.paused:
            wrong.append("is paused" if paused else "is no longer paused")
        if wrong:
            raise PreconditionFailed(f"{version_id} {' and '.join(wrong)}: it changed since the decision; refused")

    def to_dict(self) -> dict[str, Any]:
        """The non-empty fields (for the audit details and the operator API's ``expected_*`` body fields)."""
        return {k: v for k, v in (("status", self.status), ("weight", self.weight), ("paused", self.paused))
                if v is not None}  # fmt: skip


def _expect(expected: Expected | None, row: PolicyVersionRow) -> None:
    if expected is not None:
        expected.check(row.id, row.status, row.weight, row.metrics)


class PolicyRegistry:
    """Versions and their routing state, persisted through SQLAlchemy (tables created on first use)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = session_factory(engine)
        Base.metadata.create_all(engine, tables=REGISTRY_TABLES)
        with self._sessions() as session:
            if session.get(RegistryStateRow, 1) is None:
                try:
                    session.add(RegistryStateRow(id=1, revision=0, next_seq=1))
                    session.commit()
                except IntegrityError:  # another process created it first
                    session.rollback()

    # --- writes ---------------------------------------------------------------------------------
    @contextmanager
    def _change(self, *, bump: bool = True) -> Iterator[Session]:
        """A transaction that holds the registry lock from its first statement to its commit."""
        with self._sessions() as session, session.begin():
            session.execute(
                update(RegistryStateRow)
                .where(RegistryStateRow.id == 1)
                .values(revision=RegistryStateRow.revision + (1 if bump else 0))
            )
            yield session

    def _audit(
        self,
        session: Session,
        actor: str,
        action: str,
        row: PolicyVersionRow,
        before: dict[str, Any] | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            PolicyAuditRow(
                actor=actor,
                action=action,
                version_id=row.id,
                from_state=before,
                to_state=_state(row),
                details=details,
                at=utcnow(),
            )
        )

    def _row(self, session: Session, version_id: str) -> PolicyVersionRow:
        row = session.get(PolicyVersionRow, version_id)
        if row is None:
            raise VersionNotFound(f"no policy version {version_id!r}")
        return row

    def ensure_seed(self, path: str | Path, served_model_name: str, actor: str = "system") -> Version:
        """Register the seed model as the first stable if the registry is empty; else return it, after
        checking that the registered seed's files still hash to what was recorded (``ArtifactChanged``
        otherwise: a seed rebuilt in place would silently change the base every adapter was trained on)."""
        path = Path(path).resolve()
        sha = artifact_sha256(path)
        with self._change() as session:
            existing = session.get(PolicyVersionRow, SEED_ID)
            if existing is None:
                existing = session.scalars(
                    select(PolicyVersionRow).where(PolicyVersionRow.status == "stable")
                ).first()
            if existing is not None:
                if existing.kind == "base":
                    _check_seed(existing, path, sha)
                return self._to_version(session, existing)
            row = PolicyVersionRow(
                id=SEED_ID, seq=0, parent=None, kind="base", artifact_path=str(path),
                artifact_sha256=sha, endpoint=None, served_model_name=served_model_name,
                created_at=utcnow(), status="stable", weight=0.0, notes="seed model", metrics={},
            )
            session.add(row)
            session.flush()
            self._audit(session, actor, "seed", row, None)
            return self._to_version(session, row)

    def register(
        self,
        kind: str,
        path: str | Path,
        parent: str | None = None,
        notes: str | None = None,
        endpoint: str | None = None,
        actor: str = "system",
        served_model_name: str | None = None,
    ) -> Version:
        """Add a new canary at weight 0. A lora is served as ``flywheel-<id>`` (unique per version);
        a full checkpoint needs its own ``endpoint`` and is asked for ``served_model_name`` there
        (default: the path as given, which is what ``vllm serve <path>`` calls it)."""
        if kind not in ("lora", "full"):
            raise InvalidArtifact(f"kind must be 'lora' or 'full', not {kind!r}")
        if kind == "full" and not endpoint:
            raise InvalidArtifact("a 'full' version needs the endpoint of its own vLLM server")
        if kind == "lora" and (endpoint or served_model_name):
            raise InvalidArtifact("a 'lora' version is served by the shared vLLM under its own name")
        given = str(path)
        try:
            resolved = Path(path).resolve()
            sha = artifact_sha256(resolved)
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a file we may not read
            raise InvalidArtifact(f"artifact path cannot be read: {exc}") from None
        with self._change() as session:
            if parent is not None:
                self._row(session, parent)
            state = session.get_one(RegistryStateRow, 1)
            seq = state.next_seq
            state.next_seq = seq + 1
            vid = f"v{seq}"
            row = PolicyVersionRow(
                id=vid, seq=seq, parent=parent, kind=kind, artifact_path=str(resolved),
                artifact_sha256=sha, endpoint=endpoint,
                served_model_name=adapter_name(vid, sha) if kind == "lora" else (served_model_name or given),
                created_at=utcnow(), status="canary", weight=0.0, notes=notes, metrics={},
            )
            session.add(row)
            session.flush()
            self._audit(session, actor, "register", row, None, {"kind": kind, "sha256": sha})
            return self._to_version(session, row)

    def set_weight(
        self, version_id: str, weight: float, actor: str = "system", details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        """Give a canary ``weight`` of the traffic; the stable keeps whatever the canaries leave."""
        if not (0.0 <= weight <= 1.0):  # also rejects NaN
            raise WeightError(f"weight must be between 0 and 1, got {weight}")
        with self._change() as session:
            row = self._row(session, version_id)
            _expect(expected, row)
            if row.status != "canary":
                raise InvalidTransition(f"{version_id} is {row.status}; only a canary has a weight")
            others = self._canary_total(session, excluding=version_id)
            if others + weight > 1.0 + _EPS:
                raise WeightError(
                    f"canary weights would sum to {others + weight:.4g} (> 1): other canaries hold "
                    f"{others:.4g}, so {version_id} can have at most {max(0.0, 1.0 - others):.4g}"
                )
            before = _state(row)
            row.weight = float(weight)
            self._audit(session, actor, "set_weight", row, before, details)
            return self._to_version(session, row)

    def promote(
        self, version_id: str, actor: str = "system", details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        """Make a canary (or a retired / rolled-back version, to undo) the stable; the old stable
        is retired but kept, so promoting it again reverses this. ``expected`` (e.g. status canary, as
        the controller sends) refuses the promote if the version changed since the caller looked."""
        with self._change() as session:
            row = self._row(session, version_id)
            _expect(expected, row)
            if row.status not in ("canary", "retired", "rolled_back"):
                raise InvalidTransition(f"{version_id} is {row.status}; cannot promote it")
            old = session.scalars(select(PolicyVersionRow).where(PolicyVersionRow.status == "stable")).first()
            if old is not None:
                old_before = _state(old)
                old.status, old.weight = "retired", 0.0
                session.flush()  # the old stable must leave before the new one arrives (unique index)
                self._audit(session, actor, "retire", old, old_before, {"replaced_by": version_id})
            before = _state(row)
            row.status, row.weight = "stable", 0.0
            session.flush()
            previous = {"previous_stable": old.id if old is not None else None}
            self._audit(session, actor, "promote", row, before, {**previous, **(details or {})})
            return self._to_version(session, row)

    def rollback(
        self, version_id: str, actor: str = "system", details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        """Take a canary out of traffic at once (weight 0, status rolled_back)."""
        return self._end(version_id, "rolled_back", ("canary",), "rollback", actor, details, expected)

    def retire(
        self, version_id: str, actor: str = "system", details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        """Take a canary (or a rolled-back version) out for good; the stable can only be replaced."""
        return self._end(version_id, "retired", ("canary", "rolled_back"), "retire", actor, details, expected)

    def mark_failed(self, version_id: str, actor: str = "system", reason: str = "") -> Version:
        """Record that a just-registered canary could not be served (e.g. vLLM refused the adapter)."""
        return self._end(version_id, "failed", ("canary",), "fail", actor, {"reason": reason})

    def _end(
        self, version_id: str, status: str, allowed: tuple[str, ...], action: str, actor: str,
        details: dict[str, Any] | None, expected: Expected | None = None,
    ) -> Version:
        with self._change() as session:
            row = self._row(session, version_id)
            _expect(expected, row)
            if row.status not in allowed:
                hint = "; promote another version to replace it" if row.status == "stable" else ""
                raise InvalidTransition(f"{version_id} is {row.status}; cannot {action} it{hint}")
            before = _state(row)
            row.status, row.weight = status, 0.0
            self._audit(session, actor, action, row, before, details)
            return self._to_version(session, row)

    def set_serving(self, version_id: str, best_of_n: int | None, actor: str = "system",
                    details: dict[str, Any] | None = None) -> Version:
        """Per-version serving defaults (today: ``best_of_n`` when a request names none; None = the
        gateway's default). Kept in the version's JSON bag under ``serving``, so no schema change."""
        if best_of_n is not None and best_of_n < 1:
            raise RegistryError(f"best_of_n must be at least 1, got {best_of_n}")
        with self._change() as session:
            row = self._row(session, version_id)
            metrics = dict(row.metrics or {})
            before = dict(metrics.get(SERVING_KEY) or {})
            serving = {k: v for k, v in {**before, "best_of_n": best_of_n}.items() if v is not None}
            metrics[SERVING_KEY] = serving
            row.metrics = metrics
            self._audit(session, actor, "set_serving", row, _state(row),
                        {**(details or {}), "serving_from": before, "serving_to": serving})  # fmt: skip
            return self._to_version(session, row)

    def annotate(self, version_id: str, action: str, actor: str = "system", details: dict[str, Any] | None = None) -> None:
        """Audit a decision that changes no routing state (e.g. a canary paused by an operator)."""
        with self._change(bump=False) as session:
            row = self._row(session, version_id)
            self._audit(session, actor, action, row, _state(row), details)

    def update_metrics(self, version_id: str, metrics: dict[str, Any]) -> Version:
        """Merge analysis results into a version's metrics (observations, so not audited)."""
        with self._change(bump=False) as session:
            row = self._row(session, version_id)
            row.metrics = {**(row.metrics or {}), **metrics}
            return self._to_version(session, row)

    def check_artifact(self, version_id: str) -> Version:
        """The version, once its artifact on disk still hashes to the recorded sha256 (``ArtifactChanged``
        otherwise): for callers about to load it again, e.g. after a vLLM restart or to promote it back."""
        version = self.get(version_id)
        verify_artifact(version.artifact_path, version.artifact_sha256, f"the artifact of {version_id}")
        return version

    # --- reads ----------------------------------------------------------------------------------
    def get(self, version_id: str) -> Version:
        with self._sessions() as session:
            return self._to_version(session, self._row(session, version_id))

    def list(self) -> list[Version]:
        with self._sessions() as session:
            rows = session.scalars(select(PolicyVersionRow).order_by(PolicyVersionRow.seq)).all()
            return [to_version(r, stable_weight(rows)) for r in rows]

    def audit(self, limit: int = 100, version_id: str | None = None) -> list[AuditEntry]:
        """Newest first."""
        query = select(PolicyAuditRow).order_by(PolicyAuditRow.id.desc()).limit(limit)
        if version_id is not None:
            query = query.where(PolicyAuditRow.version_id == version_id)
        with self._sessions() as session:
            return [to_audit(r) for r in session.scalars(query)]

    def routing_table(self) -> RoutingTable:
        """One consistent snapshot of the stable and the canaries (one small query)."""
        with self._sessions() as session, session.begin():
            revision = session.scalar(select(RegistryStateRow.revision).where(RegistryStateRow.id == 1))
            rows = session.scalars(
                select(PolicyVersionRow)
                .where(PolicyVersionRow.status.in_(ACTIVE_STATUSES))
                .order_by(PolicyVersionRow.seq)
            ).all()
        stable = [r for r in rows if r.status == "stable"]
        if not stable:
            raise NoStableVersion("the registry has no stable version (register the seed first)")
        canaries = tuple(to_entry(r, r.weight) for r in rows if r.status == "canary")
        return RoutingTable(to_entry(stable[0], stable_weight(rows)), canaries, revision or 0)

    # --- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _canary_total(session: Session, excluding: str | None = None) -> float:
        query = select(func.coalesce(func.sum(PolicyVersionRow.weight), 0.0)).where(
            PolicyVersionRow.status == "canary", PolicyVersionRow.id != (excluding or "")
        )
        return float(session.scalar(query) or 0.0)

    def _to_version(self, session: Session, row: PolicyVersionRow) -> Version:
        share = max(0.0, 1.0 - self._canary_total(session)) if row.status == "stable" else 0.0
        return to_version(row, share)
