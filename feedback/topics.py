"""Topic names, partition counts and idempotent creation.

Names come from Settings so that tests can give every test its own topics. Creation is idempotent
(``TopicAlreadyExistsError`` is success) because the gateway, the consumer and ``flywheel up`` all
call it at start, and because a restarted embedded broker has forgotten every topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from flywheel.settings import Settings

__all__ = ["BrokerUnavailableError", "TopicSet", "ensure_topics", "topics_from_settings"]


class BrokerUnavailableError(RuntimeError):
    """The broker could not be reached to create topics."""


@dataclass(frozen=True)
class TopicSet:
    """The three feedback topics and how many partitions each gets."""

    interactions: str = "flywheel.interactions"
    feedback: str = "flywheel.feedback"
    deadletter: str = "flywheel.deadletter"
    partitions: int = 4

    @property
    def inputs(self) -> tuple[str, str]:
        return (self.interactions, self.feedback)

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.interactions, self.feedback, self.deadletter)


def topics_from_settings(settings: Settings) -> TopicSet:
    return TopicSet(
        interactions=settings.topic_interactions,
        feedback=settings.topic_feedback,
        deadletter=settings.topic_deadletter,
        partitions=settings.topic_partitions,
    )


def ensure_topics(
    bootstrap: str,
    topics: TopicSet | None = None,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create any missing topic; return the names that were created now (empty when all existed)."""
    topics = topics or TopicSet()
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="flywheel-admin",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=1000,
        )
    except KafkaError as exc:
        raise BrokerUnavailableError(f"broker at {bootstrap} is unreachable: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in topics.all if t not in existing]
        created: list[str] = []
        for name in wanted:
            try:
                admin.create_topics(
                    {name: {"num_partitions": topics.partitions, "replication_factor": replication_factor}},
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # someone else (or broker auto-creation) won the race: fine
        return created
    except KafkaError as exc:
        raise BrokerUnavailableError(f"could not create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
