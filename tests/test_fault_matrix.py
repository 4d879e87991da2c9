"""The fault matrix (issue #8) with real processes: each case breaks one part and writes what it observed.

Every case appends a JSON line to ``<tmp>/fault-matrix.jsonl`` (and to ``$FLYWHEEL_FAULT_MATRIX_OUT``
when set) and prints it; docs/operations.md "Fault matrix" summarises a run. The broker cases (paused
with SIGSTOP under load, stopped and restarted) live in tests/test_feedback_faults.py.

- vLLM killed mid-stream: a second vLLM of this test's own serves a ``kind: full`` canary; a stream
  pinned to it is cut by SIGKILL of its process group;
- database unavailable for 10 s: gateway and consumer reach PostgreSQL through a TCP proxy the test
  stops and starts (the shared PostgreSQL itself keeps running);
- slow backend: a stub that answers after seconds, a short upstream timeout and a small in-flight cap;
- disk full for the spool: the spool on a 256 KiB tmpfs while the broker is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from sqlalchemy import func, select

from deploy.broker import EmbeddedBroker
from deploy.canary.admin_client import AdminClient
from deploy.canary.controller import CanaryController
from deploy.canary.live import CanaryAnalyzer
from deploy.canary.metrics import GatewayCounters, StoreMetrics
from deploy.canary.plan import RolloutPlan
from feedback.store_models import FeedbackRow
from flywheel.db import make_engine
from flywheel.procs import free_port
from flywheel.settings import Settings
from policies.registry import PolicyRegistry
from policies.vllm_server import VLLMServer, VLLMServerConfig
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle, mint_token, post_ratings_sync, private_topics
from tests.fixtures.gateway import GatewayHandle
from tests.fixtures.vllm import vllm_test_settings

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

UNLIMITED = {"FLYWHEEL_FEEDBACK_RATE_PER_S": "1000000", "FLYWHEEL_FEEDBACK_RATE_BURST": "1000000"}
HI = [{"role": "user", "content": "How do I restore a file?"}]


def observe(tmp_path: Path, case: str, **observed: Any) -> None:
    """One line per case: the test's results file, the optional shared file, and stdout."""
    line = json.dumps({"case": case, **observed}, sort_keys=True, default=str)
    targets = [tmp_path / "fault-matrix.jsonl"]
    if os.environ.get("FLYWHEEL_FAULT_MATRIX_OUT"):
        targets.append(Path(os.environ["FLYWHEEL_FAULT_MATRIX_OUT"]))
    for target in targets:
        with target.open("a") as out:
            out.write(line + "\n")
    print(f"FAULT MATRIX {line}")


def metric(gw: GatewayHandle, name: str, **labels: str) -> float:
    """Sum of one metric family's samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def chat(http: httpx.Client, user: str | None = None, **extra: Any) -> httpx.Response:
    body = {"model": "flywheel", "messages": HI, "max_tokens": 4, "temperature": 0, "grounding": False,
            **({"user": user} if user else {}), **extra}  # fmt: skip
    return http.post("/v1/chat/completions", json=body)


def chat_client(gw: GatewayHandle, timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=timeout)


# --- vLLM killed mid-stream, and a canary whose backend was killed -------------------------------


@pytest.fixture
def second_vllm(seed_model_dir: Path, tmp_path: Path) -> Iterator[VLLMServer]:
    """A vLLM server of this test's own (the session one must survive), stopped at the end whatever happened."""
    with VLLMServer(VLLMServerConfig.from_settings(vllm_test_settings(tmp_path / "vllm-b"), seed_model_dir)) as server:
        yield server


