"""Where keyed events land: one response's interaction and ratings on the same partition index of their
topics (feedback.kafka_io.Crc32Partitioner), checked on a small metadata double and on the real broker."""

from __future__ import annotations

import collections
import time
import zlib

import pytest
from kafka import KafkaConsumer, TopicPartition

from feedback.events import Feedback, Interaction
from feedback.kafka_io import Crc32Partitioner
from feedback.producer import EventProducer
from feedback.topics import ensure_topics, topics_from_settings
from flywheel.settings import Settings


class Metadata:
    """What a partitioner asks of kafka-python's ClusterMetadata."""

    def __init__(self, partitions: dict[str, set[int]], available: dict[str, set[int]] | None = None) -> None:
        self._partitions = partitions
        self._available = available if available is not None else partitions

    def topics(self) -> set[str]:
        return set(self._partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._available.get(topic, set())


def test_a_key_maps_to_the_same_partition_in_every_topic_of_that_size() -> None:
    meta = Metadata({"interactions": {0, 1, 2, 3}, "feedback": {3, 2, 1, 0}})
    part = Crc32Partitioner()
    for i in range(500):
        key = f"chatcmpl-{i}".encode()
        a = part.partition("interactions", None, key, None, None, meta)
        b = part.partition("feedback", None, key, None, None, meta)
        assert a == b == zlib.crc32(key) % 4


def test_keys_spread_over_every_partition() -> None:
    meta = Metadata({"t": set(range(4))})
    part = Crc32Partitioner()
    keys = (f"resp-{i}".encode() for i in range(10_000))
    counts = collections.Counter(part.partition("t", None, key, None, None, meta) for key in keys)
    assert set(counts) == {0, 1, 2, 3}
    assert all(2_300 <= n <= 2_700 for n in counts.values()), counts


def test_unkeyed_records_go_to_an_available_partition_and_unknown_topics_fail() -> None:
    meta = Metadata({"t": {0, 1, 2, 3}}, available={"t": {2}})
    part = Crc32Partitioner()
    assert {part.partition("t", None, None, None, None, meta) for _ in range(50)} == {2}
    with pytest.raises(ValueError, match="not found"):
        part.partition("missing", None, b"k", None, None, meta)


@pytest.mark.broker
def test_the_gateways_producer_puts_a_responses_events_on_one_partition(feedback_settings: Settings) -> None:
    ensure_topics(feedback_settings.effective_kafka_bootstrap, topics_from_settings(feedback_settings))
    producer = EventProducer(feedback_settings)
    try:
        assert producer.wait_connected(10)
        ids = [f"resp-partition-{i}" for i in range(40)]
        for rid in ids:
            producer.log(Interaction(response_id=rid, policy_version="v1", messages=[{"role": "user", "content": "hi"}],
                                     candidates=[{"text": "hello"}], chosen_index=0, latency_ms=1.0))  # fmt: skip
            producer.send_durable(Feedback.from_raw(rid, "up", policy_version="v1"))
        assert producer.wait_drained(15)
    finally:
        producer.close()
    where = {topic: _partitions_by_key(feedback_settings.effective_kafka_bootstrap, topic)
             for topic in (feedback_settings.topic_interactions, feedback_settings.topic_feedback)}  # fmt: skip
    n = feedback_settings.topic_partitions
    for rid in ids:
        expected = {zlib.crc32(rid.encode()) % n}
        assert where[feedback_settings.topic_interactions][rid] == expected
        assert where[feedback_settings.topic_feedback][rid] == expected
    assert len({p for rid in ids for p in where[feedback_settings.topic_interactions][rid]}) > 1


def _partitions_by_key(bootstrap: str, topic: str, idle_s: float = 1.5) -> dict[str, set[int]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found: dict[str, set[int]] = collections.defaultdict(set)
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for record in records:
                    found[record.key.decode()].add(tp.partition)
                last = time.monotonic()
        return found
    finally:
        consumer.close()
