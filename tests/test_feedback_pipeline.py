"""Producer → real broker → consumer → real store, including the outages the design promises to survive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import Engine, select

import feedback.store_models as models
from deploy.broker import EmbeddedBroker
from feedback.consumer import FeedbackConsumer
from feedback.events import Feedback, Interaction, hash_user
from feedback.producer import EventProducer
from feedback.store import FeedbackStore
from feedback.topics import ensure_topics, topics_from_settings
from flywheel.db import create_schema, make_engine
from flywheel.procs import free_port
from flywheel.settings import Settings
from tests.fixtures.broker import feedback_settings_for, running, wait_caught_up, wait_until

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parent.parent
PII = {
    "email": "alice.smith@example.com",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
    "key": "sk-proj-ABCDEFGHIJKLMNOPQRSTUV123456",
}
PII_NEEDLES = ["alice.smith", "7946 0958", "4111 1111", "ABCDEFGHIJKLMNOP"]


@pytest.fixture
def store_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def _interaction(i: int, settings: Settings, text: str = "hello") -> Interaction:
    return Interaction(
        response_id=f"resp-{i}",
        policy_version="v1",
        messages=[{"role": "user", "content": f"{text} #{i}"}],
        candidates=[{"text": f"answer {i}", "reward": 0.5}, {"text": f"alt {i}", "reward": 0.1}],
        chosen_index=0,
        latency_ms=12.5,
        user_hash=hash_user(f"user-{i % 7}", settings.user_hash_salt),
    )


def _rating(i: int, comment: str | None = None) -> Feedback:
    return Feedback.from_raw(f"resp-{i}", "up" if i % 2 else "down", policy_version="v1", comment=comment)


def _setup(settings: Settings, engine: Engine) -> FeedbackStore:
    ensure_topics(settings.effective_kafka_bootstrap, topics_from_settings(settings))
    return FeedbackStore(engine)


def _wait_caught_up(settings: Settings) -> None:
    """Until the consumer group has committed every record in its topics (each one applied by then)."""
    topics = topics_from_settings(settings).inputs
    wait_caught_up(settings.effective_kafka_bootstrap, settings.consumer_group, topics, 60)


def _read_topic(bootstrap: str, topic: str, idle_s: float = 1.5) -> list[tuple[int, bytes, list]]:
    """Every record of a topic as (partition, value, headers), per partition in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[tuple[int, bytes, list]] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for tp, recs in consumer.poll(timeout_ms=200).items():
            out.extend((tp.partition, r.value, list(r.headers or [])) for r in recs)
            last = time.monotonic()
    consumer.close()
    return out


