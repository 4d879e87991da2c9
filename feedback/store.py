"""The feedback store: applies event batches exactly once and answers the queries the gateway,
the exporter and the canary controller need.

Exactly-once on top of at-least-once delivery: each batch is one transaction that records every
event id in ``processed_events`` and skips ids already there, so a redelivered batch (consumer
restart, spool replay, broker restart) changes nothing. The consumer commits Kafka offsets only
after ``apply_batch`` returned.

Errors come in two kinds, because the consumer must treat them oppositely: ``StoreError`` means the
database cannot write now (unreachable, read-only after a failover, a revoked privilege, a missing
table): retry, commit nothing, dead-letter nothing. ``RowRejected`` means the database refused the
data (a value it cannot hold, a constraint): the consumer isolates the event responsible and, once
``check_writable`` shows the database takes other writes, dead-letters that event alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session

from feedback.events import Event, Feedback, Interaction
from feedback.store_models import FeedbackRow, InteractionRow, ProcessedEvent
from flywheel.db import session_factory
from flywheel.ids import random_hex128

__all__ = ["FeedbackStore", "RowRejected", "StoreError"]


class StoreError(RuntimeError):
    """The database cannot apply anything now (unreachable, read-only, no privilege): retry the batch later."""


class RowRejected(RuntimeError):
    """The database refused the batch's data, not the write as such: one of its events is to blame."""


# Why a statement failed, as the database tells it: these say "this row's values", every other DB error
# says "this database, now" (OperationalError, InternalError e.g. read-only transaction, ProgrammingError
# e.g. insufficient privilege, InterfaceError, NotSupportedError, a pool timeout).
_DATA_ERRORS: tuple[type[BaseException], ...] = (DataError, IntegrityError, ValueError, TypeError, OverflowError)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _refuses_data(exc: BaseException) -> bool:
    """True if ``exc`` blames the values written: a data/constraint error, or a value that could not be bound.

    A StatementError that is not a DBAPIError wraps an exception raised while binding parameters (e.g. a
    JSON value that cannot be serialised); bare ValueError/TypeError/OverflowError come from the driver
    (sqlite3 raises OverflowError for an integer beyond 64 bits). ``check_writable`` guards the rest.
    """
    if isinstance(exc, DBAPIError):
        return isinstance(exc, DataError | IntegrityError)
    if isinstance(exc, StatementError):
        return exc.orig is None or isinstance(exc.orig, _DATA_ERRORS)
    return isinstance(exc, _DATA_ERRORS)


