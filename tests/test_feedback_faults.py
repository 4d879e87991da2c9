"""The feedback endpoint while the broker misbehaves: paused (SIGSTOP) under load, stopped and restarted.

Each test has its own broker (``make_broker``), its own gateway on it and its own `flywheel consume`,
so freezing or restarting the broker touches nothing else. The promise under test: a 202 means the
rating is durable, and it reaches the store exactly once once the broker is back, with no operator
action (the gateway's producer and the consumer reconnect by themselves).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from deploy.broker import EmbeddedBroker
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle, PostResult, post_ratings_sync, private_topics, rating_bodies
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

PAUSE_S = float(os.environ.get("FLYWHEEL_TEST_PAUSE_S", "30"))
PAUSE_RATINGS = int(os.environ.get("FLYWHEEL_TEST_PAUSE_RATINGS", "5000"))
UNLIMITED = {"FLYWHEEL_FEEDBACK_RATE_PER_S": "1000000", "FLYWHEEL_FEEDBACK_RATE_BURST": "1000000"}


def _private_stack(
    make_broker: Callable[..., EmbeddedBroker],
    gateway_factory: Callable[..., GatewayHandle],
    consumer_for: Callable[..., ConsumerHandle],
    name: str,
) -> tuple[EmbeddedBroker, GatewayHandle, ConsumerHandle]:
    own = make_broker()
    gw = gateway_factory(name, FLYWHEEL_KAFKA_BOOTSTRAP=own.bootstrap, **UNLIMITED, **private_topics())
    return own, gw, consumer_for(gw)


def _post(gw: GatewayHandle, n: int, prefix: str, concurrency: int = 32) -> list[PostResult]:
    return post_ratings_sync(gw, rating_bodies(n, prefix), concurrency=concurrency)


def _accepted(results: list[PostResult]) -> set[str]:
    return {r.event_id for r in results if r.status == 202 and r.event_id}


def _metric(gw: GatewayHandle, series: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


@contextmanager
def _health_latencies(gw: GatewayHandle) -> Iterator[list[float]]:
    """GET /healthz every 50 ms while the block runs; the latencies (s), for a failure message only: a
    stall of the gateway's event loop shows here, and would explain transport errors."""
    took: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.wait(0.05):
                began = time.monotonic()
                try:
                    client.get(f"{gw.url}/healthz")
                except httpx.HTTPError:
                    pass
                took.append(time.monotonic() - began)

    thread = threading.Thread(target=probe, name="health-probe", daemon=True)
    thread.start()
    try:
        yield took
    finally:
        stop.set()
        thread.join(70)


def _assert_exactly_once(consumer: ConsumerHandle, accepted: set[str], timeout_s: float) -> None:
    wait_until(lambda: len(consumer.feedback_event_ids()) >= len(accepted), timeout_s, f"{len(accepted)} ratings")
    consumer.wait_caught_up(timeout_s)  # every record in the topics applied, a redelivered duplicate too
    stored = consumer.feedback_event_ids()
    assert len(stored) == len(set(stored)) == len(accepted)
    assert set(stored) == accepted


def test_broker_paused_every_202_stored_once(
    make_broker: Callable[..., EmbeddedBroker],
    gateway_factory: Callable[..., GatewayHandle],
    consumer_for: Callable[..., ConsumerHandle],
) -> None:
    """SIGSTOP the broker for 30 s while 5,000 ratings are posted; after SIGCONT each 202 is stored once."""
    own, gw, consumer = _private_stack(make_broker, gateway_factory, consumer_for, "paused")
    warm = _post(gw, 50, "warm")
    _assert_exactly_once(consumer, _accepted(warm), 60)

    own.pause()
    paused_at = time.monotonic()
    try:
        with _health_latencies(gw) as health:
            during = _post(gw, PAUSE_RATINGS, "paused", concurrency=24)
        assert own.alive()
        time.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused_at)))
    finally:
        own.resume()
    statuses = [r.status for r in during]
    errors = {r.error for r in during if r.error}
    slowest_health_s = sorted(health)[-3:]
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert statuses.count(202) == PAUSE_RATINGS, (counts, errors, slowest_health_s)
    _assert_exactly_once(consumer, _accepted(warm) | _accepted(during), 240)
    assert _metric(gw, 'flywheel_feedback_requests_total{outcome="accepted"}') == PAUSE_RATINGS + 50


def test_broker_restart_gateway_and_consumer_reconnect(
    make_broker: Callable[..., EmbeddedBroker],
    gateway_factory: Callable[..., GatewayHandle],
    consumer_for: Callable[..., ConsumerHandle],
) -> None:
    """Stop the broker, keep rating (and chatting), start it again: everything reaches the store."""
    own, gw, consumer = _private_stack(make_broker, gateway_factory, consumer_for, "restart")
    before = _post(gw, 100, "before")
    _assert_exactly_once(consumer, _accepted(before), 60)

    own.stop()
    down = _post(gw, 300, "down", concurrency=16)
    assert [r.status for r in down] == [202] * 300  # durable in the gateway's spool
    chat = httpx.post(
        f"{gw.v1}/chat/completions", headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=60,
        json={"model": "flywheel", "messages": [{"role": "user", "content": "Is my data encrypted?"}], "max_tokens": 8},
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    response_id = chat.json()["flywheel"]["response_id"]

    own.restart()  # already stopped: waits for the port, starts a fresh (empty, memory-only) broker on it
    after = _post(gw, 100, "after")
    assert {r.status for r in after} == {202}
    _assert_exactly_once(consumer, _accepted(before) | _accepted(down) | _accepted(after), 180)
    wait_until(lambda: bool((consumer.store.get_interaction(response_id) or {}).get("interaction")), 60,
               "the interaction served while the broker was down")  # fmt: skip
    assert consumer.process.alive() and gw.process.alive()