def test_vllm_killed_mid_stream_then_the_dead_canary_is_rolled_back(
    second_vllm: VLLMServer, gateway_factory: Callable[..., GatewayHandle], seed_model_dir: Path, tmp_path: Path
) -> None:
    # No output filters: this test is about the backend dying, and a refusal by the output guard (which
    # the fixture model's 900-token ramble can draw) ends the stream cleanly. In a full suite on an
    # AVX512-BF16 host the stream once ended cleanly after one chunk; whether the guard or an upstream
    # EOF without [DONE] (now an error in PolicyClient) ended it was not recorded.
    gw = gateway_factory("killed", FLYWHEEL_SAFETY_OUTPUT_FILTERS="", **private_topics())
    with gw.admin() as admin:
        created = admin.post("/admin/policies", json={
            "kind": "full", "path": str(seed_model_dir), "parent": "seed", "endpoint": second_vllm.url,
            "served_model_name": second_vllm.config.served_model_name})  # fmt: skip
        assert created.status_code == 201, created.text
    canary = created.json()["id"]

    # The controller, as `flywheel canary watch` builds it, with a plan small enough for a test.
    settings = Settings(canary_steps=[0.5, 1.0], canary_min_latency_samples=20, canary_min_ratings_per_step=1000,
                        canary_gateway_metrics_urls=[f"{gw.url}/metrics"])  # fmt: skip
    engine = make_engine(gw.database_url)
    analyzer = CanaryAnalyzer(PolicyRegistry(engine), StoreMetrics(engine),
                              GatewayCounters(settings.canary_gateway_metrics_urls), RolloutPlan.from_settings(settings))
    admin_client = AdminClient(gw.url, gw.admin_key)
    controller = CanaryController(analyzer, admin_client)
    try:
        first = controller.tick()  # starts the rollout: weight 0.5, counters baseline
        assert [t.action for t in first if t.version_id == canary], first

        # 1. A long stream pinned to the canary; SIGKILL its vLLM's process group after the first chunks.
        client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model=canary, messages=HI, max_tokens=900, temperature=0, stream=True,
            extra_body={"ignore_eos": True, "grounding": False},
        )
        # The SDK returns once the gateway sent its headers, which it does only after vLLM's first chunk:
        # the upstream stream is open and generating (900 tokens, EOS ignored), so this kill is mid-stream.
        # (Waiting for content chunks is not reliable: generation may stall on a busy host.)
        chunks, error = 0, None
        started = time.monotonic()
        os.killpg(second_vllm.pid, signal.SIGKILL)  # type: ignore[arg-type]
        killed_at = time.monotonic()
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks += 1
        except openai.APIError as exc:
            error = exc
        error_after_s = time.monotonic() - killed_at
        assert isinstance(error, openai.APIError), f"no error after the kill: {chunks} chunks, stream ended cleanly"
        # The client's 30 s timeout is only a hang guard: the error must be the gateway's, not that timeout.
        assert not isinstance(error, openai.APITimeoutError), f"the stream hung after the kill: {error!r}"
        wait_until(lambda: not second_vllm.alive(), 10, "the killed vLLM to be gone")
        stream_errors = metric(gw, "flywheel_errors_total", policy_version=canary)
        stream_status = metric(gw, "flywheel_requests_total", policy_version=canary, status="stream_error")
        assert stream_errors >= 1 and stream_status == 1
        assert gw.process.alive()

        # 2. Routed traffic with the canary's backend dead: every answer comes from stable (fallback).
        with chat_client(gw) as http, ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: chat(http, user=f"fm-user-{i}"), range(120)))
        statuses = sorted({r.status_code for r in answers})
        versions = sorted({r.json()["flywheel"]["policy_version"] for r in answers if r.status_code == 200})
        fallbacks = metric(gw, "flywheel_canary_fallbacks_total", policy_version=canary)
        assert statuses == [200] and versions == ["seed"], (statuses, versions)
        assert fallbacks >= 20

        # 3. The controller rolls the canary back on its error rate.
        decisions: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ticks = [t for t in controller.tick() if t.version_id == canary]
            decisions += [f"{t.action}: {t.reason}" for t in ticks]
            if any(t.action == "rollback" for t in ticks):
                break
            time.sleep(0.5)
        with gw.admin() as admin:
            status = {v["id"]: v for v in admin.get("/admin/policies").json()["data"]}[canary]["status"]
        assert status == "rolled_back", decisions
        assert "error_rate" in decisions[-1], decisions
    finally:
        admin_client.close()
        engine.dispose()
    observe(tmp_path, "vllm_killed_mid_stream",
            client=f"openai.{type(error).__name__} after {chunks} chunks, {error_after_s:.2f}s after SIGKILL",
            error_message=str(error)[:160], gateway_errors_total=stream_errors,
            requests_total_stream_error=stream_status, stream_wall_s=round(time.monotonic() - started, 2))  # fmt: skip
    observe(tmp_path, "canary_backend_killed", routed_requests=len(answers), statuses=statuses,
            answered_by=versions, canary_fallbacks=fallbacks, controller=decisions[-1][:200], status=status)


