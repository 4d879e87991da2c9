"""`flywheel bench gateway`: what Flywheel adds to a request, next to what the LiteLLM proxy adds.

For each backend (a zero-latency stub, to isolate the proxy's own cost; real vLLM on the seed policy;
and, when asked for, ``paced``: the stub answering after a fixed delay, so that each proxy's CPU per
request is measured at a model server's request rate without the model server's noise) the same
request is sent four ways — straight to the backend, through Flywheel, through LiteLLM, and through
the barest Python pass-through (``bare_proxy``: the floor any Python hop pays here) — with wrk, at
each concurrency. The paths are measured interleaved, point by point, in one run, so a busy neighbour
on a shared machine slows all of them alike. Added latency is the path's percentile minus the direct
one at the same concurrency; max throughput is the best requests/s over the concurrencies tried.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import psutil
import typer
from rich.console import Console

from flywheel.bench import services
from flywheel.bench.bare_proxy import start_bare_proxy
from flywheel.bench.litellm_proxy import start_litellm_proxy
from flywheel.bench.loadgen import LoadGenError, WrkResult, run_wrk, wrk_path
from flywheel.bench.options import int_list
from flywheel.bench.report import provenance, write_section
from flywheel.bench.summary import Point, markdown_section, print_tables
from flywheel.settings import Settings

PROMPT = "Say hello to the benchmark."
BACKENDS = ("stub", "vllm", "paced")


@dataclass
class Target:
    """One path to load: where to send, with which key."""

    path: str
    url: str
    api_key: str | None
    pid: int | None = None  # the proxy's process, whose CPU per request is recorded (None: direct)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def pick_seed_model(settings: Settings, console: Console) -> Path:
    """The real seed policy if it is built and valid, else the tiny fixture preset under var/bench."""
    from policies.seed.build import SeedConfig, ensure_seed_model, is_valid_seed_model

    if is_valid_seed_model(settings.seed_model_dir, SeedConfig.default()):
        return settings.seed_model_dir
    fixture_dir = settings.var_dir / "bench" / "seed-fixture"
    console.print(f"[yellow]no valid seed model at {settings.seed_model_dir}; using the fixture preset at {fixture_dir}")
    return ensure_seed_model(fixture_dir, SeedConfig.fixture(), console=console)


def request_body(model: str, max_tokens: int) -> dict[str, object]:
    """Identical on every path; greedy, so vLLM generates the same tokens whichever path asked."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of ``pid`` and its children (LiteLLM serves from a worker process)."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in (proc, *proc.children(recursive=True)):
            times = p.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return None


def _median_result(results: list[WrkResult]) -> WrkResult:
    """Per-metric median over rounds (one round: that round), errors summed."""
    if len(results) == 1:
        return results[0]
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return WrkResult(
        requests=sum(r.requests for r in results),
        duration_s=sum(r.duration_s for r in results),
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=errors,
    )


def measure_backend(
    backend: services.Backend,
    targets: list[Target],
    body: dict[str, object],
    concurrencies: list[int],
    duration_s: float,
    warmup_s: float,
    rounds: int,
    work: Path,
    console: Console,
) -> list[Point]:
    """Every (concurrency × path) point, the paths interleaved inside each round."""
    payload = json.dumps(body, separators=(",", ":"))
    points: list[Point] = []
    for c in concurrencies:
        per_path: dict[str, list[WrkResult]] = {t.path: [] for t in targets}
        cpu_per_path: dict[str, list[float]] = {t.path: [] for t in targets}
        for _ in range(rounds):
            for t in targets:
                url = f"{t.url}/v1/chat/completions"
                common = {"api_key": t.api_key, "script_dir": work / "wrk", "concurrency": c}
                if warmup_s > 0:
                    run_wrk(url, payload, duration_s=warmup_s, **common)  # type: ignore[arg-type]
                cpu_before = _cpu_seconds(t.pid)
                result = run_wrk(url, payload, duration_s=duration_s, **common)  # type: ignore[arg-type]
                cpu_after = _cpu_seconds(t.pid)
                per_path[t.path].append(result)
                cpu_note = ""
                if cpu_before is not None and cpu_after is not None and result.requests > 0:
                    cpu_per_path[t.path].append(1000 * (cpu_after - cpu_before) / result.requests)
                    cpu_note = f"  CPU {cpu_per_path[t.path][-1]:.3f} ms/req"
                console.print(
                    f"  {backend.name:5} c={c:<3} {t.path:8} {result.rps:9.0f} req/s  "
                    f"p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms{cpu_note}"
                    + (f"  [red]{result.failed} failed" if result.failed else "")
                )
        points += [
            Point(backend.name, path, c, _median_result(rs),
                  statistics.median(cpu_per_path[path]) if cpu_per_path[path] else None)
            for path, rs in per_path.items()
        ]  # fmt: skip
    return points


