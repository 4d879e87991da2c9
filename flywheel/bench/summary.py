"""Turn measured gateway-bench points into added latency, ratios vs LiteLLM, target checks and tables.

Pure functions over :class:`Point` lists (no processes, no clock), so the arithmetic is unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from flywheel.bench.loadgen import WrkResult

# Added latency below this is within wrk's resolution; ratios divide by at least this much.
MIN_ADDED_MS = 0.01


@dataclass
class Point:
    backend: str
    path: str  # "direct" | "flywheel" | "litellm" | "bare"
    concurrency: int
    result: WrkResult
    # CPU the proxy's processes (all threads, children included) spent per answered request: what the
    # proxy costs independent of how busy the shared machine was. None for direct, or not measured.
    cpu_ms_per_request: float | None = None


def _find(points: list[Point], backend: str, path: str, c: int) -> WrkResult | None:
    for p in points:
        if (p.backend, p.path, p.concurrency) == (backend, path, c):
            return p.result
    return None


def added_ms(points: list[Point], backend: str, path: str, c: int, pct: str) -> float | None:
    """Path percentile minus the direct percentile at the same concurrency (``pct`` is p50 or p99)."""
    through, direct = _find(points, backend, path, c), _find(points, backend, "direct", c)
    if through is None or direct is None:
        return None
    return float(getattr(through, f"{pct}_ms") - getattr(direct, f"{pct}_ms"))


def max_rps(points: list[Point], backend: str, path: str) -> float | None:
    rates = [p.result.rps for p in points if p.backend == backend and p.path == path]
    return max(rates) if rates else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None:
        return None
    return num / max(den, MIN_ADDED_MS)


def failed_requests(points: list[Point], backend: str, path: str, c: int | None = None) -> int:
    """Failed requests (non-2xx answers, socket errors, timeouts, as wrk counts them) of the points of
    ``backend``/``path`` (at concurrency ``c``, or all of them)."""
    return sum(p.result.failed for p in points
               if (p.backend, p.path) == (backend, path) and (c is None or p.concurrency == c))  # fmt: skip


@dataclass
class TargetCheck:
    name: str
    measured: float | None
    goal: str
    ok: bool | None  # None: not measured in this run
    # Failed requests in the points the figure was computed from: a fast error answer would count as
    # throughput and pull latency down, so a target read from such a point is never met.
    failed: int = 0


def target_checks(points: list[Point]) -> list[TargetCheck]:
    """The issue's acceptance targets, evaluated on this run's numbers (not met where a point they read failed)."""
    concs = sorted({p.concurrency for p in points})
    lo, hi = (concs[0], concs[-1]) if concs else (1, 32)
    fw_p50 = added_ms(points, "stub", "flywheel", lo, "p50")
    fw_p99 = added_ms(points, "stub", "flywheel", hi, "p99")
    lite_p50 = added_ms(points, "stub", "litellm", lo, "p50")
    lat_ratio = _ratio(lite_p50, max(fw_p50, MIN_ADDED_MS) if fw_p50 is not None else None)
    fw_rps, lite_rps = max_rps(points, "stub", "flywheel"), max_rps(points, "stub", "litellm")
    rps_ratio = fw_rps / lite_rps if fw_rps is not None and lite_rps else None
    v_fw, v_direct = max_rps(points, "vllm", "flywheel"), max_rps(points, "vllm", "direct")
    vllm_share = v_fw / v_direct if v_fw is not None and v_direct else None

    def failed(backend: str, paths: tuple[str, ...], c: int | None = None) -> int:
        return sum(failed_requests(points, backend, path, c) for path in paths)

    def check(name: str, value: float | None, goal: str, passed: bool, n_failed: int) -> TargetCheck:
        return TargetCheck(name, value, goal, None if value is None else passed and not n_failed, n_failed)

    return [
        check(f"stub: Flywheel added p50 at c={lo} (ms)", fw_p50, "≤ 1", fw_p50 is not None and fw_p50 <= 1,
              failed("stub", ("flywheel", "direct"), lo)),
        check(f"stub: Flywheel added p99 at c={hi} (ms)", fw_p99, "≤ 10", fw_p99 is not None and fw_p99 <= 10,
              failed("stub", ("flywheel", "direct"), hi)),
        check(f"stub: LiteLLM added p50 ÷ Flywheel's at c={lo}", lat_ratio, "≥ 5", (lat_ratio or 0) >= 5,
              failed("stub", ("flywheel", "litellm", "direct"), lo)),
        check("stub: Flywheel max req/s ÷ LiteLLM's", rps_ratio, "≥ 5", (rps_ratio or 0) >= 5,
              failed("stub", ("flywheel", "litellm"))),
        check("vllm: Flywheel max req/s ÷ direct", vllm_share, "≥ 0.95", (vllm_share or 0) >= 0.95,
              failed("vllm", ("flywheel", "direct"))),
    ]  # fmt: skip


def met_text(check: TargetCheck, no: str = "no") -> str:
    """The 'met' cell: yes / no / – (not measured), with the failed requests that made it a no."""
    if check.ok is None:
        return "–"
    if check.ok:
        return "yes"
    return f"{no} ({check.failed:,} failed requests)" if check.failed else no


PATH_ORDER = ("direct", "flywheel", "litellm", "bare")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def rows(points: list[Point]) -> list[list[str]]:
    """One row per point: backend, path, c, req/s, p50, p99, added p50, added p99, proxy CPU, failures."""
    out = []
    for p in sorted(points, key=lambda p: (p.backend, p.concurrency, PATH_ORDER.index(p.path))):
        r = p.result
        is_direct = p.path == "direct"
        out.append([
            p.backend, p.path, str(p.concurrency), _fmt(r.rps, 0), _fmt(r.p50_ms), _fmt(r.p99_ms),
            "" if is_direct else _fmt(added_ms(points, p.backend, p.path, p.concurrency, "p50")),
            "" if is_direct else _fmt(added_ms(points, p.backend, p.path, p.concurrency, "p99")),
            "" if p.cpu_ms_per_request is None else _fmt(p.cpu_ms_per_request, 3),
            str(r.failed),
        ])  # fmt: skip
    return out


HEADERS = [
    "backend", "path", "conc.", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
    "proxy CPU ms/req", "failed",
]  # fmt: skip


def summary_rows(points: list[Point]) -> list[list[str]]:
    """Per backend and path: max throughput, its share of direct and multiple of LiteLLM's, and the failed
    requests over the path's points (a max read from a failing point is not a clean figure)."""
    out = []
    for backend in sorted({p.backend for p in points}):
        direct, lite = max_rps(points, backend, "direct"), max_rps(points, backend, "litellm")
        for path in PATH_ORDER:
            best = max_rps(points, backend, path)
            if best is None:
                continue
            share = f"{best / direct:.1%}" if direct else "–"
            vs_lite = f"{best / lite:.1f}×" if lite and path != "litellm" else ""
            out.append([backend, path, _fmt(best, 0), share, vs_lite, str(failed_requests(points, backend, path))])
    return out