# --- database unavailable for 10 s -----------------------------------------------------------------


class TcpProxy:
    """A TCP proxy on its own event-loop thread: ``down()`` closes the port and every open connection
    (clients see resets, then refused connects), ``up()`` listens on the same port again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self.writers |= {client_w, up_w}
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))
        self.writers -= {client_w, up_w}

    async def _up(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def up(self) -> None:
        self._call(self._up())

    def down(self) -> None:
        self._call(self._down())

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the shared PostgreSQL, and this test's database URL through it."""
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.up()
    base, name = postgres_url.rsplit("/", 1)
    scheme, rest = base.split("://", 1)
    user = rest.split("@", 1)[0]
    try:
        yield proxy, f"{scheme}://{user}@127.0.0.1:{proxy.port}/{name}"
    finally:
        proxy.close()


def test_database_unavailable_for_10s_chat_keeps_serving_and_events_catch_up(
    pg_proxy: tuple[TcpProxy, str], gateway_factory: Callable[..., GatewayHandle],
    consumer_for: Callable[..., ConsumerHandle], tmp_path: Path,
) -> None:  # fmt: skip
    proxy, url = pg_proxy
    gw = gateway_factory("db-outage", FLYWHEEL_DATABASE_URL=url, FLYWHEEL_REGISTRY_CACHE_S="1.0",
                         **UNLIMITED, **private_topics())  # fmt: skip
    consumer = consumer_for(gw)
    response_ids: list[str] = []
    chat_status: dict[str, list[int]] = {"before": [], "during": [], "after": []}
    rate_status: list[int] = []
    ready_during: list[int] = []

    def drive(phase: str, seconds: float, http: httpx.Client) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            resp = chat(http, user=f"db-{len(response_ids)}")
            chat_status[phase].append(resp.status_code)
            if resp.status_code == 200:
                fw = resp.json()["flywheel"]
                response_ids.append(fw["response_id"])
                rated = http.post("/v1/feedback", json={"response_id": fw["response_id"],
                                                        "feedback_token": fw["feedback_token"], "rating": "up"})
                rate_status.append(rated.status_code)
            if phase == "during":
                ready_during.append(httpx.get(f"{gw.url}/readyz", timeout=5).status_code)
            time.sleep(0.1)

    with chat_client(gw, timeout=30) as http:
        drive("before", 2, http)
        proxy.down()
        down_at = time.monotonic()
        try:
            drive("during", 10, http)
        finally:
            proxy.up()
        outage_s = time.monotonic() - down_at
        drive("after", 2, http)

    started = time.monotonic()

    def stored() -> tuple[int, int]:
        with consumer.store.engine.connect() as conn:
            ratings = conn.execute(select(func.count(), func.count(func.distinct(FeedbackRow.event_id)))).one()
        interactions = sum(1 for rid in response_ids if (consumer.store.get_interaction(rid) or {}).get("interaction"))
        return interactions, ratings[0] if ratings[0] == ratings[1] else -1

    wait_until(lambda: stored() == (len(response_ids), len(response_ids)), 120,
               f"{len(response_ids)} interactions and ratings in PostgreSQL")  # fmt: skip
    catch_up_s = time.monotonic() - started
    assert set(chat_status["during"]) == {200}, chat_status["during"]
    assert set(rate_status) == {202}
    assert set(ready_during) == {200}, ready_during  # ready on its last routing table: the pod stays in its Service
    assert gw.process.alive() and consumer.process.alive()
    observe(tmp_path, "database_unavailable_10s", outage_s=round(outage_s, 1),
            chat_during={s: chat_status["during"].count(s) for s in set(chat_status["during"])},
            ratings={s: rate_status.count(s) for s in set(rate_status)},
            readyz_during={s: ready_during.count(s) for s in set(ready_during)},
            stored_after=f"{len(response_ids)} interactions + {len(response_ids)} ratings, each once",
            catch_up_s_after_restore=round(catch_up_s, 1),
            consumer_reconnects=consumer_counter(consumer, "flywheel_consumer_reconnects_total"),
            consumer_store_retries=consumer_counter(consumer, "flywheel_consumer_store_retries_total"))


