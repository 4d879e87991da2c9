"""Feedback consumer: both topics → the store, offsets committed only after the store committed.

One consumer group over ``interactions`` and ``feedback``. Each poll is one batch: decode, apply in
one store transaction, forward poison messages to the dead-letter topic, and only then commit the
batch's offsets. A crash anywhere before the commit redelivers the batch; the store's event-id
ledger makes the redelivery a no-op. A poison message (bad JSON, schema failure, unknown
``schema_version``, or an event the database refuses) goes to the dead-letter topic with the reason
in headers; its body is PII-redacted first, since it never passed the event validators.

Database trouble is never blamed on events: only an event that fails *on its own* with a data error
(``RowRejected``: a value the database cannot hold, a constraint) is dead-lettered, and only while the
database accepts a probe write. Any other database error (unreachable, read-only after a failover, a
revoked privilege: ``StoreError``) dead-letters and commits nothing: the consumer seeks back to the
batch's first offsets and retries it after a growing backoff, so the events are stored once the
database takes writes again.

Lag: Tansu answers ``end_offsets()`` wrongly (ENVIRONMENT.md), so lag is ``highwater - position``
from the high watermark that each fetch response carries (``KafkaConsumer.highwater``). It is only
known for partitions fetched at least once, and is as fresh as the last fetch.

A broker restart (memory storage) loses topics, offsets and the group: the client reconnects, the
fetch position falls past the new log end and ``auto_offset_reset="earliest"`` starts over at 0.
Any other client failure tears the consumer down and builds a new one after a short backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from feedback.events import Event, EventDecodeError, decode_event
from feedback.kafka_io import Crc32Partitioner
from feedback.store import FeedbackStore, RowRejected, StoreError
from feedback.topics import topics_from_settings
from flywheel.settings import Settings
from safety.pii import redact

__all__ = ["ConsumerMetrics", "ConsumerStats", "FeedbackConsumer"]

log = logging.getLogger(__name__)


class _StoreRetry(Exception):
    """The database took no writes; the batch was rewound and is retried after a backoff."""


class ConsumerMetrics:
    """Prometheus metrics, on a registry of the caller's choosing (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "flywheel_consumer_events", "events consumed, by outcome", ["topic", "outcome"], registry=r
        )
        self.batches = Counter("flywheel_consumer_batches", "batches committed", registry=r)
        self.batch_seconds = Histogram(
            "flywheel_consumer_batch_seconds", "decode + store + commit time per batch", registry=r
        )
        self.lag = Gauge(
            "flywheel_consumer_lag", "highwater - position (from fetch responses)", ["topic", "partition"], registry=r
        )
        self.throughput = Gauge("flywheel_consumer_events_per_second", "events over the last ~10 s", registry=r)
        self.reconnects = Counter("flywheel_consumer_reconnects", "consumer rebuilt after an error", registry=r)
        self.store_retries = Counter(
            "flywheel_consumer_store_retries", "batches left uncommitted because the database took no writes",
            registry=r,
        )


@dataclass
class ConsumerStats:
    """Plain counters for tests and the CLI."""

    applied: int = 0
    duplicates: int = 0
    deadlettered: int = 0
    batches: int = 0
    reconnects: int = 0
    store_retries: int = 0
    lag: dict[str, int] = field(default_factory=dict)


