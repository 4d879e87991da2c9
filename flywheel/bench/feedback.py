"""`flywheel bench feedback`: ratings/s one gateway process accepts with durable acknowledgement,
request latency, and how long a rating takes to reach the store.

Set-up, all real and on this machine: a fresh embedded broker, the zero-latency stub as the policy
backend (ratings never call it; the gateway only needs a stable version to start), one `flywheel
serve` process with default producer settings (202 = Kafka ack or fsync'd spool), and a
FeedbackConsumer writing a SQLite store in this process. wrk posts pre-minted ratings (valid tokens
for distinct responses, 500 raters) in a closed loop; the rate limiter is set high so that the
endpoint, not the limiter, is measured (its code still runs on every request). Store lag = commit
time in the store minus the event's creation time in the gateway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import typer
from rich.console import Console
from rich.table import Table

from flywheel.bench import services
from flywheel.bench.feedback_load import (
    LagRecordingStore, RunningConsumer, percentile, rating_bodies, run_wrk_pool, wait_for, write_pool_script,
)  # fmt: skip
from flywheel.bench.loadgen import LoadGenError, WrkResult, wrk_path
from flywheel.bench.options import int_list
from flywheel.bench.report import provenance, write_section
from flywheel.cpus import format_cpu_list, pin_this_process
from flywheel.procs import ManagedProcess, free_port
from flywheel.settings import Settings

SECRET = "bench-feedback-secret"
ACCEPTED = 'flywheel_feedback_requests_total{outcome="accepted"}'
TARGET_RPS = 3000.0
TARGET_LAG_P99_S = 1.0
STORE_WAIT_S = 120.0  # how long a point waits for the store to hold every rating it got accepted


@dataclass
class FeedbackPoint:
    concurrency: int
    wrk: WrkResult
    accepted: int  # from the gateway's own counter
    stored: int  # ratings of this point the consumer committed (within STORE_WAIT_S)
    lag_p50_ms: float | None  # over the stored ratings only: see `missing`
    lag_p99_ms: float | None
    cpu_ms_per_rating: float | None  # gateway process CPU (all threads) per accepted rating

    @property
    def missing(self) -> int:
        """Accepted ratings that were not in the store when the wait ended: their lag is unknown but
        longer than the wait, so they fail the lag target rather than drop out of the percentiles."""
        return max(0, self.accepted - self.stored)

    @property
    def per_core_rps(self) -> float | None:
        """What one fully available core would sustain at this CPU cost (the machine is shared)."""
        return 1000 / self.cpu_ms_per_rating if self.cpu_ms_per_rating else None


def _accepted(url: str) -> int:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(ACCEPTED + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _settled_accepted(url: str, quiet_s: float = 0.3, timeout_s: float = 10.0) -> int:
    """The accepted count once it stops moving: requests in flight when wrk hung up still finish (and
    count) after it returns, and their ratings must not be booked to the next point."""
    deadline = time.monotonic() + timeout_s
    last = _accepted(url)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = _accepted(url)
        if now == last:
            return now
        last = now
    return last


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _own_core() -> tuple[frozenset[int], frozenset[int]] | None:
    """(the gateway's core, everything else's) when this process may use two cores or more."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (frozenset(cores[-1:]), frozenset(cores[:-1])) if len(cores) >= 2 else None


def _start_gateway(
    stack: contextlib.ExitStack, work: Path, backend: services.Backend, bootstrap: str, cpus: frozenset[int] | None
) -> tuple[str, int]:
    port = free_port()
    env = {
        **os.environ,
        **({"FLYWHEEL_CPUS": format_cpu_list(cpus)} if cpus else {}),
        "FLYWHEEL_HOST": "127.0.0.1", "FLYWHEEL_PORT": str(port), "FLYWHEEL_VAR_DIR": str(work),
        "FLYWHEEL_DATABASE_URL": f"sqlite:///{(work / 'gateway.db').resolve()}",
        "FLYWHEEL_VLLM_URL": backend.url, "FLYWHEEL_SEED_MODEL_PATH": str(backend.model_dir.resolve()),
        "FLYWHEEL_SEED_MODEL_NAME": backend.model, "FLYWHEEL_API_KEYS": services.BENCH_API_KEY,
        "FLYWHEEL_KAFKA_BOOTSTRAP": bootstrap, "FLYWHEEL_FEEDBACK_SECRET": SECRET,
        "FLYWHEEL_FEEDBACK_RATE_PER_S": "1000000000", "FLYWHEEL_FEEDBACK_RATE_BURST": "1000000000",
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    argv = [sys.executable, "-m", "flywheel.cli", "serve"]
    proc = ManagedProcess(f"flywheel-{port}", argv, work / "gateway.log", env=env)
    proc.start()
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: _http_ok(f"{url}/readyz"), timeout_s=90)
    assert proc.pid is not None
    return url, proc.pid