class FeedbackStore:
    """Materialised view of the feedback topics in SQL (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, retries: int = 3) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)
        self._retries = retries

    # --- writing ---------------------------------------------------------------------------
    def apply_batch(self, events: Sequence[Event]) -> int:
        """Apply events in one transaction, skipping ids seen before; return how many were new.

        A concurrent writer that applies the same ids first makes the insert fail; the batch is
        then retried and those ids are skipped as seen.
        """
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        if not unique:
            return 0
        last: BaseException | None = None
        for _ in range(self._retries):
            try:
                with self._sessions.begin() as session:
                    return self._apply(session, list(unique.values()))
            except IntegrityError as exc:  # most often a concurrent writer that applied the same ids first
                last = exc
            except (SQLAlchemyError, *_DATA_ERRORS) as exc:
                if _refuses_data(exc):
                    raise RowRejected(_first_line(exc)) from exc
                raise StoreError(f"database takes no writes now: {_first_line(exc)}") from exc
        assert last is not None
        raise RowRejected(f"batch kept conflicting: {_first_line(last)}") from last

    def check_writable(self) -> None:
        """Write one probe of each row kind and roll it back; StoreError if the database refuses.

        Tells "these events are bad" from "this database takes no writes now" when every event of a
        batch failed on its own: only in the first case may the consumer dead-letter them.
        """
        probe = f"probe-{random_hex128()}"
        rows = [
            ProcessedEvent(event_id=probe, kind="probe"),
            _interaction_row(Interaction(event_id=probe, response_id=probe, policy_version="probe")),
            _feedback_row(Feedback.from_raw(probe, "up", event_id=probe, policy_version="probe")),
        ]
        try:
            with self._sessions() as session:
                try:
                    session.add_all(rows)
                    session.flush()
                finally:
                    session.rollback()
        except (SQLAlchemyError, *_DATA_ERRORS) as exc:
            raise StoreError(f"database refuses writes: {_first_line(exc)}") from exc

    def _apply(self, session: Session, events: list[Event]) -> int:
        ids = [e.event_id for e in events]
        seen = set(session.scalars(select(ProcessedEvent.event_id).where(ProcessedEvent.event_id.in_(ids))))
        fresh = [e for e in events if e.event_id not in seen]
        if not fresh:
            return 0
        keyed = {(e.response_id, e.idempotency_key) for e in fresh if isinstance(e, Feedback) and e.idempotency_key}
        repeats: set[tuple[str, str]] = set()
        if keyed:
            rows = session.execute(
                select(FeedbackRow.response_id, FeedbackRow.idempotency_key).where(
                    tuple_(FeedbackRow.response_id, FeedbackRow.idempotency_key).in_(list(keyed))
                )
            )
            repeats = {(r, k) for r, k in rows if k is not None}
        applied = 0
        for event in fresh:
            session.add(ProcessedEvent(event_id=event.event_id, kind=event.kind))
            if isinstance(event, Interaction):
                session.merge(_interaction_row(event))  # the same response logged twice: last wins
                applied += 1
            elif isinstance(event, Feedback):
                key = (event.response_id, event.idempotency_key or "")
                if event.idempotency_key and key in repeats:
                    continue  # a retried POST with the same idempotency key: recorded as processed only
                repeats.add(key)
                session.add(_feedback_row(event))
                applied += 1
        return applied

    # --- reading ---------------------------------------------------------------------------
    def get_interaction(self, response_id: str) -> dict[str, Any] | None:
        """The stored interaction with its ratings; a rating-only response yields interaction=None."""
        with self._sessions() as session:
            row = session.get(InteractionRow, response_id)
            ratings = session.scalars(
                select(FeedbackRow).where(FeedbackRow.response_id == response_id).order_by(FeedbackRow.time)
            ).all()
        if row is None and not ratings:
            return None
        return {
            "response_id": response_id,
            "interaction": _row_dict(row) if row is not None else None,
            "feedback": [_row_dict(r) for r in ratings],
        }

    def counts(self) -> dict[str, int]:
        with self._sessions() as session:
            return {
                "interactions": session.scalar(select(func.count()).select_from(InteractionRow)) or 0,
                "feedback": session.scalar(select(func.count()).select_from(FeedbackRow)) or 0,
                "processed_events": session.scalar(select(func.count()).select_from(ProcessedEvent)) or 0,
            }

    def processed_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of these event ids are already applied (tests and replay audits)."""
        wanted = list(ids)
        with self._sessions() as session:
            return set(session.scalars(select(ProcessedEvent.event_id).where(ProcessedEvent.event_id.in_(wanted))))


def _interaction_row(e: Interaction) -> InteractionRow:
    return InteractionRow(
        response_id=e.response_id,
        event_id=e.event_id,
        time=e.time,
        policy_version=e.policy_version,
        messages=[m.model_dump() for m in e.messages],
        candidates=[c.model_dump() for c in e.candidates],
        chosen_index=e.chosen_index,
        grounding_doc_ids=list(e.grounding_doc_ids),
        safety=list(e.safety),
        latency_ms=e.latency_ms,
        trace_id=e.trace_id,
        user_hash=e.user_hash,
        schema_version=e.schema_version,
    )


def _feedback_row(e: Feedback) -> FeedbackRow:
    return FeedbackRow(
        event_id=e.event_id,
        response_id=e.response_id,
        policy_version=e.policy_version,
        rating=e.rating,
        rating_raw=e.rating_raw,
        comment=e.comment,
        time=e.time,
        user_hash=e.user_hash,
        idempotency_key=e.idempotency_key,
        schema_version=e.schema_version,
    )


def _row_dict(row: object) -> dict[str, Any]:
    table = row.__table__  # type: ignore[attr-defined]
    out = {c.name: getattr(row, c.name) for c in table.columns}
    for key, value in out.items():
        if hasattr(value, "isoformat"):
            out[key] = value.isoformat()
    return out
