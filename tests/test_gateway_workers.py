"""Several gateway processes on one port (`flywheel serve --workers N`), in front of the real vLLM.

What a worker pool must keep true that one process got for free: ``/metrics`` counts every worker's
requests whichever worker answers the scrape; each worker owns a spool of its own; the seed version is
registered once; a worker that dies is replaced and its replacement takes back its spool.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedback.spool import Spool, SpoolLockedError
from flywheel.db import make_engine
from gateway.spool_slot import slot_path
from policies.registry import PolicyRegistry
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import post_ratings_sync
from tests.fixtures.gateway import GatewayHandle, start_gateway

pytestmark = [pytest.mark.vllm, pytest.mark.broker]


@pytest.fixture(scope="module")
def pool(  # type: ignore[no-untyped-def]
    tmp_path_factory, vllm_server, seed_model_dir, broker, gateway_shared_env
) -> Iterator[GatewayHandle]:
    handle = start_gateway(
        tmp_path_factory.mktemp("workers"), vllm_server.url, seed_model_dir, vllm_server.config.served_model_name,
        broker.bootstrap, {"FLYWHEEL_WORKERS": "2"}, shared=gateway_shared_env,
    )
    yield handle
    handle.process.stop()


def workers(gw: GatewayHandle) -> set[int]:
    """The live worker processes (uvicorn spawns them with multiprocessing; its resource tracker is not
    one, and a killed worker is a zombie until the supervisor reaps it)."""
    found = set()
    for proc in gw.process.descendants():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(proc.cmdline()):
                found.add(proc.pid)
    return found


def port(gw: GatewayHandle) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def metrics_dir(gw: GatewayHandle) -> Path:
    return gw.var_dir / "metrics" / f"gateway-{port(gw)}"


def flywheel_object(gw: GatewayHandle, max_tokens: int = 2) -> dict:
    """One routed chat request on a connection of its own (so the kernel may hand it to either worker);
    returns the answer's ``flywheel`` object."""
    with openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0) as client:
        answer = client.chat.completions.create(
            model="flywheel", messages=[{"role": "user", "content": "Hi"}], max_tokens=max_tokens, temperature=0,
            extra_body={"grounding": False},
        )  # fmt: skip
    return dict(answer.model_extra["flywheel"])  # type: ignore[index]


def ask(gw: GatewayHandle) -> str:
    return str(flywheel_object(gw)["response_id"])


def ask_many(gw: GatewayHandle, n: int) -> int:
    with ThreadPoolExecutor(8) as threads:
        return len(set(threads.map(lambda _: ask(gw), range(n))))


def requests_counted(gw: GatewayHandle) -> float:
    """flywheel_requests_total summed over its labels, from one scrape on a connection of its own."""
    text = httpx.get(f"{gw.url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text) if family.name == "flywheel_requests"
        for sample in family.samples if sample.name == "flywheel_requests_total"
    )  # fmt: skip


def served_by(gw: GatewayHandle) -> set[int]:
    """Workers that have counted a request: prometheus_client writes counter_<pid>.db on the first."""
    return {int(p.stem.split("_")[1]) for p in metrics_dir(gw).glob("counter_*.db")}


def test_every_worker_serves_and_metrics_count_all_of_them(pool: GatewayHandle) -> None:
    wait_until(lambda: len(workers(pool)) == 2, 60, "two gateway workers")
    sent = 0
    for _ in range(20):  # until the kernel has handed connections to both workers
        sent += ask_many(pool, 16)
        if workers(pool) <= served_by(pool):
            break
    assert workers(pool) <= served_by(pool), f"{served_by(pool)} served; workers {workers(pool)}"
    # Every scrape, whichever worker answers it, counts every worker's requests.
    assert [requests_counted(pool) for _ in range(6)] == [sent] * 6


def test_each_worker_owns_a_spool_and_the_seed_is_registered_once(pool: GatewayHandle) -> None:
    wait_until(lambda: len(workers(pool)) == 2, 60, "two gateway workers")
    base = pool.var_dir / "spool" / f"gateway-{port(pool)}.db"
    for slot in (0, 1):
        with pytest.raises(SpoolLockedError):
            Spool(slot_path(base, slot))  # held by a live worker
    assert not slot_path(base, 2).exists()
    engine = make_engine(pool.database_url)
    try:
        seeds = [e for e in PolicyRegistry(engine).audit(limit=1000) if e.action == "seed"]
    finally:
        engine.dispose()
    assert len(seeds) == 1