def measure(
    url: str, pid: int, script: Path, store: LagRecordingStore, concurrency: int, duration_s: float, console: Console,
    store_wait_s: float = STORE_WAIT_S,
) -> FeedbackPoint:  # fmt: skip
    """One wrk run; then wait for the store to catch up and read this run's lags (ratings created from
    the run's start on: a straggler of the previous point is neither this point's nor counted twice)."""
    store.take_lags()
    started = datetime.now(UTC)  # the gateway stamps each rating on this host's clock
    before, cpu_before = _accepted(url), _cpu_s(pid)
    result = run_wrk_pool(f"{url}/v1/feedback", script, concurrency, duration_s)
    accepted, cpu = _settled_accepted(url) - before, _cpu_s(pid) - cpu_before
    wait_for(lambda: store.seen(started) >= accepted, timeout_s=store_wait_s)
    lags = store.take_lags(started)
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    point = FeedbackPoint(concurrency, result, accepted, len(lags),
                          p50 * 1000 if p50 is not None else None, p99 * 1000 if p99 is not None else None,
                          cpu * 1000 / accepted if accepted else None)  # fmt: skip
    console.print(
        f"  c={concurrency:<4} {result.rps:8.0f} ratings/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
        f"  lag p50 {_ms(point.lag_p50_ms)}  p99 {_ms(point.lag_p99_ms)}  stored {len(lags)}/{accepted}"
        f"  gateway CPU {_ms(point.cpu_ms_per_rating, 3)}/rating"
        + (f"  [red]{result.failed} failed" if result.failed else "")
        + (f"  [red]{point.missing} not stored after {store_wait_s:.0f} s" if point.missing else "")
    )
    return point


def _ms(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} ms"


def placement_text(placement: tuple[frozenset[int], frozenset[int]] | None) -> str:
    if placement is None:
        return "all processes share the machine's cores"
    gateway, rest = (format_cpu_list(cpus) for cpus in placement)
    return (f"the gateway process runs alone on core {gateway}; wrk, the broker and the consumer share "
            f"core(s) {rest}")  # fmt: skip


def markdown(points: list[FeedbackPoint], duration_s: float, header: str, placement: str) -> str:
    best = max(points, key=lambda p: p.wrk.rps if not p.wrk.failed else 0.0)
    worst_lag = max((p.lag_p99_ms for p in points if p.lag_p99_ms is not None), default=None)
    missing = sum(p.missing for p in points)
    rows = "\n".join(
        f"| {p.concurrency} | {p.wrk.rps:.0f} | {p.wrk.p50_ms:.2f} | {p.wrk.p99_ms:.2f} | {p.wrk.failed} | "
        f"{p.stored}/{p.accepted} | {_ms(p.lag_p50_ms)} | {_ms(p.lag_p99_ms)} | {_ms(p.cpu_ms_per_rating, 3)} | "
        f"{p.per_core_rps or 0:.0f} |"
        for p in points
    )
    rps_ok = "met" if best.wrk.rps >= TARGET_RPS and not best.wrk.failed else "**not met**"
    lag_ok = "met" if worst_lag is not None and worst_lag <= TARGET_LAG_P99_S * 1000 and not missing else "**not met**"
    not_stored = (f"; {missing} accepted rating(s) not in the store {STORE_WAIT_S:.0f} s after their point, "
                  "each a lag beyond the target" if missing else "")  # fmt: skip
    return (
        "## Feedback endpoint: durable ratings per second and rating → store lag\n\n"
        f"{header}\n"
        "One `flywheel serve` process (default producer settings: a 202 means Kafka acked the rating or it "
        "was fsync'd into the local spool), the embedded broker, a consumer writing SQLite. wrk posts "
        f"pre-minted valid ratings in a closed loop, {duration_s:.0f} s per point after a warm-up; "
        f"{placement}.\n\n"
        "| connections | ratings/s (202) | p50 ms | p99 ms | non-202 / errors | stored / accepted | "
        "lag p50 | lag p99 | gateway CPU / rating | ratings/s per gateway core |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n\n"
        f"- target ≥ {TARGET_RPS:.0f} ratings/s per gateway process: {rps_ok} "
        f"(best {best.wrk.rps:.0f}/s at {best.concurrency} connections)\n"
        f"- target store lag p99 ≤ {TARGET_LAG_P99_S:.0f} s: {lag_ok} (worst p99 {_ms(worst_lag)} over the stored "
        f"ratings{not_stored})\n"
        "- 'ratings/s per gateway core' = 1 / (gateway process CPU per accepted rating, all its threads): "
        "what the process would sustain with a core to itself, all of it busy; the measured rate is lower "
        "when the load leaves the gateway idle part of the time (too few connections to cover the producer's "
        "linger and the broker's ack) or other work takes its core.\n"
    )


