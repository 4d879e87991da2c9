"""The canary controller end to end: a real store (SQLite and PostgreSQL), a real operator API over HTTP
(admin + canary routers under uvicorn), crafted interactions and ratings, and ticks on a test clock.

Versions are ``kind: full`` with an endpoint, so no adapter is loaded (no vLLM needed); the service
runs without a LoRA loader exactly as in tests/test_admin_api.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from deploy.canary.admin_client import AdminClient
from deploy.canary.controller import CanaryController
from deploy.canary.live import CanaryAnalyzer
from deploy.canary.metrics import Counters, GatewayCounters, StoreMetrics
from deploy.canary.plan import MetricCondition, RolloutPlan
from deploy.canary.state import CanaryState
from feedback.events import Candidate, Feedback, Interaction
from feedback.store import FeedbackStore
from flywheel.commands.canary import app as canary_cli
from flywheel.db import create_schema, make_engine
from flywheel.settings import Settings
from gateway.admin.canary_router import build_canary_router
from gateway.admin.canary_service import CanaryService
from gateway.admin.router import build_admin_router
from gateway.admin.service import AdminService
from gateway.errors import install_error_handlers
from policies.registry import PolicyRegistry
from policies.registry_models import utcnow
from tests.fixtures.threaded_server import serve_in_thread

ADMIN_KEY = "canary-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PLAN = RolloutPlan(
    steps=(0.1, 0.5, 1.0), min_ratings_per_step=40, max_ratings_per_step=400, min_seconds_per_step=60,
    conditions=(
        MetricCondition("thumbs_up_rate", margin=0.05, min_samples=40, required=True),
        MetricCondition("mean_reward", margin=0.1, min_samples=40),
        MetricCondition("safety_block_rate", margin=0.02, min_samples=40),
        MetricCondition("latency_p99_ms", max_ratio=1.5, min_samples=40),
        MetricCondition("error_rate", margin=0.01, min_samples=40),
    ),
)


@dataclass
class Clock:
    now: datetime = field(default_factory=utcnow)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class StubCounters(GatewayCounters):
    """Gateway counters the test sets: ``value`` is what the next read returns (None: no gateway readable)."""

    def __init__(self) -> None:
        super().__init__(["http://gateway.test/metrics"])
        self.value: Counters | None = {}

    def read(self) -> Counters | None:
        return None if self.value is None else {k: list(v) for k, v in self.value.items()}


@dataclass
class Rig:
    url: str
    registry: PolicyRegistry
    store: FeedbackStore
    controller: CanaryController
    clock: Clock
    tmp: Path
    http: httpx.Client
    canary_service: CanaryService
    last: str = ""

    def register(self, name: str) -> str:
        path = self.tmp / name
        path.mkdir()
        (path / "config.json").write_text("{}")
        resp = self.http.post("/admin/policies", json={"kind": "full", "path": str(path), "parent": "seed",
                                                       "endpoint": "http://127.0.0.1:9"})  # fmt: skip
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def serve(self, version: str, n: int, up_rate: float, *, reward: float = 0.5, blocked: int = 0,
              latency_ms: float = 100.0) -> None:  # fmt: skip
        """n answers of ``version`` just after the clock's now, each rated (the first up_rate*n up)."""
        at = self.clock.now + timedelta(seconds=1)
        ups = round(n * up_rate)
        events: list[Interaction | Feedback] = []
        for i in range(n):
            rid = f"{version}-{at.timestamp()}-{i}"
            safety = [{"stage": "output", "action": "block" if i < blocked else "allow", "verdicts": []}]
            events.append(Interaction(response_id=rid, time=at, policy_version=version, safety=safety,
                                      candidates=[Candidate(text="a", reward=reward)], latency_ms=latency_ms))  # fmt: skip
            events.append(Feedback.from_raw(rid, "up" if i < ups else "down", time=at, policy_version=version))
        self.store.apply_batch(events)

    def version(self, vid: str) -> dict:
        return next(v for v in self.http.get("/admin/policies").json()["data"] if v["id"] == vid)

    def tick(self, vid: str) -> str:
        [result] = [r for r in self.controller.tick() if r.version_id == vid]
        assert result.error is None, result.error
        self.last = result.reason
        return result.action