def consumer_counter(consumer: ConsumerHandle, name: str) -> float:
    """One counter of the consumer's own /metrics (0 when it has not been created yet)."""
    lines = httpx.get(consumer.metrics_url, timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


# --- slow backend --------------------------------------------------------------------------------


class SlowBackend:
    """An OpenAI-shaped chat backend that answers after ``delay_s``; counts concurrent chat requests
    (including ones whose caller already hung up: it does not notice)."""

    def __init__(self, delay_s: float) -> None:
        backend = self
        self.delay_s = delay_s
        self.active = 0
        self.peak = 0
        self.total = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._json({"object": "list", "data": [{"id": "seed", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with backend.lock:
                    backend.active += 1
                    backend.total += 1
                    backend.peak = max(backend.peak, backend.active)
                try:
                    time.sleep(backend.delay_s)  # keeps sleeping when the caller hangs up (vLLM would abort)
                    self._json({"id": "slow", "object": "chat.completion", "created": 0, "model": "seed",
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"},
                                             "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with backend.lock:
                        backend.active -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_slow_backend_times_out_with_504_and_excess_load_gets_429_without_pile_up(
    gateway_factory: Callable[..., GatewayHandle], tmp_path: Path
) -> None:
    slow = SlowBackend(delay_s=5.0)
    try:
        gw = gateway_factory("slow", FLYWHEEL_VLLM_URL=slow.url, FLYWHEEL_UPSTREAM_TIMEOUT_S="1",
                             FLYWHEEL_MAX_IN_FLIGHT="8", ready_path="/healthz", **private_topics())  # fmt: skip
        with chat_client(gw, timeout=30) as http:
            t0 = time.monotonic()
            one = chat(http)
            one_s = time.monotonic() - t0
        assert one.status_code == 504, one.text
        err = one.json()["error"]
        assert set(err) >= {"message", "type", "code"} and "Traceback" not in one.text  # a 504: the timeout fired

        wait_until(lambda: slow.active == 0, 15, "the stub to finish the timed-out request")
        slow.peak = 0
        rss_before = psutil.Process(gw.process.pid).memory_info().rss  # type: ignore[arg-type]
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)  # timeout=30: a hang guard
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=30,
                          limits=limits) as http, ThreadPoolExecutor(64) as pool:  # fmt: skip
            gauge: list[float] = []
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    gauge.append(metric(gw, "flywheel_requests_in_flight"))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            timed = list(pool.map(lambda _: (chat(http), time.monotonic() - t0), range(192)))
            burst_s = time.monotonic() - t0
            sampling.set()
            sampler.join(10)
        codes = [r.status_code for r, _ in timed]
        by_code = {c: codes.count(c) for c in sorted(set(codes))}
        slowest_429 = max((s for r, s in timed if r.status_code == 429), default=0.0)
        rss_after = psutil.Process(gw.process.pid).memory_info().rss  # type: ignore[arg-type]
        wait_until(lambda: metric(gw, "flywheel_requests_in_flight") == 0, 15, "no chat request in flight")
        in_flight_after = metric(gw, "flywheel_requests_in_flight")
        assert set(by_code) <= {429, 504} and by_code.get(429, 0) > 0, by_code
        assert all(r.json()["error"]["type"] for r, _ in timed)  # OpenAI-shaped either way
        assert max(gauge) <= 8, f"{max(gauge)} chat requests in flight (cap 8)"
        assert slow.peak <= 8 + by_code.get(504, 0), slow.peak  # admitted ones only, abandoned ones included
        assert in_flight_after == 0
        assert gw.process.alive()
    finally:
        slow.close()
    observe(tmp_path, "slow_backend", backend_delay_s=5.0, upstream_timeout_s=1, max_in_flight=8,
            single=f"{one.status_code} {err['type']}/{err['code']} after {one_s:.2f}s",
            burst=f"192 requests, 64 at a time: {by_code} in {burst_s:.1f}s; slowest 429 {slowest_429:.2f}s",
            gateway_in_flight_peak=max(gauge), backend_peak_concurrency=slow.peak, backend_requests=slow.total, in_flight_after=in_flight_after,
            gateway_rss_mb=f"{rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f}")  # fmt: skip


# --- disk full for the spool ---------------------------------------------------------------------


@contextmanager
def tiny_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    if done.returncode != 0:  # mounting needs CAP_SYS_ADMIN (root, or a privileged container)
        if os.environ.get("CI"):
            pytest.fail(f"the disk-full case must run in CI, but a tmpfs cannot be mounted: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def test_spool_disk_full_gateway_keeps_answering(
    make_broker: Callable[..., EmbeddedBroker], gateway_factory: Callable[..., GatewayHandle], tmp_path: Path
) -> None:
    own = make_broker()
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        gw = gateway_factory("spool-full", FLYWHEEL_KAFKA_BOOTSTRAP=own.bootstrap,
                             FLYWHEEL_SPOOL_PATH=str(tiny / "events.db"), **UNLIMITED, **private_topics())  # fmt: skip
        own.stop()  # from now on every event goes to the spool on the 256 KiB filesystem
        filler = "x" * 1500
        rate_codes: list[int] = []
        chat_codes: list[int] = []
        with chat_client(gw, timeout=30) as http:
            for round_ in range(8):
                results = post_ratings_sync(gw, [
                    {"response_id": f"full-{round_}-{i}", "feedback_token": mint_token(f"full-{round_}-{i}"),
                     "rating": "up", "comment": filler} for i in range(100)], concurrency=16)  # fmt: skip
                rate_codes += [r.status for r in results]
                chat_codes += [chat(http, user=f"full-{round_}-{i}").status_code for i in range(5)]
        free_kb = os.statvfs(tiny).f_bavail * os.statvfs(tiny).f_frsize // 1024
        log = (gw.var_dir / "gateway.log").read_text(errors="replace")
        spool_lines = [line for line in log.splitlines() if "spool" in line.lower() and
                       any(w in line.lower() for w in ("full", "error", "fail", "no space"))]  # fmt: skip
        tracebacks = log.count("Traceback")
        alive = gw.process.alive()
        healthz = httpx.get(f"{gw.url}/healthz", timeout=5).status_code
        ratings = {c: rate_codes.count(c) for c in sorted(set(rate_codes))}
        chats = {c: chat_codes.count(c) for c in sorted(set(chat_codes))}
        observe(tmp_path, "spool_disk_full", tmpfs="256k", broker="stopped", ratings_posted=len(rate_codes),
                ratings=ratings, chats=chats, free_kb_after=free_kb, gateway_alive=alive, healthz=healthz,
                log_tracebacks=tracebacks, log_example=(spool_lines[0][:240] if spool_lines else None))  # fmt: skip
        gw.process.stop()
    assert alive and healthz == 200
    assert set(chats) == {200}, chats
    assert 503 in ratings or 507 in ratings, ratings  # a full spool refuses ratings it cannot keep durable
    assert set(ratings) <= {202, 503, 507}, ratings
    assert spool_lines, "no clear spool error in the gateway log"
