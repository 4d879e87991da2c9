"""Database errors are not poison messages: only an event that fails on its own with a data error is
dead-lettered; a database that takes no writes (read-only after a failover, INSERT revoked) dead-letters
nothing and commits no offsets, and the events are stored once it takes writes again.

The end-to-end cases run the real consumer against the session broker and a real PostgreSQL whose
consumer role is read-only (``default_transaction_read_only``, then "failed over": sessions killed and
the setting reset) or lacks INSERT (then granted). The store-level cases run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DataError, IntegrityError, InternalError, OperationalError, ProgrammingError, StatementError

from feedback.consumer import FeedbackConsumer
from feedback.events import Event, Feedback, Interaction
from feedback.store import FeedbackStore, RowRejected, StoreError, _refuses_data
from feedback.store_models import FeedbackRow
from feedback.topics import ensure_topics, topics_from_settings
from flywheel.db import create_schema, make_engine
from flywheel.settings import Settings
from tests.fixtures.broker import running, wait_until


# --- classification --------------------------------------------------------------------------------
def test_only_data_errors_blame_the_row() -> None:
    orig = Exception("driver says no")
    assert _refuses_data(DataError("INSERT", {}, orig))
    assert _refuses_data(IntegrityError("INSERT", {}, orig))
    assert _refuses_data(StatementError("could not bind", "INSERT", {}, TypeError("not JSON serializable")))
    assert _refuses_data(OverflowError("Python int too large to convert to SQLite INTEGER"))
    for database_trouble in (
        OperationalError("INSERT", {}, orig),  # unreachable, locked, disk full
        InternalError("INSERT", {}, orig),  # psycopg ReadOnlySqlTransaction
        ProgrammingError("INSERT", {}, orig),  # psycopg InsufficientPrivilege, UndefinedTable
    ):
        assert not _refuses_data(database_trouble), database_trouble


# --- the store, on both backends -------------------------------------------------------------------
@pytest.fixture
def store(feedback_store: FeedbackStore) -> FeedbackStore:
    return feedback_store


def _read_only_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        return create_engine("sqlite://", creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True))
    return make_engine(database_url + "?options=-c%20default_transaction_read_only%3Don")


def test_store_tells_bad_rows_from_a_read_only_database(store: FeedbackStore, database_url: str) -> None:
    good = [Feedback.from_raw("resp-1", "up"), Interaction(response_id="resp-1")]
    too_big = Interaction.model_construct(response_id="resp-2", chosen_index=2**70)  # skips validation
    with pytest.raises(RowRejected):  # SQLite: OverflowError; PostgreSQL: DataError (integer out of range)
        store.apply_batch([*good, too_big])
    assert store.counts()["processed_events"] == 0  # one transaction: nothing of the batch went in
    store.check_writable()
    assert store.counts() == {"interactions": 0, "feedback": 0, "processed_events": 0}  # the probe rolled back

    read_only = FeedbackStore(_read_only_engine(database_url))
    try:
        with pytest.raises(StoreError):
            read_only.apply_batch(good)
        with pytest.raises(StoreError):
            read_only.check_writable()
    finally:
        read_only.engine.dispose()
    assert store.apply_batch(good) == 2


# --- the consumer's isolation logic, with a scripted store ------------------------------------------
class ScriptedStore:
    """Refuses batches holding a ``bad`` event; the probe fails unless ``writable``; ``down`` fails all."""

    def __init__(self, bad: set[str], writable: bool = True, down: bool = False) -> None:
        self.bad, self.writable, self.down = bad, writable, down
        self.applied: set[str] = set()
        self.probes = 0

    def apply_batch(self, events: list[Event]) -> int:
        if self.down:
            raise StoreError("database takes no writes now: read-only transaction")
        if any(e.event_id in self.bad for e in events):
            raise RowRejected("value too long")
        fresh = {e.event_id for e in events} - self.applied
        self.applied |= fresh
        return len(fresh)

    def check_writable(self) -> None:
        self.probes += 1
        if not self.writable:
            raise StoreError("database refuses writes: read-only transaction")


def _isolate(tmp_path: Path, store: ScriptedStore, events: list[Event]) -> tuple[int, list[tuple[Any, str]]]:
    consumer = FeedbackConsumer(Settings(var_dir=tmp_path, _env_file=None), cast(Any, store))  # type: ignore[call-arg]
    origin = {e.event_id: f"record-of-{e.response_id}" for e in events}
    poison: list[tuple[Any, str]] = []
    applied = consumer._apply(events, cast(Any, origin), poison)
    return applied, poison


def test_consumer_dead_letters_only_the_event_that_fails_alone(tmp_path: Path) -> None:
    events: list[Event] = [Feedback.from_raw(f"r{i}", "up") for i in range(3)]
    store = ScriptedStore({events[1].event_id})
    applied, poison = _isolate(tmp_path, store, events)
    assert applied == 2 and poison == [("record-of-r1", "store: value too long")]
    assert store.probes == 0  # the other events went in: the database takes writes


def test_consumer_blames_the_database_when_every_event_fails_and_the_probe_fails(tmp_path: Path) -> None:
    events: list[Event] = [Feedback.from_raw(f"r{i}", "up") for i in range(3)]
    store = ScriptedStore({e.event_id for e in events}, writable=False)
    with pytest.raises(StoreError):
        _isolate(tmp_path, store, events)
    assert store.probes == 1
    store.writable = True  # the database does take writes: then the events themselves are bad
    applied, poison = _isolate(tmp_path, store, events)
    assert applied == 0 and [rec for rec, _ in poison] == ["record-of-r0", "record-of-r1", "record-of-r2"]


def test_consumer_never_isolates_on_a_database_error(tmp_path: Path) -> None:
    store = ScriptedStore(set(), down=True)
    with pytest.raises(StoreError):
        _isolate(tmp_path, store, [Feedback.from_raw("r0", "up")])
    assert store.probes == 0


# --- end to end on PostgreSQL ----------------------------------------------------------------------
def _read_topic(bootstrap: str, topic: str, idle_s: float = 1.5) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[tuple[bytes, dict[str, bytes]]] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for recs in consumer.poll(timeout_ms=200).values():
            out.extend((r.value, dict(r.headers or [])) for r in recs)
            last = time.monotonic()
    consumer.close()
    return out


class LimitedRole:
    """A login role of this test's own on its database, whose write access the test takes and gives back."""

    def __init__(self, database_url: str, mode: str) -> None:
        self.name = f"fw_limited_{uuid.uuid4().hex[:10]}"
        self.mode = mode
        self.admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
        base, _, db = database_url.rpartition("/")
        scheme, rest = base.split("://", 1)
        self.url = f"{scheme}://{self.name}@{rest.split('@', 1)[1]}/{db}"
        grants = "SELECT" if mode == "no_insert" else "SELECT, INSERT, UPDATE"
        self._sql(f'CREATE ROLE "{self.name}" LOGIN', f'GRANT USAGE ON SCHEMA public TO "{self.name}"',
                  f'GRANT {grants} ON ALL TABLES IN SCHEMA public TO "{self.name}"')  # fmt: skip
        if mode == "no_insert":
            return
        self._sql(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{self.name}"',
                  f'ALTER ROLE "{self.name}" SET default_transaction_read_only = on')  # fmt: skip

    def _sql(self, *statements: str) -> None:
        with self.admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))

    def _kill_sessions(self) -> None:
        self._sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.name}'")

    def make_writable(self) -> None:
        if self.mode == "no_insert":
            self._sql(f'GRANT INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{self.name}"',
                      f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{self.name}"')  # fmt: skip
        else:  # a failover: the sessions on the read-only node drop, new ones land on a writable primary
            self._sql(f'ALTER ROLE "{self.name}" RESET default_transaction_read_only')
            self._kill_sessions()

    def drop(self) -> None:
        self._kill_sessions()
        self._sql(f'DROP OWNED BY "{self.name}"', f'DROP ROLE "{self.name}"')
        self.admin.dispose()


@pytest.mark.broker
@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["read_only", "no_insert"])
def test_postgres_taking_no_writes_dead_letters_nothing(
    mode: str, feedback_settings: Settings, postgres_url: str
) -> None:
    admin_engine = make_engine(postgres_url)
    create_schema(admin_engine)
    role = LimitedRole(postgres_url, mode)
    consumer_engine = make_engine(role.url)
    try:
        bootstrap = feedback_settings.effective_kafka_bootstrap
        topics = topics_from_settings(feedback_settings)
        ensure_topics(bootstrap, topics)
        producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        n = 20
        for i in range(n):
            interaction = Interaction(response_id=f"resp-{i}", candidates=[{"text": f"answer {i}", "reward": 0.5}])
            producer.send(topics.interactions, value=interaction.to_json(), key=interaction.key)
            rating = Feedback.from_raw(f"resp-{i}", "up" if i % 2 else "down")
            producer.send(topics.feedback, value=rating.to_json(), key=rating.key)
        # Valid to the event schema, refused by PostgreSQL's json type (NaN): the one true poison message.
        poison = {"schema_version": 1, "kind": "interaction", "response_id": "resp-nan", "event_id": "nan-event",
                  "candidates": [{"text": "x", "reward": math.nan}]}  # fmt: skip
        producer.send(topics.interactions, value=json.dumps(poison).encode(), key=b"resp-nan")
        producer.flush(10)
        producer.close()

        store = FeedbackStore(admin_engine)
        with running(FeedbackConsumer(feedback_settings, FeedbackStore(consumer_engine))) as runner:
            stats = runner.consumer.stats
            wait_until(lambda: stats.store_retries >= 3, 30, "the consumer to retry against the database")
            assert stats.deadlettered == 0 and stats.batches == 0
            assert store.counts() == {"interactions": 0, "feedback": 0, "processed_events": 0}
            role.make_writable()
            wait_until(lambda: store.counts()["processed_events"] == 2 * n and stats.deadlettered == 1, 30,
                       "every event stored once the database takes writes")  # fmt: skip
            time.sleep(0.5)  # anything redelivered twice would land now
        assert store.counts() == {"interactions": n, "feedback": n, "processed_events": 2 * n}
        with admin_engine.connect() as conn:
            ids = [row[0] for row in conn.execute(select(FeedbackRow.event_id))]
        assert len(ids) == len(set(ids)) == n
        dead = _read_topic(bootstrap, topics.deadletter)
        assert len(dead) == 1, [h for _, h in dead]
        body, headers = dead[0]
        assert b"resp-nan" in body and headers["flywheel-dlq-reason"].startswith(b"store:")
    finally:
        consumer_engine.dispose()
        role.drop()
        admin_engine.dispose()
