"""`flywheel consume`: run the feedback consumer (Kafka topics → store) until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import typer
from rich.console import Console

from flywheel.settings import Settings


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def consume(
    database_url: str = typer.Option(None, help="store URL (default FLYWHEEL_DATABASE_URL or SQLite under var/)"),
    kafka_bootstrap: str = typer.Option(None, help="broker (default FLYWHEEL_KAFKA_BOOTSTRAP or the embedded one)"),
    metrics_port: int = typer.Option(
        None, min=1, max=65535, help="serve Prometheus metrics on this port (default: off)"
    ),
) -> None:
    """Materialise interactions and ratings into the store; offsets commit after the store commits."""
    from prometheus_client import start_http_server
    from sqlalchemy.exc import SQLAlchemyError

    import feedback.store_models  # noqa: F401 - registers the tables on the shared Base
    from feedback.consumer import ConsumerMetrics, FeedbackConsumer
    from feedback.store import FeedbackStore
    from feedback.topics import BrokerUnavailableError, ensure_topics, topics_from_settings
    from flywheel.cpus import pin_this_process
    from flywheel.db import create_schema, make_engine

    overrides = {"database_url": database_url, "kafka_bootstrap": kafka_bootstrap}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if settings.cpu_set:  # first thing: threads started from here on inherit it
        pin_this_process(settings.cpu_set)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its reconnect noise; we log our own line

    engine = make_engine(settings.effective_database_url)
    try:
        create_schema(engine)
    except SQLAlchemyError as exc:
        _fail(f"database unreachable ({settings.effective_database_url}): {str(exc).splitlines()[0]}")
    try:
        ensure_topics(settings.effective_kafka_bootstrap, topics_from_settings(settings))
    except BrokerUnavailableError as exc:
        _fail(str(exc))

    metrics = ConsumerMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    consumer = FeedbackConsumer(settings, FeedbackStore(engine), metrics)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    Console().print(
        f"consuming {settings.topic_interactions}, {settings.topic_feedback} from "
        f"{settings.effective_kafka_bootstrap} into {engine.url.render_as_string(hide_password=True)}",
        highlight=False,
    )
    consumer.run(stop)
    engine.dispose()
    Console().print(f"stopped: {consumer.stats.applied} events applied, {consumer.stats.deadlettered} dead-lettered")
