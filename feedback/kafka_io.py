"""kafka-python glue for the producer: a client tuned per ENVIRONMENT.md, and spool replay.

Kept apart from ``producer.py`` so that the request-path logic (direct send vs spool) reads on its
own; everything here runs on the producer's background thread.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import InvalidTopicError, KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from kafka.partitioner import DefaultPartitioner

from feedback.spool import Spool, SpoolRecord
from flywheel.settings import Settings

__all__ = ["FATAL_ERRORS", "Crc32Partitioner", "ReplayResult", "connect_producer", "replay_batch"]

log = logging.getLogger(__name__)

# Errors a retry can never fix: such a record is counted as failed instead of blocking the spool.
FATAL_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidTopicError)


class Crc32Partitioner(DefaultPartitioner):
    """kafka-python's default partitioner with CRC-32 (zlib, C) in place of its pure-Python murmur2.

    Keyed events of one response must land on one partition, in every topic with the same partition
    count; any stable hash does that. murmur2 matters only for agreeing with Java clients on where a
    key goes, and every producer of our topics is ours and uses this class. The default's partition()
    took 9.5 µs per keyed event on the gateway's event loop here (this one 0.7 µs), about 2 % of a
    proxied chat request. Records without a key are placed as the default partitioner places them.
    """

    def partition(  # type: ignore[override]
        self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any, cluster: Any,
    ) -> int:  # fmt: skip
        if serialized_key is None:
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        ordered = sorted(partitions)
        return int(ordered[zlib.crc32(serialized_key) % len(ordered)])


def connect_producer(
    settings: Settings, client_id: str, topics: Sequence[str], linger_ms: int | None = None
) -> KafkaProducer | None:
    """A producer for the request path, or None if the broker is unreachable right now.

    acks=all; no idempotence (Tansu forgets producer ids on restart); ``max_block_ms=0`` so send()
    never blocks; short bootstrap timeout so the background thread retries quickly. ``linger_ms``
    defaults to ``settings.producer_linger_ms``.
    """
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.effective_kafka_bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=settings.producer_linger_ms if linger_ms is None else linger_ms,
            batch_size=64 * 1024,
            compression_type=settings.producer_compression,
            partitioner=Crc32Partitioner(),
            max_block_ms=0,
            request_timeout_ms=settings.producer_request_timeout_ms,
            delivery_timeout_ms=settings.producer_delivery_timeout_ms,
            reconnect_backoff_max_ms=1000,
            bootstrap_timeout_ms=2000,
        )
    except KafkaError as exc:
        log.warning("event producer: broker %s unreachable (%s); spooling", settings.effective_kafka_bootstrap, exc)
        return None
    # With max_block_ms=0, send() fails until topic metadata is known; each failed call queues a refresh.
    deadline = time.monotonic() + 5.0
    for topic in topics:
        while time.monotonic() < deadline:
            try:
                producer.partitions_for(topic)
                break
            except KafkaError:
                time.sleep(0.05)
    return producer


class ReplayResult:
    """What one replay pass did."""

    def __init__(self) -> None:
        self.replayed = 0
        self.failed = 0

    @property
    def progressed(self) -> bool:
        return bool(self.replayed or self.failed)


def replay_batch(producer: KafkaProducer, spool: Spool, wait_s: float, limit: int = 500) -> ReplayResult:
    """Send the oldest spooled rows and ack the prefix Kafka acknowledged, in FIFO order.

    Rows after the first retriable failure stay spooled (and are sent again next pass, so some may
    reach Kafka twice: at-least-once). Every future is awaited before acking, so no row is acked
    while kafka-python may still be retrying it.
    """
    result = ReplayResult()
    records: list[SpoolRecord] = spool.peek(limit)
    futures: list[object] = []
    for rec in records:
        try:
            futures.append(producer.send(rec.topic, value=rec.value, key=rec.key))
        except FATAL_ERRORS as exc:
            futures.append(exc)
        except KafkaError:
            break
    acked: list[SpoolRecord] = []
    for rec, fut in zip(records, futures, strict=False):
        try:
            if isinstance(fut, BaseException):
                raise fut
            fut.get(timeout=wait_s)  # type: ignore[attr-defined]
        except FATAL_ERRORS:
            result.failed += 1
        except KafkaError:
            break
        else:
            result.replayed += 1
        acked.append(rec)
    spool.ack(acked)
    return result