SUMMARY_HEADERS = ["backend", "path", "max req/s", "of direct", "× LiteLLM", "failed (all points)"]


def print_tables(points: list[Point], console: Console) -> None:
    for title, headers, body in (
        ("gateway bench: every point", HEADERS, rows(points)),
        ("max throughput", SUMMARY_HEADERS, summary_rows(points)),
    ):
        table = Table(title=title)
        for h in headers:
            table.add_column(h, justify="left" if h in ("backend", "path") else "right")
        for row in body:
            table.add_row(*row)
        console.print(table)
    targets = Table(title="targets")
    for h in ("target", "measured", "goal", "met"):
        targets.add_column(h)
    for t in target_checks(points):
        targets.add_row(t.name, _fmt(t.measured), t.goal, met_text(t, "[red]no"))
    console.print(targets)


def _md_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def workers_text(workers: dict[str, int]) -> str:
    """How many processes each proxy ran, per backend (Flywheel and LiteLLM always run as many)."""
    each = ", ".join(f"{n} in front of `{backend}`" for backend, n in workers.items())
    return (f"Flywheel (`flywheel serve --workers N`) and LiteLLM (`--num_workers N`) each run N processes on "
            f"one port: {each} (one per core the proxies may use, unless `--workers` says otherwise).")


def paced_text(paced_ms: float | None) -> str:
    """What the ``paced`` backend is, when the run measured it."""
    if paced_ms is None:
        return ""
    return (f"`paced` is the same stub answering each chat completion {paced_ms:g} ms after the request, so each "
            "proxy runs at about the request rate it has in front of vLLM (and its CPU per request is what it "
            "costs at that rate) without vLLM's round-to-round noise. ")


def markdown_section(
    points: list[Point], provenance: str, *, duration_s: float, rounds: int, max_tokens: int, workers: dict[str, int],
    paced_ms: float | None = None,
) -> str:
    checks = [[t.name, _fmt(t.measured), t.goal, met_text(t, "**no**")] for t in target_checks(points)]
    return "\n\n".join([
        "## Gateway overhead: direct vs Flywheel vs LiteLLM proxy vs a bare proxy",
        provenance.strip(),
        f"wrk, closed loop (each connection keeps one request in flight), {duration_s:g} s per point"
        f"{f', median of {rounds} rounds' if rounds > 1 else ''}, paths interleaved at each concurrency; "
        f"the same non-streaming request everywhere (`max_tokens={max_tokens}`, temperature 0). "
        "*Added* = path percentile − direct percentile at the same concurrency. "
        "`stub` is a zero-latency OpenAI stub (`flywheel.bench.stub_server`), isolating the proxy's own "
        "cost; `vllm` is vLLM on the seed policy. " + paced_text(paced_ms) + "LiteLLM is `litellm[proxy]==1.100.5`, "
        "plain pass-through (master key, no database, no callbacks). `bare` is the barest Python "
        "pass-through (`flywheel.bench.bare_proxy`: aiohttp server and client on uvloop, bytes forwarded "
        "unchanged, no auth, no parsing, no recording), the floor any Python hop pays here; it runs as "
        "many processes as Flywheel, on the same cores. " + workers_text(workers) + " "
        "wrk, the backend and the proxy "
        "share the machine's cores, so a proxy's CPU use also slows the load generator and the backend; "
        "in front of vLLM the proxies (and Flywheel's broker) run on the cores vLLM's CPU worker is not "
        "pinned to, and vLLM's floating threads (API server, busy-polling engine core) run at nice 10, "
        "as `flywheel up` runs them (`flywheel/cpus.py`). "
        "*Proxy CPU* = CPU time of the proxy's processes (all threads) per answered request during the point.",
        "### Targets",
        "A target is not met when any point it is computed from had failed requests (non-2xx answers, "
        "socket errors or timeouts, as wrk counts them): a fast error would pass for throughput and low "
        "latency. Failures per point are in the last column of the table of every point.",
        _md_table(["target", "measured", "goal", "met"], checks),
        "### Max throughput",
        _md_table(SUMMARY_HEADERS, summary_rows(points)),
        "### Every point",
        _md_table(HEADERS, rows(points)),
    ])  # fmt: skip
