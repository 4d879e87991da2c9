"""Tables of the feedback store, on the shared declarative Base.

No foreign key from feedback to interactions: a rating can be consumed before its interaction (two
topics, two partitions, a replayed spool), and the store must accept it rather than reject it.
``processed_events`` is the dedupe ledger that makes at-least-once delivery apply each event once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from flywheel.db import Base

__all__ = ["FeedbackRow", "InteractionRow", "ProcessedEvent"]


class InteractionRow(Base):
    """One served response: the redacted conversation, candidates with rewards, the pick."""

    __tablename__ = "interactions"

    response_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    policy_version: Mapped[str | None] = mapped_column(String(128), index=True)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    chosen_index: Mapped[int] = mapped_column(Integer, default=0)
    grounding_doc_ids: Mapped[list[str]] = mapped_column(JSON)
    safety: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    trace_id: Mapped[str | None] = mapped_column(String(64))
    user_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    schema_version: Mapped[int] = mapped_column(Integer)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FeedbackRow(Base):
    """One rating on the [-1, 1] scale, with what the user actually sent in ``rating_raw``."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("response_id", "idempotency_key", name="uq_feedback_idempotency"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    response_id: Mapped[str] = mapped_column(String(128), index=True)
    policy_version: Mapped[str | None] = mapped_column(String(128), index=True)
    rating: Mapped[float] = mapped_column(Float)
    rating_raw: Mapped[Any] = mapped_column(JSON)
    comment: Mapped[str | None] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user_hash: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    schema_version: Mapped[int] = mapped_column(Integer)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProcessedEvent(Base):
    """Every event id ever applied (or deliberately skipped as an idempotent repeat)."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