@contextmanager
def make_rig(tmp_path: Path, database_url: str, plan: RolloutPlan = PLAN,
             counters: GatewayCounters | None = None) -> Iterator[Rig]:  # fmt: skip
    settings = Settings(admin_keys=[ADMIN_KEY], var_dir=tmp_path / "var")
    engine = make_engine(database_url)
    create_schema(engine)
    registry = PolicyRegistry(engine)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "config.json").write_text("{}")
    registry.ensure_seed(seed, "seed")
    clock = Clock()
    analyzer = CanaryAnalyzer(registry, StoreMetrics(engine), counters or GatewayCounters([]), plan, clock=clock)
    admin = AdminService(registry, None, max_loaded_adapters=3)
    canary_service = CanaryService(admin, analyzer)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_admin_router(admin, settings))
    app.include_router(build_canary_router(canary_service, settings))
    try:
        with serve_in_thread(app) as port:
            url = f"http://127.0.0.1:{port}"
            client = AdminClient(url, ADMIN_KEY)
            try:
                with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
                    yield Rig(url, registry, FeedbackStore(engine), CanaryController(analyzer, client), clock,
                              tmp_path, http, canary_service)  # fmt: skip
            finally:
                client.close()
    finally:
        engine.dispose()


@pytest.fixture
def rig(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    with make_rig(tmp_path, database_url) as made:
        yield made


def test_better_canary_steps_through_the_plan_and_is_promoted(rig: Rig) -> None:
    vid = rig.register("better")
    assert rig.tick(vid) == "start" and rig.version(vid)["weight"] == pytest.approx(0.1)
    rig.serve("seed", 200, 0.6)
    rig.serve(vid, 60, 0.9, reward=0.8)
    rig.clock.advance(10)
    assert rig.tick(vid) == "hold"  # enough ratings, but the step has not lasted its minimum time
    assert rig.version(vid)["weight"] == pytest.approx(0.1)
    rig.clock.advance(60)
    assert rig.tick(vid) == "promote_step", rig.last
    assert rig.version(vid)["weight"] == pytest.approx(0.5)

    step = next(a for a in rig.registry.audit(version_id=vid) if a.action == "set_weight")
    assert step.actor.startswith("op:") and step.details is not None and step.details["canary_action"] == "step"
    thumbs = step.details["metrics"]["thumbs_up_rate"]
    assert thumbs["outcome"] == "success" and thumbs["p_not_worse"] >= 0.95
    assert (thumbs["n_canary"], thumbs["canary"], thumbs["stable"]) == (60, 0.9, 0.6)
    assert step.details["metrics"]["error_rate"]["outcome"] == "skipped"

    rig.clock.advance(1)
    assert rig.tick(vid) == "hold"  # a fresh window: the previous step's ratings no longer count
    rig.serve("seed", 100, 0.6)
    rig.serve(vid, 50, 0.9, reward=0.8)
    rig.clock.advance(70)
    assert rig.tick(vid) == "promote_step" and rig.version(vid)["weight"] == pytest.approx(1.0)
    rig.serve(vid, 50, 0.9, reward=0.8)  # at 100 % the stable serves nothing: its window widens
    rig.clock.advance(70)
    assert rig.tick(vid) == "promote"
    assert rig.version(vid)["status"] == "stable" and rig.version("seed")["status"] == "retired"
    promote = next(a for a in rig.registry.audit(version_id=vid) if a.action == "promote")
    assert promote.details is not None and promote.details["canary_action"] == "promote"
    assert promote.details["metrics"]["thumbs_up_rate"]["n_stable"] == 300
    assert promote.details["reason"].startswith("canary: last step")


def test_worse_canary_is_rolled_back_with_its_numbers(rig: Rig) -> None:
    vid = rig.register("worse")
    rig.tick(vid)
    rig.serve("seed", 200, 0.6)
    rig.serve(vid, 60, 0.2)
    assert rig.tick(vid) == "rollback"  # failure needs no minimum step time
    assert rig.version(vid)["status"] == "rolled_back" and rig.version(vid)["weight"] == 0.0
    rollback = next(a for a in rig.registry.audit(version_id=vid) if a.action == "rollback")
    assert rollback.details is not None and rollback.details["decision"] == "rollback"
    thumbs = rollback.details["metrics"]["thumbs_up_rate"]
    assert thumbs["outcome"] == "failure" and thumbs["p_not_worse"] < 0.05 and thumbs["canary"] == 0.2


def test_safety_blocks_and_latency_fail_a_well_rated_canary(rig: Rig) -> None:
    vid = rig.register("unsafe")
    rig.tick(vid)
    rig.serve("seed", 200, 0.6)
    rig.serve(vid, 60, 0.9, blocked=20, latency_ms=400.0)
    assert rig.tick(vid) == "rollback"
    details = next(a for a in rig.registry.audit(version_id=vid) if a.action == "rollback").details or {}
    assert details["metrics"]["safety_block_rate"]["outcome"] == "failure"
    assert details["metrics"]["latency_p99_ms"]["outcome"] == "failure"
    assert details["canary"]["latency_p99_ms"] == 400.0 and details["stable"]["latency_p99_ms"] == 100.0


def test_pause_holds_resume_continues_and_status_shows_it(rig: Rig) -> None:
    vid = rig.register("paused")
    rig.tick(vid)
    assert rig.http.post(f"/admin/canary/{vid}/pause", json={"reason": "investigating"}).json()["paused"] is True
    rig.serve("seed", 200, 0.6)
    rig.serve(vid, 60, 0.2)  # would roll back if not paused
    rig.clock.advance(120)
    assert rig.tick(vid) == "hold" and rig.version(vid)["status"] == "canary"
    [report] = rig.http.get("/admin/canary").json()["data"]
    assert report["paused"] and report["decision"] == "hold" and report["why"] == "paused by an operator"
    assert report["metrics"]["thumbs_up_rate"]["outcome"] == "failure"
    out = CliRunner().invoke(canary_cli, ["status", "--url", rig.url, "--key", ADMIN_KEY])
    assert out.exit_code == 0 and vid in out.output and "PAUSED" in out.output, out.output
    pause = next(a for a in rig.registry.audit(version_id=vid) if a.action == "canary_pause")
    assert pause.details is not None and pause.details["reason"] == "investigating"
    assert pause.actor.startswith("op:")
    assert rig.http.post(f"/admin/canary/{vid}/resume").json()["paused"] is False
    assert rig.tick(vid) == "rollback"


def test_force_promote_and_abort_from_the_api_and_cli(rig: Rig) -> None:
    first, second, third = rig.register("first"), rig.register("second"), rig.register("third")
    rig.controller.tick()
    aborted = CliRunner().invoke(canary_cli, ["rollback", first, "--url", rig.url, "--key", ADMIN_KEY,
                                              "--reason", "bad vibes"])  # fmt: skip
    assert aborted.exit_code == 0, aborted.output
    assert rig.version(first)["status"] == "rolled_back"
    also = CliRunner().invoke(canary_cli, ["abort", third, "--url", rig.url, "--key", ADMIN_KEY])
    assert also.exit_code == 0, also.output
    assert rig.version(third)["status"] == "rolled_back"
    abort = next(a for a in rig.registry.audit(version_id=first) if a.action == "rollback")
    assert abort.details is not None and abort.details["canary_action"] == "abort" and abort.details["reason"] == "bad vibes"
    assert rig.http.post(f"/admin/canary/{first}/promote").status_code == 409  # no longer a canary
    forced = rig.http.post(f"/admin/canary/{second}/promote")
    assert forced.status_code == 200 and forced.json()["status"] == "stable"
    promote = next(a for a in rig.registry.audit(version_id=second) if a.action == "promote")
    assert promote.details is not None and promote.details["canary_action"] == "force_promote"
    assert "thumbs_up_rate" in promote.details["metrics"]
    assert rig.http.post("/admin/canary/nope/pause").status_code == 404
    assert httpx.get(f"{rig.url}/admin/canary").status_code == 401


def test_the_thumbs_up_rate_counts_each_raters_latest_rating_once(database_url: str) -> None:
    """Re-clicking thumbs down does not weigh like many raters: one rating per (response, rater), the
    latest, as the preference export counts them (security finding: one key posing as many votes)."""
    engine = make_engine(database_url)
    create_schema(engine)
    at = datetime.now(UTC)
    version = f"v-dedupe-{at.timestamp()}"
    events: list[Interaction | Feedback] = [
        Interaction(response_id=f"{version}-r1", time=at, policy_version=version, candidates=[Candidate(text="a")])
    ]
    for i, raw in enumerate(["down", "down", "down", "up"]):  # rater a changes their mind; only "up" counts
        events.append(Feedback.from_raw(f"{version}-r1", raw, time=at + timedelta(seconds=i), policy_version=version,
                                        user_hash="a" * 16))  # fmt: skip
    events.append(Feedback.from_raw(f"{version}-r1", "down", time=at, policy_version=version, user_hash="b" * 16))
    FeedbackStore(engine).apply_batch(events)
    try:
        m = StoreMetrics(engine).read(version, at - timedelta(seconds=1))
        assert (m.ratings, m.ups, m.downs) == (2, 1, 1), m
    finally:
        engine.dispose()


# --- an operator's off-plan weight --------------------------------------------------------------------
FOUR_STEPS = replace(PLAN, steps=(0.05, 0.2, 0.5, 1.0))


def adoptions(rig: Rig, vid: str) -> list[Any]:
    return [a for a in rig.registry.audit(version_id=vid) if a.action == "canary_adopt"]


def test_an_off_plan_weight_is_adopted_once_and_a_rollback_is_still_carried_out(tmp_path: Path,
                                                                                database_url: str) -> None:  # fmt: skip
    """An operator sets 30 % with steps 5/20/50/100 %: the controller adopts it once (as step 1, at 30 %,
    audited) and then decides again every tick; here the canary turns out worse and is rolled back."""
    with make_rig(tmp_path, database_url, FOUR_STEPS) as rig:
        vid = rig.register("off-plan")
        assert rig.tick(vid) == "start"
        assert rig.http.post(f"/admin/policies/{vid}/weight", json={"weight": 0.3}).status_code == 200
        assert rig.tick(vid) == "adopt"
        [adopt] = adoptions(rig, vid)
        assert adopt.details is not None and adopt.details["from"] == {"step": 0, "weight": 0.05}
        assert adopt.details["to"] == {"step": 1, "weight": 0.3} and adopt.actor == "canary-controller"
        assert rig.version(vid)["weight"] == pytest.approx(0.3), "the operator's weight stands"
        for _ in range(3):
            rig.clock.advance(5)
            assert rig.tick(vid) == "hold", "adopted once: the same weight is not adopted again"
        rig.serve("seed", 200, 0.6)
        rig.serve(vid, 60, 0.2)
        assert rig.tick(vid) == "rollback", rig.last
        assert rig.version(vid)["status"] == "rolled_back" and len(adoptions(rig, vid)) == 1


def test_an_off_plan_weight_with_failing_evidence_is_rolled_back_at_once(tmp_path: Path, database_url: str) -> None:
    with make_rig(tmp_path, database_url, FOUR_STEPS) as rig:
        vid = rig.register("off-plan-failing")
        rig.tick(vid)
        rig.serve("seed", 200, 0.6)
        rig.serve(vid, 60, 0.2)
        rig.registry.set_weight(vid, 0.3, "op:someone")  # in the same instant as the failing evidence
        assert rig.tick(vid) == "rollback" and adoptions(rig, vid) == []


def test_an_adopted_weight_steps_on_to_the_next_plan_weight(tmp_path: Path, database_url: str) -> None:
    with make_rig(tmp_path, database_url, FOUR_STEPS) as rig:
        vid = rig.register("off-plan-good")
        rig.tick(vid)
        rig.registry.set_weight(vid, 0.3, "op:someone")
        assert rig.tick(vid) == "adopt"
        rig.serve("seed", 200, 0.6)
        rig.serve(vid, 60, 0.9, reward=0.8)
        rig.clock.advance(70)
        assert rig.tick(vid) == "promote_step", rig.last
        assert rig.version(vid)["weight"] == pytest.approx(0.5)
        state = CanaryState.of(rig.registry.get(vid))
        assert state is not None and (state.step, state.weight) == (2, 0.5)
        rig.clock.advance(1)
        assert rig.tick(vid) == "hold" and len(adoptions(rig, vid)) == 1


# --- a decision must not act on a canary that changed after the analysis -------------------------------
def _tick_overtaken_by(rig: Rig, monkeypatch: pytest.MonkeyPatch, operator_action: str, vid: str) -> Any:
    """Give ``vid`` evidence that passes its step, then tick with the operator's ``operator_action`` (abort /
    pause) landing after the tick's analysis and before its action; returns the tick's result."""
    rig.serve("seed", 200, 0.6)
    rig.serve(vid, 60, 0.9, reward=0.8)
    rig.clock.advance(70)
    analyzer = rig.controller.analyzer  # shared with the operator API, whose action analyses too
    original, fired = analyzer.reports, []

    def reports(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if not fired:
            fired.append(True)
            resp = rig.http.post(f"/admin/canary/{vid}/{operator_action}", json={"reason": "operator was quicker"})
            assert resp.status_code == 200, resp.text
        return out

    monkeypatch.setattr(analyzer, "reports", reports)
    [result] = rig.controller.tick()
    return result


def test_promote_after_an_operators_abort_is_refused(tmp_path: Path, database_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with make_rig(tmp_path, database_url, replace(PLAN, steps=(1.0,))) as rig:
        vid = rig.register("aborted")
        assert rig.tick(vid) == "start"
        result = _tick_overtaken_by(rig, monkeypatch, "abort", vid)
        assert result.action == "error" and result.error is not None and "HTTP 409" in result.error, result
        assert "rolled_back" in result.error
        assert rig.version(vid)["status"] == "rolled_back" and rig.version("seed")["status"] == "stable"
        assert not [a for a in rig.registry.audit(version_id=vid) if a.action == "promote"]


def test_a_step_after_an_operators_pause_is_refused(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    vid = rig.register("paused-late")
    rig.tick(vid)
    result = _tick_overtaken_by(rig, monkeypatch, "pause", vid)
    assert result.action == "error" and result.error is not None and "is paused" in result.error, result
    assert rig.version(vid)["weight"] == pytest.approx(0.1) and rig.version(vid)["status"] == "canary"
    monkeypatch.undo()
    assert rig.tick(vid) == "hold" and rig.last == "paused by an operator"


def test_a_force_promote_racing_an_abort_does_not_promote_the_rolled_back_version(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CanaryService checks "is a canary" when the request starts; an abort that lands before the promote
    itself must make the promote fail (the registry checks it again in its transaction)."""
    vid = rig.register("raced")
    rig.tick(vid)
    service = rig.canary_service
    original = service._numbers

    async def numbers_then_aborted(version_id: str) -> dict[str, Any]:
        out = await original(version_id)
        await asyncio.to_thread(rig.registry.rollback, version_id, "op:other", {"reason": "the other operator"})
        return out

    monkeypatch.setattr(service, "_numbers", numbers_then_aborted)
    resp = rig.http.post(f"/admin/canary/{vid}/promote")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "precondition_failed", resp.text
    assert rig.version(vid)["status"] == "rolled_back" and rig.version("seed")["status"] == "stable"


# --- gateway counters: unreadable ticks start no window; the error rate at 100 % ----------------------
def test_unreadable_gateway_counters_start_and_step_nothing(tmp_path: Path, database_url: str) -> None:
    counters = StubCounters()
    with make_rig(tmp_path, database_url, counters=counters) as rig:
        vid = rig.register("blind")
        counters.value = None
        assert rig.tick(vid) == "hold" and "unreadable" in rig.last
        assert rig.version(vid)["weight"] == 0.0 and CanaryState.of(rig.registry.get(vid)) is None
        counters.value = {"seed": [1000.0, 2.0]}
        assert rig.tick(vid) == "start"
        state = CanaryState.of(rig.registry.get(vid))
        assert state is not None and state.baseline == {"seed": [1000.0, 2.0]} == state.rollout_baseline

        rig.serve("seed", 200, 0.6)
        rig.serve(vid, 60, 0.9, reward=0.8)
        rig.clock.advance(70)
        counters.value = None  # the step would pass, but its error rate is unknown
        assert rig.tick(vid) == "hold" and "unreadable" in rig.last, rig.last
        assert rig.version(vid)["weight"] == pytest.approx(0.1)
        [report] = rig.http.get("/admin/canary").json()["data"]
        assert report["gateway_metrics_unreadable"] is True
        assert report["metrics"]["error_rate"]["outcome"] == "inconclusive"
        counters.value = {"seed": [1500.0, 2.0], vid: [60.0, 0.0]}
        assert rig.tick(vid) == "promote_step", rig.last
        state = CanaryState.of(rig.registry.get(vid))
        assert state is not None and state.baseline == counters.value, "the new window's baseline is a real read"


def _walk_to_the_last_step(rig: Rig, counters: StubCounters, vid: str) -> None:
    """Start, pass steps 10 % and 50 % with healthy error counters (the stable serves most requests)."""
    counters.value = {"seed": [0.0, 0.0]}
    assert rig.tick(vid) == "start"
    for n, (seed_attempts, canary_attempts) in enumerate([(900, 100), (1400, 600)]):
        rig.serve("seed", 200, 0.6)
        rig.serve(vid, 60, 0.9, reward=0.8)
        rig.clock.advance(70)
        counters.value = {"seed": [float(seed_attempts), 1.0], vid: [float(canary_attempts), 0.0]}
        assert rig.tick(vid) == "promote_step", (n, rig.last)
    assert rig.version(vid)["weight"] == pytest.approx(1.0)


def test_a_canary_failing_its_calls_at_100_percent_is_rolled_back_not_promoted(tmp_path: Path,
                                                                                database_url: str) -> None:  # fmt: skip
    """At 100 % the stable only serves the canary's fallbacks: since the step began it has 30 attempts, under
    the 40 the condition needs; its counters since the rollout began have plenty to compare with."""
    counters = StubCounters()
    with make_rig(tmp_path, database_url, counters=counters) as rig:
        vid = rig.register("fails-at-100")
        _walk_to_the_last_step(rig, counters, vid)
        rig.serve(vid, 60, 0.9, reward=0.8)  # the users who got answers still like them
        rig.clock.advance(70)
        counters.value = {"seed": [1430.0, 1.0], vid: [700.0, 30.0]}  # 30 of 100 canary calls failed, fell back
        assert rig.tick(vid) == "rollback", rig.last
        details = next(a for a in rig.registry.audit(version_id=vid) if a.action == "rollback").details or {}
        error_rate = details["metrics"]["error_rate"]
        assert error_rate["outcome"] == "failure" and error_rate["n_stable"] == 1430 and error_rate["n_canary"] == 100


def test_a_healthy_canary_at_100_percent_with_error_counters_is_promoted(tmp_path: Path, database_url: str) -> None:
    counters = StubCounters()
    with make_rig(tmp_path, database_url, counters=counters) as rig:
        vid = rig.register("healthy-at-100")
        _walk_to_the_last_step(rig, counters, vid)
        rig.serve(vid, 60, 0.9, reward=0.8)
        rig.clock.advance(70)
        counters.value = {"seed": [1400.0, 1.0], vid: [700.0, 0.0]}
        assert rig.tick(vid) == "promote", rig.last