def test_roundtrip_store_and_pii(feedback_settings: Settings, store_engine: Engine) -> None:
    """Events reach the store once; planted PII is in no Kafka record and no store row."""
    store = _setup(feedback_settings, store_engine)
    producer = EventProducer(feedback_settings)
    assert producer.wait_connected(10)
    n = 100
    secret_text = " ".join(PII.values())
    for i in range(n):
        producer.log(_interaction(i, feedback_settings, text=f"my details {secret_text}"))
    for i in range(0, n, 2):
        producer.send_durable(_rating(i, comment=f"reach me at {PII['email']} or {PII['phone']}"))
    producer.send_durable(Feedback.from_raw("resp-0", 4, idempotency_key="retry-1"))
    producer.send_durable(Feedback.from_raw("resp-0", 4, idempotency_key="retry-1"))  # a retried POST
    assert producer.wait_drained(15)
    with running(FeedbackConsumer(feedback_settings, store)) as runner:
        wait_until(lambda: store.counts()["processed_events"] == n + n // 2 + 2, 30, "all events applied")
        wait_until(lambda: runner.consumer.stats.batches > 0 and runner.consumer.stats.lag != {}, 10, "stats")
        time.sleep(0.5)
        assert runner.consumer.stats.applied == n + n // 2 + 1  # the retried POST is not applied twice
        assert runner.consumer.metrics.registry.get_sample_value(
            "flywheel_consumer_events_total", {"topic": "all", "outcome": "applied"}
        ) == n + n // 2 + 1
        assert all(lag == 0 for lag in runner.consumer.stats.lag.values())
    counts = store.counts()
    assert counts == {"interactions": n, "feedback": n // 2 + 1, "processed_events": n + n // 2 + 2}
    stored = store.get_interaction("resp-0")
    assert stored is not None and stored["interaction"]["candidates"][0]["reward"] == 0.5
    assert sorted(f["rating"] for f in stored["feedback"]) == [-1.0, 0.5]
    assert {f["rating_raw"] for f in stored["feedback"]} == {"down", 4}

    wire = _read_topic(feedback_settings.effective_kafka_bootstrap, feedback_settings.topic_interactions)
    wire += _read_topic(feedback_settings.effective_kafka_bootstrap, feedback_settings.topic_feedback)
    assert len(wire) >= n + n // 2 + 2
    with store_engine.connect() as conn:
        rows = [json.dumps([str(v) for v in row]) for t in (models.InteractionRow, models.FeedbackRow)
                for row in conn.execute(select(t))]
    blobs = [v.decode() for _, v, _ in wire] + rows
    for needle in PII_NEEDLES:
        assert not any(needle in blob for blob in blobs), f"PII {needle!r} leaked"
    assert any("[EMAIL]" in blob and "[CARD]" in blob for blob in blobs)
    producer.close()


def test_ratings_do_not_wait_behind_the_interactions_linger(feedback_settings: Settings) -> None:
    """Interactions batch for ``producer_log_linger_ms``; a rating's ack waits only ``producer_linger_ms``.

    With the interactions' linger far longer than the test, the rating is acked by Kafka (not spooled
    after its timeout) while every interaction is still batching; closing the producer delivers them.
    """
    settings = feedback_settings.model_copy(
        update={"producer_log_linger_ms": 600_000, "producer_linger_ms": 0, "producer_durable_timeout_s": 20.0,
                "producer_delivery_timeout_ms": 700_000}
    )
    ensure_topics(settings.effective_kafka_bootstrap, topics_from_settings(settings))
    producer = EventProducer(settings)
    try:
        assert producer.wait_connected(10)
        for i in range(5):
            producer.log(_interaction(1000 + i, settings))
        producer.send_durable(_rating(1000))
        # kafka-python may wake send_durable's wait a moment before it runs the ack callback that counts
        wait_until(lambda: producer.stats().sent >= 1, 5, "the rating's ack to be counted")
        stats = producer.stats()
        assert (stats.sent, stats.spooled) == (1, 0), stats  # the rating, acked; no interaction yet
    finally:
        producer.close()
    wait_until(lambda: producer.stats().sent >= 6, 5, "the interactions' acks to be counted")
    stats = producer.stats()
    assert (stats.sent, stats.spooled, stats.failed) == (6, 0, 0), stats
    wire = _read_topic(settings.effective_kafka_bootstrap, settings.topic_interactions)
    assert {json.loads(v)["response_id"] for _, v, _ in wire} >= {f"resp-{1000 + i}" for i in range(5)}


PAUSE_EVENTS = int(os.environ.get("FLYWHEEL_TEST_PAUSE_EVENTS", "150"))


@pytest.mark.parametrize("pause_s", [1.0, 4.5], ids=["short-pause", "past-delivery-timeout"])
def test_broker_paused_exactly_once(
    make_broker: Callable[..., EmbeddedBroker], tmp_path: Path, store_engine: Engine, pause_s: float
) -> None:
    """SIGSTOP the broker while logging and durably sending; after SIGCONT every event is stored once.
    The broker is this test's own: freezing the session's would stall every test sharing it."""
    broker = make_broker()
    feedback_settings = feedback_settings_for(broker.bootstrap, tmp_path)
    store = _setup(feedback_settings, store_engine)
    producer = EventProducer(feedback_settings)
    assert producer.wait_connected(10)
    n = PAUSE_EVENTS
    with running(FeedbackConsumer(feedback_settings, store)):
        for i in range(n // 3):
            producer.log(_interaction(i, feedback_settings))
        broker.pause()
        try:
            started = time.monotonic()
            for i in range(n // 3, n):
                producer.log(_interaction(i, feedback_settings))
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(producer.send_durable, [_rating(i) for i in range(n)]))
            durable_s = time.monotonic() - started
            time.sleep(max(0.0, pause_s - durable_s))
        finally:
            broker.resume()
        wait_until(lambda: store.counts()["processed_events"] >= 2 * n, 60, "every event after resume")
        assert producer.wait_drained(30)
        _wait_caught_up(feedback_settings)  # every record applied, a redelivered duplicate too
    assert store.counts() == {"interactions": n, "feedback": n, "processed_events": 2 * n}
    stats = producer.stats()
    assert stats.failed == 0
    if pause_s > feedback_settings.producer_delivery_timeout_ms / 1000:
        assert stats.spooled > 0 and stats.replayed >= stats.spooled
    producer.close()


def test_unreachable_at_start_spools_then_replays_in_order(
    make_broker: Callable[..., EmbeddedBroker], tmp_path: Path, sqlite_url: str
) -> None:
    """No broker when the producer starts: events spool; once it is up they replay in FIFO order."""
    port = free_port()
    settings = feedback_settings_for(f"127.0.0.1:{port}", tmp_path, sqlite_url)
    producer = EventProducer(settings)
    n = 120
    for i in range(n):  # one response_id → one partition, so Kafka order is checkable
        producer.log(Feedback.from_raw("same-response", 1.0, comment=f"seq {i}", idempotency_key=f"k{i}"))
    producer.send_durable(Feedback.from_raw("same-response", -1.0, comment=f"seq {n}", idempotency_key=f"k{n}"))
    wait_until(lambda: producer.stats().spool_depth == n + 1, 10, "everything spooled")
    assert producer.stats().connected is False

    late = make_broker(port=port)
    engine = make_engine(sqlite_url)
    create_schema(engine)
    store = _setup(settings, engine)
    assert producer.wait_drained(30)
    assert producer.stats().replayed == n + 1
    wire = _read_topic(late.bootstrap, settings.topic_feedback)
    seqs = [int(json.loads(v)["comment"].split()[1]) for _, v, _ in wire]
    assert seqs == list(range(n + 1))
    with running(FeedbackConsumer(settings, store)):
        wait_until(lambda: store.counts()["feedback"] == n + 1, 30, "replayed events stored")
    producer.close()
    engine.dispose()


def test_consumer_killed_and_restarted(feedback_settings: Settings, tmp_path: Path, sqlite_url: str) -> None:
    """SIGKILL `flywheel consume` mid-stream; a new consumer finishes with no duplicates and no gaps."""
    engine = make_engine(sqlite_url)
    create_schema(engine)
    store = _setup(feedback_settings, engine)
    producer = EventProducer(feedback_settings)
    assert producer.wait_connected(10)
    n = 600
    for i in range(n):
        producer.log(_interaction(i, feedback_settings))
    assert producer.wait_drained(15)

    env = {**os.environ, "PYTHONPATH": str(REPO), "FLYWHEEL_VAR_DIR": str(tmp_path)}
    for name in ("topic_interactions", "topic_feedback", "topic_deadletter", "consumer_group"):
        env[f"FLYWHEEL_{name.upper()}"] = str(getattr(feedback_settings, name))
    env["FLYWHEEL_CONSUMER_BATCH_MAX"] = "20"  # small batches so the kill lands mid-stream
    cmd = [sys.executable, "-c", "import typer; from flywheel.commands.consume import consume; typer.run(consume)",
           "--database-url", sqlite_url, "--kafka-bootstrap", feedback_settings.effective_kafka_bootstrap]
    log_path = tmp_path / "consume.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: store.counts()["processed_events"] >= 40 or proc.poll() is not None, 60, "first batches")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    before = store.counts()["processed_events"]
    assert before < n, "the kill came too late to test anything"

    for i in range(n, n + 100):  # more traffic while no consumer runs
        producer.log(_interaction(i, feedback_settings))
    assert producer.wait_drained(15)
    with running(FeedbackConsumer(feedback_settings, store)):
        wait_until(lambda: store.counts()["processed_events"] == n + 100, 60, "the rest after restart")
        _wait_caught_up(feedback_settings)  # a batch the killed consumer applied but never committed, too
    assert store.counts() == {"interactions": n + 100, "feedback": 0, "processed_events": n + 100}
    with engine.connect() as conn:
        ids = sorted(int(r[0].split("-")[1]) for r in conn.execute(select(models.InteractionRow.response_id)))
    assert ids == list(range(n + 100))
    producer.close()
    engine.dispose()


def test_poison_messages_go_to_deadletter(feedback_settings: Settings, sqlite_url: str) -> None:
    """Bad JSON, bad schema, unknown versions go to the dead-letter topic; the consumer keeps going."""
    engine = make_engine(sqlite_url)
    create_schema(engine)
    store = _setup(feedback_settings, engine)
    raw = KafkaProducer(bootstrap_servers=feedback_settings.effective_kafka_bootstrap, enable_idempotence=False)
    topic = feedback_settings.topic_feedback
    good = [_rating(i) for i in range(3)]
    poison = [
        b"{not json",
        b"\xff\xfe\x00binary",
        json.dumps({"schema_version": 99, "kind": "feedback", "response_id": "x"}).encode(),
        json.dumps({"schema_version": 1, "kind": "feedback", "response_id": "x", "rating": 7,
                    "rating_raw": 7, "comment": "mail bob@example.com"}).encode(),
        json.dumps({"schema_version": 1, "kind": "mystery"}).encode(),
        b"[1, 2, 3]",
    ]
    with running(FeedbackConsumer(feedback_settings, store)) as runner:
        raw.send(topic, value=good[0].to_json(), key=b"k").get(10)
        for body in poison:
            raw.send(topic, value=body, key=b"k").get(10)
        for event in good[1:]:
            raw.send(topic, value=event.to_json(), key=b"k").get(10)
        wait_until(lambda: store.counts()["feedback"] == 3, 30, "good events around the poison")
        wait_until(lambda: runner.consumer.stats.deadlettered == len(poison), 10, "dead-lettering")
    raw.close()
    dead = _read_topic(feedback_settings.effective_kafka_bootstrap, feedback_settings.topic_deadletter)
    assert len(dead) == len(poison)
    reasons = [dict(h)["flywheel-dlq-reason"].decode() for _, _, h in dead]
    assert any(r.startswith("bad json") for r in reasons)
    assert any("unknown schema_version 99" in r for r in reasons)
    assert any(r.startswith("schema: rating") for r in reasons)
    assert any("unknown kind" in r for r in reasons)
    assert not any(b"bob@example.com" in v for _, v, _ in dead)
    engine.dispose()


def test_consumer_survives_broker_restart(
    make_broker: Callable[..., EmbeddedBroker], tmp_path: Path, sqlite_url: str
) -> None:
    """Restart the (memory-only) broker under a running consumer: it reconnects and keeps storing."""
    own = make_broker()
    settings = feedback_settings_for(own.bootstrap, tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    create_schema(engine)
    store = _setup(settings, engine)
    producer = EventProducer(settings)
    assert producer.wait_connected(10)
    with running(FeedbackConsumer(settings, store)):
        for i in range(50):
            producer.log(_interaction(i, settings))
        wait_until(lambda: store.counts()["interactions"] == 50, 30, "before restart")
        own.restart()
        for i in range(50, 100):
            producer.send_durable(_interaction(i, settings))
        wait_until(lambda: store.counts()["interactions"] == 100, 60, "after restart")
    assert store.counts()["processed_events"] == 100
    producer.close()
    engine.dispose()
