"""Router: weighted sticky split, minimal movement on weight changes, and the routing-table cache."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from gateway.routing import RouteEntry, RoutingTable, RoutingTableCache, pick
from gateway.routing.split import point

USERS = [f"user-{i}" for i in range(10_000)]


def entry(vid: str, weight: float, seq: int, status: str = "canary") -> RouteEntry:
    return RouteEntry(vid, f"flywheel-{vid}", None, status, weight, seq)


def table(*canaries: tuple[str, float, int], revision: int = 0) -> RoutingTable:
    rest = 1.0 - sum(w for _, w, _ in canaries)
    return RoutingTable(
        stable=entry("seed", rest, 0, "stable"),
        canaries=tuple(entry(v, w, s) for v, w, s in canaries),
        revision=revision,
    )


def assignment(t: RoutingTable) -> dict[str, str]:
    return {u: pick(t, u).version_id for u in USERS}


def shares(assigned: dict[str, str] | list[str]) -> dict[str, float]:
    values = list(assigned.values()) if isinstance(assigned, dict) else assigned
    return {k: n / len(values) for k, n in Counter(values).items()}


def test_point_is_deterministic_and_uniform() -> None:
    # Pinned: every process and every release must agree, or a deploy would reshuffle all users
    # (Python's hash() would differ per process).
    assert f"{point('alice'):.12f}" == "0.770252148155"
    deciles = Counter(int(point(u) * 10) for u in USERS)
    assert all(abs(n / len(USERS) - 0.1) < 0.02 for n in deciles.values()) and len(deciles) == 10


def test_split_proportions_within_two_percent() -> None:
    t = table(("v1", 0.10, 1), ("v2", 0.25, 2), ("v3", 0.05, 3))
    got = shares(assignment(t))
    for vid, want in [("seed", 0.60), ("v1", 0.10), ("v2", 0.25), ("v3", 0.05)]:
        assert abs(got.get(vid, 0.0) - want) <= 0.02, (vid, got)


def test_zero_weight_canary_gets_nobody_and_full_weight_gets_everybody() -> None:
    assert set(assignment(table(("v1", 0.0, 1))).values()) == {"seed"}
    assert set(assignment(table(("v1", 1.0, 1))).values()) == {"v1"}


def test_sticky_across_calls_and_table_rebuilds() -> None:
    first = assignment(table(("v1", 0.3, 1)))
    again = assignment(table(("v1", 0.3, 1), revision=7))  # a re-read with equal weights
    assert first == again
    rng = random.Random(1)
    for user in rng.sample(USERS, 200):
        assert {pick(table(("v1", 0.3, 1)), user).version_id for _ in range(5)} == {first[user]}


def test_minimal_movement_when_canary_weight_grows() -> None:
    before = assignment(table(("v1", 0.10, 1)))
    after = assignment(table(("v1", 0.20, 1)))
    moved = [u for u in USERS if before[u] != after[u]]
    assert abs(len(moved) / len(USERS) - 0.10) <= 0.02
    assert all(before[u] == "seed" and after[u] == "v1" for u in moved)
    # And back down: exactly the same users return to the stable.
    back = assignment(table(("v1", 0.10, 1)))
    assert back == before


def test_weight_change_leaves_other_canary_untouched() -> None:
    base = table(("v1", 0.10, 1), ("v2", 0.15, 2))
    before = assignment(base)
    for changed in [table(("v1", 0.30, 1), ("v2", 0.15, 2)), table(("v1", 0.10, 1), ("v2", 0.40, 2))]:
        after = assignment(changed)
        moved = {(before[u], after[u]) for u in USERS if before[u] != after[u]}
        grown = "v1" if changed.canaries[0].weight == 0.30 else "v2"
        assert moved == {("seed", grown)}
        assert {u for u in USERS if before[u] == "v1"} <= {u for u in USERS if after[u] == "v1"}
        assert {u for u in USERS if before[u] == "v2"} <= {u for u in USERS if after[u] == "v2"}
        delta = 0.20 if grown == "v1" else 0.25
        assert abs(sum(before[u] != after[u] for u in USERS) / len(USERS) - delta) <= 0.02


def test_adding_and_removing_a_canary_does_not_move_other_canaries_users() -> None:
    one = assignment(table(("v1", 0.2, 1)))
    two = assignment(table(("v1", 0.2, 1), ("v2", 0.1, 2)))
    assert all(two[u] == "v1" for u in USERS if one[u] == "v1")
    assert all(one[u] == "seed" for u in USERS if two[u] == "v2")
    only_v2 = assignment(table(("v2", 0.1, 2)))  # v1 rolled back
    assert all(only_v2[u] == "v2" for u in USERS if two[u] == "v2")


def test_hrw_alternative_would_churn_unchanged_canary() -> None:
    """Documents why lanes were chosen: weighted rendezvous moves users of a canary whose weight did not change."""
    import math

    from gateway.routing.split import point as h

    def hrw(weights: dict[str, float], user: str) -> str:
        return max(weights, key=lambda v: -weights[v] / math.log(max(h(f"{v}:{user}"), 1e-300)))

    before = {u: hrw({"seed": 0.75, "v1": 0.10, "v2": 0.15}, u) for u in USERS}
    after = {u: hrw({"seed": 0.65, "v1": 0.20, "v2": 0.15}, u) for u in USERS}
    assert any(before[u] == "v2" and after[u] != "v2" for u in USERS)  # churn HRW cannot avoid
    lanes_before = assignment(table(("v1", 0.10, 1), ("v2", 0.15, 2)))
    lanes_after = assignment(table(("v1", 0.20, 1), ("v2", 0.15, 2)))
    assert not any(lanes_before[u] == "v2" and lanes_after[u] != "v2" for u in USERS)


def test_no_key_is_random_by_weight() -> None:
    t = table(("v1", 0.2, 1), ("v2", 0.05, 2))
    rng = random.Random(42)
    got = shares([pick(t, None, rng).version_id for _ in range(10_000)])
    assert abs(got["seed"] - 0.75) <= 0.02 and abs(got["v1"] - 0.2) <= 0.02 and abs(got["v2"] - 0.05) <= 0.02
    assert shares([pick(t, "", random.Random(7)).version_id for _ in range(50)]) != {}
    # Without a key two calls are independent draws, not sticky.
    assert len({pick(t, None, rng).version_id for _ in range(200)}) == 3


# --- cache ------------------------------------------------------------------------------------------
class Source:
    """A registry stand-in for the cache: counts reads; can be slowed down or broken."""

    def __init__(self) -> None:
        self.table = table(("v1", 0.1, 1))
        self.reads = 0
        self.gate: threading.Event | None = None  # when set, reads block until the gate opens
        self.entered = threading.Event()  # a read has started
        self.error: Exception | None = None

    def routing_table(self) -> RoutingTable:
        self.reads += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.error is not None:
            raise self.error
        return self.table


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def make_cache(source: Source) -> Iterator[type[RoutingTableCache]]:
    made: list[RoutingTableCache] = []

    def make(ttl_s: float) -> RoutingTableCache:
        cache = RoutingTableCache(source, ttl_s)
        made.append(cache)
        return cache

    yield make  # type: ignore[misc]
    for cache in made:
        cache.close()


def wait_for(condition, timeout_s: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_cache_reads_once_within_ttl(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(30.0)
    for _ in range(1000):
        assert cache.get().canaries[0].version_id == "v1"
    assert source.reads == 1


def test_cache_picks_up_changes_and_reads_at_most_once_per_ttl(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(0.1)
    started = time.monotonic()
    assert cache.get().canaries[0].weight == 0.1
    source.table = table(("v1", 0.4, 1), revision=2)
    assert wait_for(lambda: cache.get().revision == 2, timeout_s=5.0)
    assert wait_for(lambda: source.reads >= 4, timeout_s=5.0)  # it keeps refreshing while idle
    # An upper bound only: a slow machine makes fewer reads, never more.
    assert source.reads <= (time.monotonic() - started) / 0.1 + 2


def test_cache_get_never_waits_for_a_slow_refresh(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(0.05)
    first = cache.get()
    source.gate = threading.Event()
    source.entered.clear()
    source.table = table(("v1", 0.4, 1), revision=2)
    try:
        assert source.entered.wait(5)  # the background refresh is now stuck inside the registry read
        answers: list[RoutingTable] = []
        reader = threading.Thread(target=lambda: answers.extend(cache.get() for _ in range(200)))
        reader.start()
        reader.join(timeout=5)  # a hang guard: get() must not wait for the read, which never ends here
        assert not reader.is_alive()
        assert answers == [first] * 200
    finally:
        source.gate.set()
    assert wait_for(lambda: cache.get().revision == 2, timeout_s=5.0)


def test_cache_keeps_last_table_when_registry_fails(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(0.05)
    good = cache.get()
    assert cache.healthy()
    source.error = RuntimeError("database down")
    assert wait_for(lambda: cache.last_error is not None)
    assert cache.get() is good
    assert wait_for(lambda: not cache.healthy())
    source.error = None
    assert wait_for(lambda: cache.healthy() and cache.last_error is None)


def test_cache_first_load_error_is_raised_then_rate_limited(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    source.error = RuntimeError("no stable")
    cache = make_cache(30.0)
    for _ in range(5):
        with pytest.raises(RuntimeError, match="no stable"):
            cache.get()
    assert source.reads == 1


def test_cache_invalidate_rereads_now_and_close_stops(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(60.0)
    cache.get()
    source.table = table(revision=5)
    cache.invalidate()
    assert wait_for(lambda: cache.get().revision == 5, timeout_s=2.0)
    cache.close()
    reads = source.reads
    cache.invalidate()
    time.sleep(0.1)
    assert source.reads == reads and cache.get().revision == 5


def test_cache_is_thread_safe(source: Source, make_cache) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache(0.01)
    errors: list[Exception] = []

    def hammer() -> None:
        try:
            for _ in range(2000):
                assert cache.get().stable.version_id == "seed"
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
