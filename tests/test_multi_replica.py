"""Two gateway replicas on one PostgreSQL registry, and two consumers in one consumer group.

What a scaled-out deployment (docs/scaling.md) relies on, checked with real processes:
- the split is a pure function of (registry table, sticky user), so two replicas reading the same
  registry send every user to the same version;
- an operator change made through one replica's API (weight, rollback, promote) reaches the other
  replica, which re-reads the registry every ``FLYWHEEL_REGISTRY_CACHE_S``, with no restart (how soon
  is printed, not asserted);
- two `flywheel consume` processes in one group split the partitions and, together, store every
  rating exactly once.

Canaries are ``kind: full`` versions served by the session vLLM under its own name (never LoRA: the
session server has a small lifetime adapter budget).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from flywheel.db import make_engine
from gateway.routing.split import pick
from policies.registry import PolicyRegistry
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle, post_ratings_sync, private_topics, rating_bodies
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

CACHE_S = 1.0
USERS = [f"user-{i}" for i in range(200)]
UNLIMITED = {"FLYWHEEL_FEEDBACK_RATE_PER_S": "1000000", "FLYWHEEL_FEEDBACK_RATE_BURST": "1000000"}


def version_for(http: httpx.Client, user: str) -> str:
    body = {"model": "flywheel", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "temperature": 0, "user": user, "grounding": False}  # fmt: skip
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["flywheel"]["policy_version"]


def split_of(gw: GatewayHandle, users: list[str]) -> dict[str, str]:
    """Each user's version as this replica routes it (8 requests at a time)."""
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=60,
                      limits=httpx.Limits(max_connections=8)) as http, ThreadPoolExecutor(8) as pool:  # fmt: skip
        return dict(zip(users, pool.map(lambda u: version_for(http, u), users), strict=True))


def seconds_until(gw: GatewayHandle, user: str, version: str, timeout_s: float = 60) -> float:
    """How long after now replica ``gw`` first answers ``user`` with ``version`` (reported, not asserted:
    ``timeout_s`` is a hang guard)."""
    start = time.monotonic()
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=30) as http:
        while (elapsed := time.monotonic() - start) < timeout_s:
            if version_for(http, user) == version:
                return elapsed
            time.sleep(0.02)
    raise AssertionError(f"{gw.url} still not answering {user} with {version} after {timeout_s}s")


def expected_split(registry: PolicyRegistry, users: list[str]) -> dict[str, str]:
    """Each user's version by the registry's routing table now: the pure function both replicas apply."""
    table = registry.routing_table()
    return {u: pick(table, u).version_id for u in users}


def wait_routed(replicas: tuple[GatewayHandle, ...], probes: dict[str, str], what: str) -> None:
    """Until every replica answers each probe user with its version. A replica swaps in whole routing
    tables, so probes whose answer the change moved show that the replica's table has the change."""
    assert probes, "no probe user: the change moves nobody"
    wait_until(lambda: all(split_of(gw, list(probes)) == probes for gw in replicas), 60, what)


def moved(before: dict[str, str], after: dict[str, str], n: int = 4) -> dict[str, str]:
    """Up to ``n`` users whose version the change moved, with their new version."""
    return dict([(u, after[u]) for u in after if after[u] != before[u]][:n])


@pytest.fixture
def replicas(gateway_factory: Callable[..., GatewayHandle], postgres_url: str) -> tuple[GatewayHandle, GatewayHandle]:
    """Two `flywheel serve` processes, own ports and var/ dirs, one PostgreSQL registry and one set of topics."""
    shared = {"FLYWHEEL_DATABASE_URL": postgres_url, "FLYWHEEL_REGISTRY_CACHE_S": str(CACHE_S),
              **private_topics(), **UNLIMITED}  # fmt: skip
    a = gateway_factory("replica-a", **shared)
    b = gateway_factory("replica-b", **shared)  # after A: A created the schema and the seed version
    return a, b


@pytest.fixture
def registry(replicas: tuple[GatewayHandle, GatewayHandle], postgres_url: str) -> Iterator[PolicyRegistry]:
    """The replicas' registry, read directly (after the replicas: A created it)."""
    engine = make_engine(postgres_url)
    try:
        yield PolicyRegistry(engine)
    finally:
        engine.dispose()


