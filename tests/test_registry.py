"""Policy registry on SQLite and PostgreSQL: lifecycle, audit, invariants under concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from flywheel.db import make_engine
from policies.artifacts import artifact_sha256
from policies.registry import CANARY_PAUSED_KEY, Expected, PolicyRegistry
from policies.registry_errors import (
    InvalidArtifact,
    InvalidTransition,
    NoStableVersion,
    PreconditionFailed,
    VersionNotFound,
    WeightError,
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> Callable[[str], Path]:
    """Make a small adapter-like directory with distinct content per name."""

    def make(name: str) -> Path:
        d = tmp_path / name
        (d / "sub").mkdir(parents=True, exist_ok=True)
        (d / "adapter_config.json").write_text(f'{{"name": "{name}"}}')
        (d / "sub" / "weights.bin").write_bytes(name.encode() * 100)
        return d

    return make


@pytest.fixture
def registry(engine: Engine, artifacts: Callable[[str], Path]) -> PolicyRegistry:
    reg = PolicyRegistry(engine)
    reg.ensure_seed(artifacts("seed"), "seed-model")
    return reg


def test_seed_is_first_stable_and_idempotent(engine: Engine, artifacts: Callable[[str], Path]) -> None:
    reg = PolicyRegistry(engine)
    with pytest.raises(NoStableVersion):
        reg.routing_table()
    seed = reg.ensure_seed(artifacts("seed"), "seed-model")
    assert (seed.id, seed.kind, seed.status, seed.weight) == ("seed", "base", "stable", 1.0)
    assert seed.served_model_name == "seed-model" and seed.endpoint is None
    again = PolicyRegistry(engine).ensure_seed(artifacts("other"), "other-name")
    assert again.id == "seed" and again.served_model_name == "seed-model"
    assert [v.id for v in reg.list()] == ["seed"]
    assert [(a.action, a.actor, a.from_state) for a in reg.audit()] == [("seed", "system", None)]
    table = reg.routing_table()
    assert table.stable.version_id == "seed" and table.stable.weight == 1.0 and table.canaries == ()


def test_artifact_hash_covers_names_and_contents(artifacts: Callable[[str], Path], tmp_path: Path) -> None:
    a = artifacts("a")
    first = artifact_sha256(a)
    assert first == artifact_sha256(a) and len(first) == 64
    (a / "sub" / "weights.bin").write_bytes(b"changed")
    second = artifact_sha256(a)
    assert second != first
    (a / "sub" / "weights.bin").rename(a / "sub" / "renamed.bin")
    assert artifact_sha256(a) != second
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"abc")
    assert artifact_sha256(single) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(InvalidArtifact):
        artifact_sha256(tmp_path / "missing")


def test_register_weight_promote_rollback_retire(registry: PolicyRegistry, artifacts: Callable[[str], Path]) -> None:
    v1 = registry.register("lora", artifacts("a1"), parent="seed", notes="dpo run 1", actor="op:1")
    assert (v1.id, v1.status, v1.weight) == ("v1", "canary", 0.0)
    assert v1.served_model_name == f"flywheel-v1-{v1.artifact_sha256[:12]}"  # unique to these weights
    assert v1.parent == "seed" and v1.artifact_sha256 == artifact_sha256(artifacts("a1"))
    v2 = registry.register("full", artifacts("f2"), endpoint="http://127.0.0.1:8200", actor="op:1")
    assert v2.id == "v2" and v2.endpoint == "http://127.0.0.1:8200"

    registry.set_weight("v1", 0.1, actor="op:1")
    registry.set_weight("v2", 0.25, actor="op:2")
    table = registry.routing_table()
    assert [(c.version_id, c.weight) for c in table.canaries] == [("v1", 0.1), ("v2", 0.25)]
    assert table.stable.weight == pytest.approx(0.65)
    assert registry.get("seed").weight == pytest.approx(0.65)

    promoted = registry.promote("v1", actor="op:1")
    assert promoted.status == "stable"
    assert registry.get("seed").status == "retired"
    table = registry.routing_table()
    assert table.stable.version_id == "v1" and [c.version_id for c in table.canaries] == ["v2"]
    assert table.stable.weight == pytest.approx(0.75)

    rolled = registry.rollback("v2", actor="op:2", details={"reason": "worse"})
    assert (rolled.status, rolled.weight) == ("rolled_back", 0.0)
    assert registry.routing_table().canaries == ()
    assert registry.retire("v2", actor="op:2").status == "retired"

    # Promoting the old stable again reverses the promotion.
    assert registry.promote("seed", actor="op:1").status == "stable"
    assert registry.get("v1").status == "retired"
    assert sum(v.status == "stable" for v in registry.list()) == 1

    log = registry.audit(limit=100)
    assert [a.action for a in reversed(log)] == [
        "seed", "register", "register", "set_weight", "set_weight", "retire", "promote",
        "rollback", "retire", "retire", "promote",
    ]
    newest = log[0]
    assert (newest.action, newest.version_id, newest.actor) == ("promote", "seed", "op:1")
    assert newest.from_state == {"status": "retired", "weight": 0.0}
    assert newest.to_state == {"status": "stable", "weight": 0.0}
    assert newest.details == {"previous_stable": "v1"}
    rollback = next(a for a in log if a.action == "rollback")
    assert rollback.from_state == {"status": "canary", "weight": 0.25} and rollback.details == {"reason": "worse"}
    assert [a.action for a in registry.audit(limit=2)] == ["promote", "retire"]
    before = registry.routing_table().revision
    registry.update_metrics("seed", {"n": 1})  # metrics are not routing changes
    assert registry.routing_table().revision == before
    registry.register("lora", artifacts("a3"))
    assert registry.routing_table().revision == before + 1


def test_invalid_transitions_and_errors(registry: PolicyRegistry, artifacts: Callable[[str], Path]) -> None:
    v1 = registry.register("lora", artifacts("a1"))
    with pytest.raises(VersionNotFound):
        registry.get("v99")
    with pytest.raises(VersionNotFound):
        registry.set_weight("v99", 0.1)
    with pytest.raises(VersionNotFound):
        registry.register("lora", artifacts("a2"), parent="nope")
    with pytest.raises(InvalidArtifact):
        registry.register("full", artifacts("f"))  # no endpoint
    with pytest.raises(InvalidArtifact):
        registry.register("base", artifacts("b"))
    with pytest.raises(InvalidArtifact):
        registry.register("lora", artifacts("x") / "missing")
    with pytest.raises(InvalidTransition, match="promote another"):
        registry.retire("seed")
    with pytest.raises(InvalidTransition):
        registry.rollback("seed")
    with pytest.raises(InvalidTransition):
        registry.promote("seed")
    with pytest.raises(InvalidTransition):
        registry.set_weight("seed", 0.5)
    with pytest.raises(WeightError):
        registry.set_weight(v1.id, 1.5)
    with pytest.raises(WeightError):
        registry.set_weight(v1.id, float("nan"))
    registry.rollback(v1.id)
    with pytest.raises(InvalidTransition):
        registry.set_weight(v1.id, 0.1)
    with pytest.raises(InvalidTransition):
        registry.rollback(v1.id)
    registry.retire(v1.id)
    with pytest.raises(InvalidTransition):
        registry.retire(v1.id)
    # Failed registrations stay visible but can never take traffic.
    v2 = registry.register("lora", artifacts("a3"))
    assert registry.mark_failed(v2.id, reason="vLLM said no").status == "failed"
    with pytest.raises(InvalidTransition):
        registry.promote(v2.id)
    # Nothing above left a trace in the audit log except the real changes.
    assert [a.action for a in registry.audit()] == ["fail", "register", "retire", "rollback", "register", "seed"]


def test_expected_state_is_checked_inside_the_change(
    registry: PolicyRegistry, artifacts: Callable[[str], Path]
) -> None:
    """A caller that decided on a snapshot passes what it saw; a version changed since refuses the change,
    which leaves no state change and no audit entry. Without ``expected`` the operator may still promote a
    rolled-back version (to go back)."""
    canary = Expected(status="canary")
    vid = registry.register("lora", artifacts("a")).id
    registry.set_weight(vid, 0.2, "ctl", expected=Expected(status="canary", weight=0.0, paused=False))
    with pytest.raises(PreconditionFailed, match="has weight 0.2, expected 0.1"):
        registry.set_weight(vid, 0.5, "ctl", expected=Expected(status="canary", weight=0.1))
    registry.update_metrics(vid, {CANARY_PAUSED_KEY: True})
    with pytest.raises(PreconditionFailed, match="is paused"):
        registry.set_weight(vid, 0.5, "ctl", expected=Expected(weight=0.2, paused=False))
    with pytest.raises(PreconditionFailed, match="is paused"):
        registry.promote(vid, "ctl", expected=Expected(status="canary", paused=False))
    registry.update_metrics(vid, {CANARY_PAUSED_KEY: False})
    before = [a.id for a in registry.audit(version_id=vid)]

    registry.rollback(vid, "op:abort")
    with pytest.raises(PreconditionFailed, match="is rolled_back, expected canary"):
        registry.promote(vid, "ctl", expected=canary)
    with pytest.raises(PreconditionFailed):
        registry.rollback(vid, "ctl", expected=canary)
    with pytest.raises(PreconditionFailed):
        registry.retire(vid, "ctl", expected=canary)
    assert registry.get(vid).status == "rolled_back" and registry.get("seed").status == "stable"
    assert [a.action for a in registry.audit(version_id=vid)][0] == "rollback"
    assert len(registry.audit(version_id=vid)) == len(before) + 1, "refused changes leave no audit entry"
    assert registry.promote(vid, "op:go-back").status == "stable", "an operator may still promote it back"
    assert issubclass(PreconditionFailed, InvalidTransition)


def test_canary_weights_cannot_exceed_one(registry: PolicyRegistry, artifacts: Callable[[str], Path]) -> None:
    a = registry.register("lora", artifacts("a")).id
    b = registry.register("lora", artifacts("b")).id
    registry.set_weight(a, 0.7)
    with pytest.raises(WeightError, match="at most 0.3"):
        registry.set_weight(b, 0.31)
    registry.set_weight(b, 0.3)
    assert registry.routing_table().stable.weight == pytest.approx(0.0)
    registry.set_weight(a, 0.2)  # lowering is always allowed
    assert registry.routing_table().stable.weight == pytest.approx(0.5)


def test_metrics_merge(registry: PolicyRegistry, artifacts: Callable[[str], Path]) -> None:
    vid = registry.register("lora", artifacts("a")).id
    registry.update_metrics(vid, {"thumbs_up_rate": 0.6, "n": 10})
    assert registry.update_metrics(vid, {"n": 25}).metrics == {"thumbs_up_rate": 0.6, "n": 25}
    assert registry.get(vid).metrics == {"thumbs_up_rate": 0.6, "n": 25}


def test_serving_defaults_reach_the_routing_table_and_the_audit_log(
    registry: PolicyRegistry, artifacts: Callable[[str], Path]
) -> None:
    from policies.registry_errors import RegistryError

    vid = registry.register("lora", artifacts("a")).id
    registry.update_metrics(vid, {"n": 3})
    assert registry.set_serving(vid, 4, "ops").metrics == {"n": 3, "serving": {"best_of_n": 4}}
    entry = next(e for e in registry.routing_table().entries() if e.version_id == vid)
    assert entry.best_of_n == 4
    assert next(e for e in registry.routing_table().entries() if e.version_id == "seed").best_of_n is None
    audit = registry.audit(limit=1, version_id=vid)[0]
    assert (audit.action, audit.actor, audit.details["serving_to"]) == ("set_serving", "ops", {"best_of_n": 4})
    registry.set_serving(vid, None, "ops")
    assert next(e for e in registry.routing_table().entries() if e.version_id == vid).best_of_n is None
    with pytest.raises(RegistryError):
        registry.set_serving(vid, 0)
    with pytest.raises(VersionNotFound):
        registry.set_serving("nope", 2)


def test_database_refuses_a_second_stable(registry: PolicyRegistry, engine: Engine, artifacts: Callable[[str], Path]) -> None:
    registry.register("lora", artifacts("a"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE policy_versions SET status = 'stable' WHERE id = 'v1'"))


def _race(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the callables at the same instant in threads; return each result or exception."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = workers[i]()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_promotes_leave_exactly_one_stable(
    registry: PolicyRegistry, database_url: str, artifacts: Callable[[str], Path]
) -> None:
    # Each thread has its own engine, as two gateway processes would.
    engines = [make_engine(database_url) for _ in range(2)]
    try:
        regs = [PolicyRegistry(e) for e in engines]
        for round_ in range(5):
            a = registry.register("lora", artifacts(f"a{round_}")).id
            b = registry.register("lora", artifacts(f"b{round_}")).id
            results = _race([lambda: regs[0].promote(a, actor="p0"), lambda: regs[1].promote(b, actor="p1")])
            assert all(not isinstance(r, Exception) for r in results), results
            stables = [v for v in registry.list() if v.status == "stable"]
            assert len(stables) == 1 and stables[0].id in (a, b)
            loser = b if stables[0].id == a else a
            assert registry.get(loser).status == "retired"
            # The audit log tells the story in order: the later promote retired the earlier winner.
            promotes = [x for x in registry.audit(limit=6) if x.action == "promote"]
            assert promotes[0].version_id == stables[0].id
            assert promotes[0].details == {"previous_stable": loser}
    finally:
        for e in engines:
            e.dispose()


def test_concurrent_weights_never_sum_over_one(
    registry: PolicyRegistry, database_url: str, artifacts: Callable[[str], Path]
) -> None:
    engines = [make_engine(database_url) for _ in range(2)]
    try:
        regs = [PolicyRegistry(e) for e in engines]
        for round_ in range(5):
            a = registry.register("lora", artifacts(f"a{round_}")).id
            b = registry.register("lora", artifacts(f"b{round_}")).id
            results = _race([lambda: regs[0].set_weight(a, 0.6), lambda: regs[1].set_weight(b, 0.6)])
            errors = [r for r in results if isinstance(r, Exception)]
            assert len(errors) == 1 and isinstance(errors[0], WeightError), results
            assert sum(c.weight for c in registry.routing_table().canaries) == pytest.approx(0.6)
            registry.rollback(a)
            registry.rollback(b)
    finally:
        for e in engines:
            e.dispose()


def test_concurrent_registrations_get_distinct_ids(
    registry: PolicyRegistry, database_url: str, artifacts: Callable[[str], Path]
) -> None:
    engines = [make_engine(database_url) for _ in range(3)]
    try:
        regs = [PolicyRegistry(e) for e in engines]
        paths = [artifacts(f"r{i}") for i in range(3)]
        results = _race([lambda i=i: regs[i].register("lora", paths[i]).id for i in range(3)])
        assert sorted(results) == ["v1", "v2", "v3"]
    finally:
        for e in engines:
            e.dispose()