class FeedbackConsumer:
    """Runs until a stop event; rebuilds its Kafka clients by itself when the broker comes back."""

    def __init__(
        self,
        settings: Settings,
        store: FeedbackStore,
        metrics: ConsumerMetrics | None = None,
        client_id: str = "flywheel-consumer",
    ) -> None:
        self._settings = settings
        self._store = store
        self._topics = topics_from_settings(settings)
        self.metrics = metrics or ConsumerMetrics()
        self.stats = ConsumerStats()
        self._client_id = client_id
        self._consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None
        self._window: list[tuple[float, int]] = []

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; never returns early on broker or poison-message trouble."""
        backoff = 0.25
        store_backoff = 0.25
        while not stop.is_set():
            try:
                if self._consumer is None:
                    self._connect()
                    backoff = 0.25
                self._poll_once()
                store_backoff = 0.25
            except _StoreRetry as retry:  # the batch was rewound: keep the clients, just wait for the database
                log.warning("feedback consumer: %s; batch not committed, retrying in %.1fs", retry, store_backoff)
                self.stats.store_retries += 1
                self.metrics.store_retries.inc()
                stop.wait(store_backoff)
                store_backoff = min(store_backoff * 2, 2.0)
            except (KafkaError, StoreError, OSError) as exc:
                log.warning("feedback consumer: %s; reconnecting in %.1fs", exc, backoff)
                self._teardown()
                self.stats.reconnects += 1
                self.metrics.reconnects.inc()
                stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self._teardown()

    # --- clients ---------------------------------------------------------------------------
    def _connect(self) -> None:
        s = self._settings
        common = {
            "bootstrap_servers": s.effective_kafka_bootstrap,
            "reconnect_backoff_max_ms": 1000,
            "bootstrap_timeout_ms": 2000,
        }
        self._dlq = KafkaProducer(
            client_id=f"{self._client_id}-dlq",
            partitioner=Crc32Partitioner(),
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            request_timeout_ms=5000,
            delivery_timeout_ms=10000,
            **common,
        )
        consumer = KafkaConsumer(
            client_id=self._client_id,
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=10,
            max_poll_records=s.consumer_batch_max,
            request_timeout_ms=10000,
            **common,
        )
        consumer.subscribe(list(self._topics.inputs))
        self._consumer = consumer

    def _teardown(self) -> None:
        for client in (self._consumer, self._dlq):
            if client is None:
                continue
            try:
                if isinstance(client, KafkaConsumer):
                    client.close(autocommit=False, timeout_ms=2000)
                else:
                    client.close(timeout=2)
            except Exception:  # noqa: BLE001 - closing a broken client must not mask the real error
                log.debug("feedback consumer: close failed", exc_info=True)
        self._consumer = None
        self._dlq = None

    # --- one batch -------------------------------------------------------------------------
    def _poll_once(self) -> None:
        assert self._consumer is not None
        polled = self._consumer.poll(timeout_ms=200)
        records = [rec for batch in polled.values() for rec in batch]
        if not records:
            self._update_lag()
            return
        started = time.perf_counter()
        events: list[Event] = []
        origin: dict[str, ConsumerRecord] = {}
        poison: list[tuple[ConsumerRecord, str]] = []
        for rec in records:
            try:
                event = decode_event(rec.value if rec.value is not None else b"")
            except EventDecodeError as exc:
                poison.append((rec, exc.reason))
                continue
            events.append(event)
            origin.setdefault(event.event_id, rec)
        try:
            applied = self._apply(events, origin, poison)
        except StoreError as exc:
            try:
                self._rewind(polled)
            except (AssertionError, KafkaError):  # cannot seek: rebuild, which restarts at the committed offsets
                raise exc from None
            raise _StoreRetry(str(exc)) from exc
        self._dead_letter(poison)
        self._commit(polled)
        self._account(records, events, applied, poison, time.perf_counter() - started)

    def _apply(
        self, events: list[Event], origin: dict[str, ConsumerRecord], poison: list[tuple[ConsumerRecord, str]]
    ) -> int:
        """Apply the batch; if the database refuses its data, find the events to blame one by one.

        StoreError (the database, not the data) propagates from any step: nothing is dead-lettered.
        If no event goes in on its own, the database is probed before anyone is blamed.
        """
        try:
            return self._store.apply_batch(events)
        except RowRejected as exc:
            log.warning("feedback consumer: batch refused by the database (%s); applying one by one", exc)
        applied = 0
        refused: list[tuple[Event, str]] = []
        for event in events:
            try:
                applied += self._store.apply_batch([event])
            except RowRejected as exc:
                refused.append((event, str(exc)))
        if refused and len(refused) == len(events):
            self._store.check_writable()  # StoreError: every event failing alone means the database, not them
        poison.extend((origin[event.event_id], f"store: {reason[:200]}") for event, reason in refused)
        return applied

    def _rewind(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Seek back to the first offset of each partition's uncommitted batch, so the next poll redelivers it."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()  # a partition lost to a rebalance restarts at its committed offset
        for tp, batch in polled.items():
            if batch and tp in assigned:
                self._consumer.seek(tp, batch[0].offset)

    def _dead_letter(self, poison: Sequence[tuple[ConsumerRecord, str]]) -> None:
        """Forward poison messages and wait for the broker's ack (else the batch is redelivered)."""
        if not poison:
            return
        assert self._dlq is not None
        futures = []
        for rec, reason in poison:
            raw = rec.value or b""
            body = redact(raw.decode("utf-8", errors="replace")).text.encode()
            headers = [
                ("flywheel-dlq-reason", reason.encode()[:1000]),
                ("flywheel-dlq-source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
            ]
            futures.append(self._dlq.send(self._topics.deadletter, value=body, key=rec.key, headers=headers))
        for future in futures:
            future.get(timeout=15)

    def _commit(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assert self._consumer is not None
        offsets = {tp: OffsetAndMetadata(batch[-1].offset + 1, "", -1) for tp, batch in polled.items() if batch}
        self._consumer.commit(offsets)

    # --- metrics ---------------------------------------------------------------------------
    def _account(
        self,
        records: list[ConsumerRecord],
        events: list[Event],
        applied: int,
        poison: list[tuple[ConsumerRecord, str]],
        seconds: float,
    ) -> None:
        self.stats.batches += 1
        self.stats.applied += applied
        self.stats.deadlettered += len(poison)
        self.stats.duplicates += max(0, len(events) - applied - sum(1 for _, r in poison if r.startswith("store")))
        for rec in records:
            self.metrics.events.labels(rec.topic, "consumed").inc()
        self.metrics.events.labels("all", "applied").inc(applied)
        self.metrics.events.labels("all", "deadletter").inc(len(poison))
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(seconds)
        now = time.monotonic()
        self._window = [(t, n) for t, n in self._window if now - t < 10.0] + [(now, len(records))]
        span = max(now - self._window[0][0], 1.0)
        self.metrics.throughput.set(sum(n for _, n in self._window) / span)
        self._update_lag()

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        current = {f"{tp.topic}/{tp.partition}" for tp in assigned}
        for name in [n for n in self.stats.lag if n not in current]:  # revoked by a rebalance: not ours now
            del self.stats.lag[name]
            topic, partition = name.rsplit("/", 1)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(topic, partition)
        for tp in assigned:
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is None:
                continue
            lag = max(0, high - position)
            self.stats.lag[f"{tp.topic}/{tp.partition}"] = lag
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