def test_two_replicas_share_the_split_and_see_operator_changes_within_the_cache_interval(
    replicas: tuple[GatewayHandle, GatewayHandle], registry: PolicyRegistry,
    vllm_server, seed_model_dir: Path  # type: ignore[no-untyped-def]
) -> None:
    a, b = replicas
    before = expected_split(registry, USERS)  # everyone on the seed
    full = {"kind": "full", "path": str(seed_model_dir), "parent": "seed", "endpoint": vllm_server.url,
            "served_model_name": vllm_server.config.served_model_name}  # fmt: skip
    with a.admin() as admin_a, b.admin() as admin_b:
        v1 = admin_a.post("/admin/policies", json=full)
        assert v1.status_code == 201, v1.text
        v1_id = v1.json()["id"]
        assert admin_a.post(f"/admin/policies/{v1_id}/weight", json={"weight": 0.5}).status_code == 200
        # B's registry view: the version A registered, at A's weight.
        def b_lists_v1() -> bool:
            return any(p["id"] == v1_id and p["weight"] == 0.5 for p in admin_b.get("/admin/policies").json()["data"])

        wait_until(b_lists_v1, CACHE_S + 30, "replica B listing A's canary")
        half = expected_split(registry, USERS)
        wait_routed((a, b), moved(before, half), "both replicas routing by the 0.5 weight")

        split_a, split_b = split_of(a, USERS), split_of(b, USERS)
        differ = [u for u in USERS if split_a[u] != split_b[u]]
        assert not differ, f"{len(differ)} users routed differently, e.g. {differ[:5]}"
        on_canary = [u for u in USERS if split_a[u] == v1_id]
        assert 60 <= len(on_canary) <= 140, len(on_canary)  # weight 0.5 of 200 users
        print(f"multi-replica split: {len(on_canary)}/200 users on {v1_id} at weight 0.5, identical on both replicas")

        # Weight change through A: 0.5 -> 0.1 moves some canary users back to stable on B too.
        assert admin_a.post(f"/admin/policies/{v1_id}/weight", json={"weight": 0.1}).status_code == 200
        wait_routed((a, b), moved(half, expected_split(registry, USERS)), "both replicas routing by the 0.1 weight")
        low_a, low_b = split_of(a, USERS), split_of(b, USERS)
        assert low_a == low_b
        low = {u for u in USERS if low_a[u] == v1_id}
        assert low < set(on_canary) and 5 <= len(low) <= 40, len(low)  # sticky: a subset of the 0.5 cohort

        # Rollback through A: B answers a canary user from stable (how soon is reported, not asserted).
        user = next(iter(low))
        assert admin_a.post(f"/admin/policies/{v1_id}/rollback", json={"reason": "multi-replica test"}).status_code == 200
        rollback_s = seconds_until(b, user, "seed")

        # Promote through A: B answers every user from the promoted version.
        v2 = admin_a.post("/admin/policies", json=full)
        assert v2.status_code == 201, v2.text
        v2_id = v2.json()["id"]
        assert admin_a.post(f"/admin/policies/{v2_id}/promote", json={"reason": "multi-replica test"}).status_code == 200
        promote_s = seconds_until(b, USERS[0], v2_id)
        wait_routed((a,), {USERS[0]: v2_id}, "replica A routing to the promoted version")  # A changed it: async too
        assert set(split_of(b, USERS[:40]).values()) == {v2_id}
        assert set(split_of(a, USERS[:40]).values()) == {v2_id}
    print(f"multi-replica propagation (cache {CACHE_S}s): rollback seen on B after {rollback_s:.2f}s, "
          f"promote after {promote_s:.2f}s")  # fmt: skip


def _metric_samples(url: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family on a Prometheus page."""
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def _partitions(consumer: ConsumerHandle) -> set[str]:
    """Partitions assigned to this consumer now (its lag gauge has one series per assigned partition)."""
    return {labels for labels in _metric_samples(consumer.metrics_url, "flywheel_consumer_lag")}


def _consumed(consumer: ConsumerHandle) -> float:
    samples = _metric_samples(consumer.metrics_url, "flywheel_consumer_events_total")
    return sum(v for labels, v in samples.items() if 'outcome="consumed"' in labels)


def test_two_consumers_in_one_group_share_partitions_and_store_each_event_once(
    replicas: tuple[GatewayHandle, GatewayHandle], consumer_for: Callable[..., ConsumerHandle]
) -> None:
    a, b = replicas
    group = f"g.multi.{uuid.uuid4().hex[:8]}"
    first, second = consumer_for(a, FLYWHEEL_CONSUMER_GROUP=group), consumer_for(a, FLYWHEEL_CONSUMER_GROUP=group)

    def split_between_them() -> bool:
        """Both members joined: each holds partitions, none held by both (its lag gauge lists them)."""
        p1, p2 = _partitions(first), _partitions(second)
        return bool(p1) and bool(p2) and not (p1 & p2)

    # JoinGroup + SyncGroup for both members (Tansu waits half the 6 s session timeout)
    wait_until(split_between_them, 60, "the two consumers to split the partitions")

    posted = 1200
    results = [*post_ratings_sync(a, rating_bodies(posted // 2, "mr-a")),
               *post_ratings_sync(b, rating_bodies(posted // 2, "mr-b"))]
    accepted = {r.event_id for r in results if r.status == 202 and r.event_id}
    # status 0: the client saw no answer (a keep-alive race on a loaded machine); the gateway may or
    # may not have accepted those, so they bound the count from above but are not required.
    unanswered = sum(1 for r in results if r.status == 0)
    assert {r.status for r in results} <= {0, 202} and len(accepted) >= posted - 10, {r.status for r in results}

    wait_until(lambda: len(first.feedback_event_ids()) >= len(accepted), 180, f"{len(accepted)} ratings stored")
    first.wait_caught_up()  # the group committed every record: a double delivery among them is stored by now
    stored = first.feedback_event_ids()  # both consumers write the same PostgreSQL database
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(stored) >= accepted and len(stored) <= len(accepted) + unanswered

    p1, p2 = _partitions(first), _partitions(second)
    c1, c2 = _consumed(first), _consumed(second)
    print(f"consumer group {group}: consumer 1 partitions {sorted(p1)} ({c1:.0f} events), "
          f"consumer 2 partitions {sorted(p2)} ({c2:.0f} events); {len(accepted)} accepted "
          f"({unanswered} unanswered), {len(stored)} stored, {len(set(stored))} distinct")  # fmt: skip
    assert c1 > 0 and c2 > 0, "one consumer did all the work: the group did not split the partitions"
    assert p1 and p2 and not (p1 & p2), (p1, p2)