def test_a_killed_worker_is_replaced_and_takes_its_spool_back(pool: GatewayHandle) -> None:
    wait_until(lambda: len(workers(pool)) == 2, 60, "two gateway workers")
    before = workers(pool)
    ask_many(pool, 8)
    counted = requests_counted(pool)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(workers(pool)) == 2 and victim not in workers(pool), 90, "a replacement worker")
    wait_until(lambda: httpx.get(f"{pool.url}/readyz", timeout=10).status_code == 200, 60, "ready again")
    assert ask_many(pool, 16) == 16
    base = pool.var_dir / "spool" / f"gateway-{port(pool)}.db"
    assert not slot_path(base, 2).exists()  # the replacement took the dead worker's slot back
    # the dead worker's requests still count: totals never go backwards when a worker is replaced
    assert requests_counted(pool) == counted + 16


def versions_served(gw: GatewayHandle, n: int) -> set[str]:
    """The policy versions that ``n`` routed requests, each on a connection of its own, were answered by."""
    with ThreadPoolExecutor(8) as threads:
        return set(threads.map(lambda _: str(flywheel_object(gw, max_tokens=1)["policy_version"]), range(n)))


def test_an_operator_change_reaches_every_worker_live(
    pool: GatewayHandle, vllm_server, seed_model_dir: Path  # type: ignore[no-untyped-def]
) -> None:
    """Made through whichever worker answers the admin call, read by each from the registry."""
    full = {"kind": "full", "path": str(seed_model_dir), "parent": "seed", "endpoint": vllm_server.url,
            "served_model_name": vllm_server.config.served_model_name}  # fmt: skip
    with pool.admin() as admin:
        created = admin.post("/admin/policies", json=full)
        assert created.status_code == 201, created.text
        canary = created.json()["id"]
        assert admin.post(f"/admin/policies/{canary}/weight", json={"weight": 1.0}).status_code == 200
        wait_until(lambda: versions_served(pool, 24) == {canary}, 30, "every worker routing to the canary")
        assert admin.post(f"/admin/policies/{canary}/rollback", json={"reason": "workers test"}).status_code == 200
        wait_until(lambda: versions_served(pool, 24) == {"seed"}, 30, "every worker back on stable")


def test_workers_without_a_configured_secret_accept_each_others_feedback_tokens(  # type: ignore[no-untyped-def]
    tmp_path: Path, vllm_server, seed_model_dir, broker, gateway_shared_env
) -> None:
    """With no FLYWHEEL_FEEDBACK_SECRET the supervisor draws one for all its workers: a token issued by one
    worker is accepted by another (each drawing its own refused most ratings)."""
    env = {"FLYWHEEL_WORKERS": "2", "FLYWHEEL_FEEDBACK_SECRET": "", "FLYWHEEL_GROUNDING_ENABLED": "false",
           "FLYWHEEL_MAX_BEST_OF_N": "1", "FLYWHEEL_FEEDBACK_RATE_PER_S": "1000",
           "FLYWHEEL_FEEDBACK_RATE_BURST": "1000"}
    gw = start_gateway(tmp_path, vllm_server.url, seed_model_dir, vllm_server.config.served_model_name,
                       broker.bootstrap, env, shared=gateway_shared_env)  # fmt: skip
    try:
        wait_until(lambda: len(workers(gw)) == 2, 60, "two gateway workers")
        answers: list[dict] = []
        for _ in range(20):  # until both workers have issued tokens
            with ThreadPoolExecutor(8) as threads:
                answers += threads.map(lambda _: flywheel_object(gw, max_tokens=1), range(16))
            if workers(gw) <= served_by(gw):
                break
        assert workers(gw) <= served_by(gw)
        bodies = [{"response_id": a["response_id"], "feedback_token": a["feedback_token"], "rating": "up"}
                  for a in answers]  # fmt: skip
        statuses = Counter(r.status for r in post_ratings_sync(gw, bodies, concurrency=8))
        assert statuses == {202: len(bodies)}, statuses
    finally:
        gw.process.stop()


def test_serve_rejects_a_bad_worker_count_in_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "serve", "--workers", "0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "workers" in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_a_dead_workers_in_flight_gauge_is_dropped_and_a_live_ones_kept(tmp_path: Path) -> None:
    from gateway.workers import forget_dead_workers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    for pid in (gone, str(os.getpid())):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    forget_dead_workers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone}.db", f"counter_{os.getpid()}.db", f"gauge_livesum_{os.getpid()}.db"]
    )