def print_table(points: list[FeedbackPoint], console: Console) -> None:
    table = Table(title="POST /v1/feedback (durable)")
    for col in ("conns", "ratings/s", "p50 ms", "p99 ms", "failed", "stored/acc", "lag p50", "lag p99", "CPU/rating"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(str(p.concurrency), f"{p.wrk.rps:.0f}", f"{p.wrk.p50_ms:.2f}", f"{p.wrk.p99_ms:.2f}",
                      str(p.wrk.failed), f"{p.stored}/{p.accepted}", _ms(p.lag_p50_ms), _ms(p.lag_p99_ms),
                      _ms(p.cpu_ms_per_rating, 3))  # fmt: skip
    console.print(table)


def run(
    concurrency: str = typer.Option("64,128,256", help="comma-separated wrk connection counts"),
    duration: float = typer.Option(10.0, min=1.0, help="seconds measured per point (wrk runs whole seconds)"),
    warmup: float = typer.Option(3.0, min=0.0, help="seconds of unrecorded load before the first point"),
    pool: int = typer.Option(5000, min=1, help="distinct pre-minted ratings wrk cycles through"),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="page whose `feedback` section is rewritten"),
    write: bool = typer.Option(True, "--write/--no-write", help="write the section to --out"),
    own_core: bool = typer.Option(
        True, "--own-core/--shared-cores",
        help="give the gateway a core to itself (broker, consumer and wrk share the others)",
    ),
) -> None:
    """Ratings accepted/s with durable ack, p50/p99 latency, and rating → store lag p50/p99."""
    from deploy.broker import EmbeddedBroker
    from feedback.topics import ensure_topics, topics_from_settings
    from flywheel.db import create_schema, make_engine

    levels = int_list(concurrency, "--concurrency")  # bad input first: one line, before anything starts
    console = Console()
    try:
        wrk_path()
    except LoadGenError as exc:
        console.print(f"[red]{exc}; this benchmark needs wrk (a Python client would measure itself)")
        raise typer.Exit(2) from None
    placement = _own_core() if own_core else None
    work = _fresh_dir(Settings().var_dir.resolve() / "bench" / "feedback")
    points: list[FeedbackPoint] = []
    with contextlib.ExitStack() as stack:
        if placement is not None:  # first: the broker, stub, wrk and consumer threads started below inherit it
            stack.callback(pin_this_process, frozenset(os.sched_getaffinity(0)))  # back before the section
            pin_this_process(placement[1])  # is written: it names the cores this process may use
        broker = EmbeddedBroker("127.0.0.1", free_port(), work / "tansu.log")
        broker.start()
        stack.callback(broker.stop)
        broker.wait_ready()
        settings = Settings(kafka_bootstrap=broker.bootstrap, var_dir=work, consumer_batch_max=1000)
        ensure_topics(broker.bootstrap, topics_from_settings(settings))
        backend = services.start_stub(stack, work / "stub")
        gateway_cpus = placement[0] if placement else None
        url, pid = _start_gateway(stack, _fresh_dir(work / "gateway"), backend, broker.bootstrap, gateway_cpus)
        engine = make_engine(f"sqlite:///{work / 'store.db'}")
        stack.callback(engine.dispose)
        create_schema(engine)
        store = LagRecordingStore(engine)
        consumer = RunningConsumer(settings, store)
        stack.callback(consumer.close)
        script = write_pool_script(work / "wrk", rating_bodies(pool, SECRET), services.BENCH_API_KEY)
        console.print(f"[bold]feedback[/]: gateway {url}, broker {broker.bootstrap}; {placement_text(placement)}; "
                      f"warming up {warmup:.0f} s …")
        if warmup > 0:
            measure(url, pid, script, store, max(levels), warmup, console)
        points = [measure(url, pid, script, store, c, duration, console) for c in levels]
    print_table(points, console)
    if write:
        write_section(out, "feedback", markdown(points, duration, provenance(), placement_text(placement)))
        console.print(f"wrote the feedback section of {out}")
