"""Event producer for the request path: never blocks, never raises, never loses an acked event.

``log(event)`` is fire-and-forget: it hands the record to kafka-python (``max_block_ms=0``) or, when
the broker is down, slow or the in-flight bound is reached, to an in-memory queue that a background
thread writes to the durable spool. ``send_durable(event)`` returns only once Kafka acknowledged
the record or it was fsync'd into the spool (group commit keeps that fast).

Two kafka-python producers sit behind it, told apart by who waits: ``log`` events (interactions)
go through one that lingers ``producer_log_linger_ms`` (100 ms), since nobody waits on them and
kafka-python's sender spends ~1.6 ms of CPU per produce request whatever its size (measured at 1,500
events/s: 64 µs of sender CPU per event at 20 ms, 26 µs at 100 ms); acked sends (ratings) and the
spool replay go through one that lingers ``producer_linger_ms`` (20 ms), which a rating's 202 waits on.
A response's interaction and its ratings are on different topics, so no order between them is lost.

kafka-python 3.0.12 has no ``buffer_memory``: the in-flight bound is ours (``producer_buffer_bytes``,
counted from send to ack). The producer is built in the background thread, so a broker that is down
at start costs nothing on the request path; everything goes to the spool until it connects.

The background thread replays the spool in FIFO order and acks spool rows only after Kafka acked
them. While the spool holds anything, new ``log`` events go behind it (not past it). Delivery is
at-least-once (``enable_idempotence=False``, see ENVIRONMENT.md: Tansu forgets producer ids on
restart); the consumer dedupes by ``event_id``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from feedback.events import Event, Interaction
from feedback.kafka_io import FATAL_ERRORS, connect_producer, replay_batch
from feedback.spool import Spool, SpoolError
from feedback.topics import BrokerUnavailableError, ensure_topics, topics_from_settings
from flywheel.settings import Settings

__all__ = ["DeliveryError", "EventProducer", "ProducerStats"]

log = logging.getLogger(__name__)
_FATAL = FATAL_ERRORS
Record = tuple[str, bytes | None, bytes]


class DeliveryError(RuntimeError):
    """send_durable could neither get a Kafka ack nor write the spool (e.g. the spool is full)."""


@dataclass
class ProducerStats:
    """Counters for /metrics. ``failed`` counts events dropped for good (spool full, oversized)."""

    sent: int = 0
    spooled: int = 0
    replayed: int = 0
    failed: int = 0
    spool_depth: int = 0
    connected: bool = False


class EventProducer:
    """Kafka producer with a durable local spool behind it; one per process."""

    def __init__(self, settings: Settings, spool: Spool | None = None, client_id: str = "flywheel") -> None:
        self._settings = settings
        self._topics = topics_from_settings(settings)
        self._spool = spool if spool is not None else Spool(settings.effective_spool_path, settings.spool_max_bytes)
        self._client_id = client_id
        self._producer: KafkaProducer | None = None  # acked sends and spool replay
        self._log_producer: KafkaProducer | None = None  # fire-and-forget ``log`` events
        self._lock = threading.RLock()  # kafka-python may run an errback inside send()
        self._direct = False  # True once connected and the spool is drained
        self._queue: collections.deque[Record] = collections.deque()  # bound for the spool
        self._queue_bytes = 0
        self._inflight_bytes = 0
        self._inflight: dict[int, Record] = {}
        self._next_id = 0
        self._stats = ProducerStats()
        self._spool_error_logged = float("-inf")
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._connected = threading.Event()
        self._recheck = False  # set on a failure: topics are re-ensured before the next replay
        self._thread = threading.Thread(target=self._run, name="flywheel-producer", daemon=True)
        self._thread.start()

    # --- public API ------------------------------------------------------------------------
    def topic_for(self, event: Event) -> str:
        return self._topics.interactions if isinstance(event, Interaction) else self._topics.feedback

    def log(self, event: Event) -> None:
        """Fire-and-forget on the request path: never blocks on the network, never raises."""
        try:
            record = (self.topic_for(event), event.key, event.to_json())
            with self._lock:
                if self._direct and self._inflight_bytes + len(record[2]) <= self._settings.producer_buffer_bytes:
                    if self._send_locked(record, self._log_producer) is not None:
                        return
                self._enqueue_locked(record)
        except DeliveryError:
            pass  # already counted as failed
        except Exception:  # noqa: BLE001 - the caller is serving a user; count and move on
            log.exception("event producer: dropping an event")
            self._stats.failed += 1

    def send_durable(self, event: Event) -> None:
        """Return once Kafka acked the event or it is fsync'd in the spool; DeliveryError otherwise."""
        record = (self.topic_for(event), event.key, event.to_json())
        future = None
        with self._lock:
            if self._direct and self._inflight_bytes + len(record[2]) <= self._settings.producer_buffer_bytes:
                future = self._send_locked(record)
        if future is not None:
            try:
                future.get(timeout=self._settings.producer_durable_timeout_s)
                return
            except KafkaError:
                self._trip()  # slow or failed: make it durable locally (a later Kafka ack just duplicates it)
        self._spool_now([record])

    async def asend_durable(self, event: Event) -> None:
        """send_durable for an event loop: awaits the Kafka ack without holding a thread."""
        record = (self.topic_for(event), event.key, event.to_json())
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()

        def done_now(ok: bool) -> None:
            if not waiter.done():
                waiter.set_result(ok)

        def done(ok: bool, *_: object) -> None:  # on kafka-python's thread
            loop.call_soon_threadsafe(done_now, ok)

        future = None
        with self._lock:
            if self._direct and self._inflight_bytes + len(record[2]) <= self._settings.producer_buffer_bytes:
                future = self._send_locked(record)
        if future is not None:
            future.add_callback(done, True).add_errback(done, False)
            # A timer that settles the waiter, not asyncio.wait_for: wait_for wraps the waiter in a task
            # of its own, ~2 % of the gateway's CPU per rating under load (py-spy).
            timer = loop.call_later(self._settings.producer_durable_timeout_s, done_now, False)
            try:
                if await waiter:
                    return
            finally:
                timer.cancel()
            self._trip()
        await asyncio.to_thread(self._spool_now, [record])

    def stats(self) -> ProducerStats:
        s = self._stats
        return ProducerStats(s.sent, s.spooled, s.replayed, s.failed, len(self._spool), self._connected.is_set())

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until the producer has connected (tests and start-up probes)."""
        return self._connected.wait(timeout_s)

    def wait_drained(self, timeout_s: float) -> bool:
        """Block until nothing is queued, in flight or spooled (tests, graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._queue and not self._inflight and len(self._spool) == 0
            if idle:
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what Kafka will take within the timeout; spool the rest; stop the thread."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s + 5)
        for producer in (self._log_producer, self._producer):
            if producer is None:
                continue
            with contextlib.suppress(Exception):
                producer.flush(timeout=timeout_s)
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
        with self._lock:
            leftovers = list(self._inflight.values())
            self._inflight.clear()
        if leftovers or self._queue:
            with contextlib.suppress(DeliveryError):
                self._spool_now(leftovers)
        self._spool.close()

    # --- sending ---------------------------------------------------------------------------
    def _send_locked(self, record: Record, producer: KafkaProducer | None = None):  # type: ignore[no-untyped-def]
        """Hand one record to kafka-python (the acked-send producer unless told otherwise); None if it
        refused at once (then the caller spools)."""
        producer = producer or self._producer
        assert producer is not None
        topic, key, value = record
        try:
            future = producer.send(topic, value=value, key=key)
        except _FATAL as exc:
            self._stats.failed += 1
            raise DeliveryError(f"record refused for good ({len(value)} bytes): {exc}") from exc
        except (KafkaError, AssertionError):  # no metadata yet, closed, ...: spool it
            self._direct = False
            return None
        self._next_id += 1
        rid = self._next_id
        self._inflight[rid] = record
        self._inflight_bytes += len(value)
        future.add_callback(self._on_ack, rid).add_errback(self._on_error, rid)
        return future

    def _on_ack(self, rid: int, _meta: object) -> None:
        with self._lock:
            record = self._inflight.pop(rid, None)
            if record is not None:
                self._inflight_bytes -= len(record[2])
                self._stats.sent += 1

    def _on_error(self, rid: int, exc: BaseException) -> None:
        with self._lock:
            record = self._inflight.pop(rid, None)
            if record is None:
                return
            self._inflight_bytes -= len(record[2])
            if isinstance(exc, _FATAL):
                self._stats.failed += 1
                return
            self._direct = False  # keep later events behind this one
            self._recheck = True
            self._enqueue_locked(record)

    def _trip(self) -> None:
        """The broker is slow or failing: send new events to the spool until the replay drains it."""
        with self._lock:
            self._direct = False
            self._recheck = True

    def _enqueue_locked(self, record: Record) -> None:
        if self._queue_bytes + len(record[2]) > self._settings.producer_buffer_bytes:
            self._stats.failed += 1
            return
        self._queue.append(record)
        self._queue_bytes += len(record[2])
        self._wake.set()

    def _spool_now(self, records: list[Record]) -> None:
        """Write records durably behind anything still queued in memory (FIFO across both paths)."""
        with self._lock:
            records = [*self._take_queue_locked(), *records]
            try:
                ticket = self._spool.submit(records)
            except SpoolError as exc:
                raise self._spool_failed(exc, len(records)) from exc
        try:
            self._spool.wait(ticket)
        except SpoolError as exc:
            raise self._spool_failed(exc, len(records)) from exc
        self._stats.spooled += len(records)
        self._wake.set()

    def _spool_failed(self, exc: SpoolError, lost: int) -> DeliveryError:
        """Count and log a spool failure (full disk, full spool): logged at most every 10 s, since then
        every event fails the same way (ratings answer 503, interactions are dropped)."""
        self._stats.failed += lost
        now = time.monotonic()
        if now - self._spool_error_logged >= 10.0:
            self._spool_error_logged = now
            log.error("event spool write failed, %d event(s) not kept (broker unreachable and spool unusable): %s",
                      lost, exc)  # fmt: skip
        return DeliveryError(str(exc))

    def _take_queue_locked(self) -> list[Record]:
        records = list(self._queue)
        self._queue.clear()
        self._queue_bytes = 0
        return records

    # --- background: connect, spool the queue, replay --------------------------------------
    def _run(self) -> None:
        backoff = 0.2
        while not self._closing.is_set():
            try:
                self._drain_queue()
                if self._producer is None and not self._connect():
                    self._wake.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.2
                if self._recheck and not self._topics_exist():
                    self._wake.wait(0.5)
                    continue
                if len(self._spool):
                    if not self._replay_batch():
                        self._wake.wait(0.5)
                    continue
                with self._lock:
                    if not self._queue and len(self._spool) == 0:
                        self._direct = True
                self._wake.wait(0.2)
                self._wake.clear()
            except Exception:  # noqa: BLE001 - the thread must outlive any bug in one pass
                log.exception("event producer: background pass failed")
                self._wake.wait(1.0)
        self._drain_queue()

    def _drain_queue(self) -> None:
        if self._queue:
            with contextlib.suppress(DeliveryError):
                self._spool_now([])

    def _topics_exist(self) -> bool:
        """After a failure, make sure the topics exist before replaying into them.

        A restarted memory-storage broker (the embedded Tansu) has lost its topics but still acks
        writes to them, and those records vanish: replaying the spool into that gap lost 400 of 400
        events in a test. Re-creating the topics first (idempotent) closes the gap.
        """
        try:
            ensure_topics(self._settings.effective_kafka_bootstrap, self._topics, timeout_s=2)
        except BrokerUnavailableError:
            return False
        self._recheck = False
        return True

    def _connect(self) -> bool:
        producer = connect_producer(self._settings, self._client_id, self._topics.inputs)
        if producer is None:
            return False
        log_producer = connect_producer(self._settings, f"{self._client_id}-log", [self._topics.interactions],
                                        linger_ms=self._settings.producer_log_linger_ms)  # fmt: skip
        if log_producer is None:
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
            return False
        self._producer, self._log_producer = producer, log_producer
        self._connected.set()
        return True

    def _replay_batch(self) -> bool:
        assert self._producer is not None
        wait_s = self._settings.producer_delivery_timeout_ms / 1000 + 1
        result = replay_batch(self._producer, self._spool, wait_s)
        self._stats.replayed += result.replayed
        self._stats.failed += result.failed
        return result.progressed