def bench_one_backend(
    name: str,
    settings: Settings,
    opts: dict[str, object],
    console: Console,
) -> tuple[list[Point], int]:
    """Start the backend, Flywheel and LiteLLM in front of it, check each answers, then measure.
    Returns the points and how many processes each proxy ran."""
    work = settings.var_dir / "bench"
    with contextlib.ExitStack() as stack:
        console.print(f"[bold]{name}[/]: starting backend and the proxies in front of it …")
        if name == "stub":
            backend = services.start_stub(stack, work / "stub")
        elif name == "paced":
            delay_ms = float(opts["paced_ms"])  # type: ignore[arg-type]
            backend = services.start_stub(stack, work / "paced", delay_ms=delay_ms)
        else:
            model_dir = pick_seed_model(settings, console)
            backend = services.start_vllm(stack, work / "vllm", model_dir, settings)
        workers = int(opts["workers"]) or backend.proxy_core_count  # type: ignore[call-overload]
        console.print(f"  each proxy runs {workers} process(es)")
        gw = services.start_flywheel(stack, work / f"flywheel-{name}", backend,
                                     extra_env={"FLYWHEEL_WORKERS": str(workers)})  # fmt: skip
        targets = [Target("direct", backend.url, None), Target("flywheel", gw.url, gw.api_key, gw.process.pid)]
        if opts["litellm"]:
            # stopped by `stack` from its spawn on, even if interrupted while it starts
            proxy = start_litellm_proxy(stack, work / "litellm-venv", work / f"litellm-{name}", backend.model,
                                        backend.url, workers=workers)  # fmt: skip
            backend.keep_off(proxy.process.pid)  # off vLLM's cores, as Flywheel runs
            targets.append(Target("litellm", proxy.url, proxy.api_key, proxy.process.pid))
        if opts["bare"]:
            bare = start_bare_proxy(stack, work / f"bare-{name}", backend.url, workers=workers)
            backend.keep_off(bare.process.pid)
            targets.append(Target("bare", bare.url, None, bare.process.pid))
        body = request_body(backend.model, int(opts["max_tokens"]))  # type: ignore[call-overload]
        for t in targets:
            services.check_answers(t.url, t.api_key, body, expect_flywheel=t.path == "flywheel")
        points = measure_backend(
            backend, targets, body,
            concurrencies=opts["concurrency"],  # type: ignore[arg-type]
            duration_s=float(opts["duration"]),  # type: ignore[arg-type]
            warmup_s=float(opts["warmup"]),  # type: ignore[arg-type]
            rounds=int(opts["rounds"]),  # type: ignore[call-overload]
            work=work, console=console,
        )  # fmt: skip
        return points, workers


def run(
    concurrency: str = typer.Option("1,8,32", help="comma-separated concurrencies (open connections)"),
    duration: float = typer.Option(
        10.0, min=1.0, help="seconds measured per point (backend × path × concurrency); wrk runs whole seconds"
    ),
    backends: str = typer.Option(
        "stub,vllm",
        help="comma-separated: stub (zero-latency), vllm (seed policy), paced (the stub answering after --paced-ms)",
    ),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="page whose `gateway` section is rewritten"),
    warmup: float = typer.Option(2.0, min=0.0, help="seconds of unrecorded load before each point"),
    rounds: int = typer.Option(1, min=1, help="repeat every point; the median of the rounds is reported"),
    max_tokens: int = typer.Option(16, min=1, help="max_tokens of each request (what vLLM generates)"),
    litellm: bool = typer.Option(True, "--litellm/--no-litellm", help="also measure the LiteLLM proxy"),
    bare: bool = typer.Option(True, "--bare/--no-bare", help="also measure the barest Python pass-through"),
    paced_ms: float = typer.Option(
        200.0, min=1.0, help="how long the paced backend takes per chat completion (vLLM here: ~200 ms at c=32)"
    ),
    write: bool = typer.Option(True, "--write/--no-write", help="write the section to --out"),
    workers: int = typer.Option(
        0, min=0,
        help="processes each proxy runs (all proxies alike); 0: one per core the proxies may use",
    ),
) -> None:
    """Added latency (p50/p99) and max throughput of each path, over a stub, vLLM or a paced stub."""
    levels = int_list(concurrency, "--concurrency")  # bad input first: one line, before anything starts
    chosen = _csv(backends)
    unknown = set(chosen) - set(BACKENDS)
    if unknown or not chosen:
        what = f"unknown backend(s): {', '.join(sorted(unknown))}" if unknown else "no backend named"
        raise typer.BadParameter(f"{what} (choose from {', '.join(BACKENDS)})", param_hint="--backends")
    console = Console()
    try:
        wrk_path()
    except LoadGenError as exc:
        console.print(f"[red]{exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    settings = Settings()
    opts: dict[str, object] = {
        "concurrency": levels, "duration": duration, "warmup": warmup, "rounds": rounds,
        "max_tokens": max_tokens, "litellm": litellm, "bare": bare, "workers": workers, "paced_ms": paced_ms,
    }  # fmt: skip
    points: list[Point] = []
    workers_by_backend: dict[str, int] = {}
    for name in chosen:
        measured, workers_by_backend[name] = bench_one_backend(name, settings, opts, console)
        points += measured
    print_tables(points, console)
    if write:
        section = markdown_section(points, provenance(), duration_s=duration, rounds=rounds, max_tokens=max_tokens,
                                   workers=workers_by_backend,
                                   paced_ms=paced_ms if "paced" in chosen else None)  # fmt: skip
        write_section(out, "gateway", section)
        console.print(f"wrote the gateway section of {out}")
