"""`flywheel bench gateway`: wrk output parsing, the Lua script, the summary arithmetic and the docs section
replacement (pure), then, with real processes, the stub, the bare proxy and the command end to end. No
assertions on the figures: numbers come from the bench command only."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from flywheel.bench.feedback import FeedbackPoint, placement_text
from flywheel.bench.feedback import markdown as feedback_markdown
from flywheel.bench.loadgen import RESULT_MARKER, LoadGenError, WrkResult, lua_script, parse_wrk_output
from flywheel.bench.report import provenance, replace_section, write_section
from flywheel.bench.stub_server import build_routes
from flywheel.bench.summary import HEADERS, Point, added_ms, markdown_section, max_rps, rows, target_checks

WRK_TEXT = """\
Running 5s test @ http://127.0.0.1:9001/v1/chat/completions
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.33us  150.20us   9.81ms   91.02%
    Req/Sec    38.91k     2.10k   44.02k    70.00%
  Latency Distribution
     50%  380.00us
     75%  450.00us
     90%  520.00us
     99%    1.20ms
  387215 requests in 5.01s, 150.32MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  77288.42
Transfer/sec:     30.01MB
"""


def test_parse_text_report_converts_units_and_counts_errors() -> None:
    r = parse_wrk_output(WRK_TEXT)
    assert r.requests == 387215
    assert r.duration_s == pytest.approx(5.01)
    assert r.rps == pytest.approx(77288.42)
    assert r.p50_ms == pytest.approx(0.38)
    assert r.p90_ms == pytest.approx(0.52)
    assert r.p99_ms == pytest.approx(1.2)
    assert r.errors == {"read": 3, "timeout": 2, "status": 7}
    assert r.failed == 12


def test_done_line_wins_over_rounded_text() -> None:
    line = (
        f'{RESULT_MARKER} {{"requests":1000,"duration_us":2000000,"bytes":5,"p50_us":1234,"p90_us":2000,'
        '"p99_us":9876,"max_us":12000,"mean_us":1500.50,"connect":0,"read":0,"write":0,"status":0,"timeout":0}'
    )
    r = parse_wrk_output(WRK_TEXT + "\n" + line + "\n")
    assert r.rps == pytest.approx(500.0)
    assert (r.p50_ms, r.p99_ms, r.max_ms) == (pytest.approx(1.234), pytest.approx(9.876), pytest.approx(12.0))
    assert r.errors == {} and r.failed == 0


def test_unparseable_output_raises() -> None:
    with pytest.raises(LoadGenError):
        parse_wrk_output("wrk: connection refused\n")


def test_lua_script_quotes_body_and_key_safely() -> None:
    body = '{"content":"a ]] b ]=] c"}'
    script = lua_script(body, "sk-1")
    assert "[==[" + body + "]==]" in script  # a level no ']..]' inside the body can close
    assert 'wrk.headers["Authorization"] = [[Bearer sk-1]]' in script
    assert "Authorization" not in lua_script(body, None)


def test_stub_answers_are_valid_http_and_chat_completion() -> None:
    import json

    routes = build_routes("m")
    raw = routes[(b"POST", b"/v1/chat/completions")]
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert f"content-length: {len(payload)}".encode() in head
    data = json.loads(payload)
    assert data["object"] == "chat.completion" and data["model"] == "m"
    assert data["choices"][0]["message"]["role"] == "assistant"


def _pt(backend: str, path: str, c: int, rps: float, p50: float, p99: float) -> Point:
    return Point(backend, path, c, WrkResult(requests=1, duration_s=1, rps=rps, p50_ms=p50, p99_ms=p99))


def test_added_latency_throughput_and_targets() -> None:
    points = [
        _pt("stub", "direct", 1, 20000, 0.05, 0.2), _pt("stub", "flywheel", 1, 1500, 0.6, 1.5),
        _pt("stub", "litellm", 1, 150, 5.0, 9.0), _pt("stub", "direct", 32, 70000, 0.4, 2.0),
        _pt("stub", "flywheel", 32, 2500, 12.0, 11.0), _pt("stub", "litellm", 32, 200, 150.0, 300.0),
        _pt("vllm", "direct", 32, 100, 300.0, 400.0), _pt("vllm", "flywheel", 32, 96, 310.0, 420.0),
    ]  # fmt: skip
    assert added_ms(points, "stub", "flywheel", 1, "p50") == pytest.approx(0.55)
    assert added_ms(points, "stub", "flywheel", 32, "p99") == pytest.approx(9.0)
    assert added_ms(points, "vllm", "litellm", 32, "p50") is None
    assert max_rps(points, "stub", "flywheel") == 2500
    checks = target_checks(points)
    assert [c.ok for c in checks] == [True, True, True, True, True]
    assert checks[2].measured == pytest.approx(4.95 / 0.55)  # LiteLLM's added p50 over Flywheel's
    assert checks[3].measured == pytest.approx(2500 / 200)
    assert checks[4].measured == pytest.approx(0.96)


def test_targets_not_measured_are_none() -> None:
    checks = target_checks([_pt("stub", "direct", 1, 1, 0.1, 0.1), _pt("stub", "flywheel", 1, 1, 5.0, 6.0)])
    assert checks[0].ok is False
    assert [c.ok for c in checks[2:]] == [None, None, None]


def test_replace_section_keeps_other_sections(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    write_section(page, "gateway", "first")
    write_section(page, "trainer", "T")
    write_section(page, "gateway", "second $1 \\g<0>")  # replacement text is literal, not a regex template
    text = page.read_text()
    assert text.startswith("# Benchmarks")
    assert "first" not in text
    assert "<!-- bench:gateway -->\nsecond $1 \\g<0>\n<!-- /bench:gateway -->" in text
    assert "<!-- bench:trainer -->\nT\n<!-- /bench:trainer -->" in text
    assert text.count("<!-- bench:gateway -->") == 1


def test_replace_section_appends_to_existing_page_and_rejects_bad_names() -> None:
    assert replace_section("# Mine\n\ntext\n", "x", "body") == "# Mine\n\ntext\n\n<!-- bench:x -->\nbody\n<!-- /bench:x -->\n"
    with pytest.raises(ValueError):
        replace_section("", "bad name -->", "x")


def test_provenance_names_date_machine_and_command() -> None:
    text = provenance(["/x/bin/flywheel", "bench", "gateway", "--duration", "5"], now=dt.datetime(2026, 11, 25, 12, 0))
    assert "2026-11-25 12:00" in text
    assert "CPU cores" in text
    assert "`flywheel bench gateway --duration 5`" in text
    speed = re.search(r"`sum\(range\(10_000\)\)` in (\d+) µs", text)
    assert speed and int(speed.group(1)) > 0


def test_rows_show_the_proxy_cpu_per_request_only_where_measured() -> None:
    points = [_pt("stub", "direct", 1, 20000, 0.05, 0.2), _pt("stub", "flywheel", 1, 1500, 0.6, 1.5)]
    points[1].cpu_ms_per_request = 0.6666
    by_path = {row[1]: row for row in rows(points)}
    column = HEADERS.index("proxy CPU ms/req")
    assert (by_path["direct"][column], by_path["flywheel"][column]) == ("", "0.667")


def test_proxy_cpu_counts_the_process_and_its_children() -> None:
    import os
    import subprocess
    import sys
    import time

    import psutil

    from flywheel.bench.gateway import _cpu_seconds

    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        deadline = time.monotonic() + 20
        while (_cpu_seconds(child.pid) or 0) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (_cpu_seconds(child.pid) or 0) >= 0.5  # the child alone, while it sleeps on
        own = psutil.Process().cpu_times()
        with_children = _cpu_seconds(os.getpid())
        assert with_children is not None and with_children - (own.user + own.system) >= 0.5
    finally:
        child.kill()
        child.wait()
    assert _cpu_seconds(None) is None
    assert _cpu_seconds(child.pid) is None  # gone: not measured, rather than a wrong number


def _feedback_point(concurrency: int, rps: float, lag_p99_ms: float, failed: int = 0) -> FeedbackPoint:
    wrk = WrkResult(requests=int(rps * 10), duration_s=10.0, rps=rps, p50_ms=30.0, p99_ms=60.0,
                    errors={"non2xx": failed} if failed else {})  # fmt: skip
    return FeedbackPoint(concurrency, wrk, int(rps * 10), int(rps * 10), 40.0, lag_p99_ms, 0.25)


def test_feedback_section_judges_the_targets_on_the_best_clean_point() -> None:
    met = feedback_markdown([_feedback_point(64, 2100, 80), _feedback_point(128, 3400, 200)], 10, "hdr", "where")
    assert "per gateway process: met (best 3400/s at 128 connections)" in met
    assert "lag p99 ≤ 1 s: met (worst p99 200.0 ms over the stored ratings)" in met
    assert "10 s per point after a warm-up; where." in met
    failing = feedback_markdown([_feedback_point(128, 3400, 1200, failed=3), _feedback_point(64, 2100, 80)], 10, "", "")
    assert "**not met** (best 2100/s at 64 connections)" in failing  # a point with failures never counts
    assert "lag p99 ≤ 1 s: **not met**" in failing


def test_feedback_placement_names_the_gateways_core() -> None:
    assert placement_text(None) == "all processes share the machine's cores"
    text = placement_text((frozenset({1}), frozenset({0})))
    assert "alone on core 1" in text and "share core(s) 0" in text


def test_the_gateway_section_says_how_many_processes_each_proxy_ran() -> None:
    points = [_pt("stub", "direct", 1, 1000, 0.1, 0.2), _pt("stub", "flywheel", 1, 900, 0.9, 2.0)]
    section = markdown_section(points, "- date: now", duration_s=5, rounds=1, max_tokens=16,
                               workers={"stub": 2, "vllm": 1})  # fmt: skip
    assert "each run N processes on one port: 2 in front of `stub`, 1 in front of `vllm`" in section


def test_bare_path_is_listed_after_the_others_with_its_share_of_direct() -> None:
    from flywheel.bench.summary import summary_rows

    points = [
        _pt("vllm", "bare", 32, 94, 320.0, 430.0), _pt("vllm", "flywheel", 32, 88, 330.0, 440.0),
        _pt("vllm", "direct", 32, 100, 300.0, 400.0),
    ]  # fmt: skip
    assert [row[1] for row in rows(points)] == ["direct", "flywheel", "bare"]
    shares = {row[1]: row[3] for row in summary_rows(points)}
    assert shares == {"direct": "100.0%", "flywheel": "88.0%", "bare": "94.0%"}
    assert target_checks(points)[4].measured == pytest.approx(0.88)  # the target stays Flywheel's


def test_bare_proxy_forwards_and_every_worker_holds_the_port(tmp_path: Path) -> None:
    """Real processes: the stub behind a two-process bare proxy; both listen on the port, then all stop."""
    import contextlib
    import json

    import httpx
    import psutil

    from flywheel.bench.bare_proxy import start_bare_proxy
    from flywheel.bench.services import start_stub

    with contextlib.ExitStack() as stack:
        stub = start_stub(stack, tmp_path / "stub")
        bare = start_bare_proxy(stack, tmp_path / "bare", stub.url, workers=2)
        tree = [bare.process.pid, *(c.pid for c in psutil.Process(bare.process.pid).children(recursive=True))]
        assert len(tree) == 2
        body = {"model": stub.model, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=5) as client:
            answers = [client.post(f"{bare.url}/v1/chat/completions", json=body, headers={"Connection": "close"})
                       for _ in range(20)]  # fmt: skip
            missing = client.post(f"{bare.url}/v1/models")
        assert {a.status_code for a in answers} == {200}
        assert json.loads(answers[0].content)["object"] == "chat.completion"
        assert missing.status_code == 404
        port = int(bare.url.rsplit(":", 1)[1])
        listening = {pid for pid in tree for conn in psutil.Process(pid).net_connections("tcp")
                     if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}  # fmt: skip
        assert listening == set(tree)  # both processes hold the port (SO_REUSEPORT)
    assert not [pid for pid in tree if _alive(pid)]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as stopped); a process gone meanwhile is not alive."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_paced_stub_answers_chat_after_its_delay_and_everything_else_at_once(tmp_path: Path) -> None:
    """Real process: a chat answer waits for the delay (a timer: the stub keeps serving meanwhile), a
    client that leaves before its answer does not disturb the others, and the answer is the usual one."""
    import concurrent.futures
    import contextlib
    import json
    import socket
    import time

    import httpx

    from flywheel.bench.services import start_stub

    delay_s = 1.5
    with contextlib.ExitStack() as stack:
        stub = start_stub(stack, tmp_path / "paced", delay_ms=delay_s * 1000)
        assert stub.name == "paced"
        body = {"model": stub.model, "messages": [{"role": "user", "content": "hi"}]}
        host, port = stub.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as leaver:  # asks, then leaves before the answer
            leaver.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        with httpx.Client(timeout=10) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            chat = pool.submit(client.post, f"{stub.url}/v1/chat/completions", json=body)
            health = httpx.get(f"{stub.url}/health", timeout=5)
            assert health.status_code == 200 and not chat.done()  # answered while the chat answer waits
            answer = chat.result()
            waited = time.monotonic() - started
        assert answer.status_code == 200
        assert json.loads(answer.content)["object"] == "chat.completion"
        assert waited >= delay_s - 0.05  # a timer never fires early (beyond the clock's resolution)


def test_the_gateway_section_describes_the_paced_backend_only_when_measured() -> None:
    points = [_pt("paced", "direct", 32, 155, 201.0, 203.0), _pt("paced", "flywheel", 32, 150, 205.0, 215.0)]
    with_paced = markdown_section(points, "- date: now", duration_s=5, rounds=1, max_tokens=16,
                                  workers={"paced": 2}, paced_ms=200)  # fmt: skip
    assert "`paced` is the same stub answering each chat completion 200 ms after the request" in with_paced
    assert "| paced | flywheel | 32 | 150 |" in with_paced
    assert [c.ok for c in target_checks(points)] == [None] * 5  # the targets are judged on stub and vllm only
    without = markdown_section(points[:1], "- date: now", duration_s=5, rounds=1, max_tokens=16, workers={"stub": 2})
    assert "`paced`" not in without


def test_bench_gateway_command_measures_the_paced_backend_end_to_end(tmp_path: Path) -> None:
    """The command as an operator runs it (real stub, broker and gateway; wrk): every path answers, and the
    section it writes has the paced rows and says what the paced backend is. Figures are not judged."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/bootstrap installs it)")
    page = tmp_path / "benchmarks.md"
    env = {**os.environ, "FLYWHEEL_VAR_DIR": str(tmp_path / "var")}
    argv = [sys.executable, "-m", "flywheel.cli", "bench", "gateway", "--backends", "paced", "--paced-ms", "50",
            "--concurrency", "2", "--duration", "1", "--warmup", "0", "--rounds", "1", "--workers", "1",
            "--no-litellm", "--out", str(page)]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    section = page.read_text()
    assert "`paced` is the same stub answering each chat completion 50 ms after the request" in section
    measured = [line.split(" | ") for line in section.splitlines() if line.startswith("| paced | ")]
    points = [row for row in measured if len(row) == 10]  # the "every point" table
    assert sorted(row[1] for row in points) == ["bare", "direct", "flywheel"]
    assert all(row[2] == "2" and row[-1].rstrip(" |") == "0" for row in points)  # c=2, nothing failed


# --- reviewer fixes: failures never meet a target, missing ratings fail the lag, fair best-of-n order ---------


def _failing(backend: str, path: str, c: int, rps: float, p50: float, p99: float, **errors: int) -> Point:
    return Point(backend, path, c, WrkResult(requests=1000, duration_s=1, rps=rps, p50_ms=p50, p99_ms=p99,
                                             errors=errors))  # fmt: skip


def test_a_gateway_target_read_from_a_point_with_failed_requests_is_not_met() -> None:
    """Fast non-2xx answers would pass for throughput and low latency: the figures that would meet every
    target fail the ones that read a failing point, and the count is reported."""
    points = [
        _pt("stub", "direct", 1, 20000, 0.05, 0.2), _failing("stub", "flywheel", 1, 9000, 0.1, 0.3, status=40),
        _pt("stub", "litellm", 1, 150, 5.0, 9.0), _pt("stub", "direct", 32, 70000, 0.4, 2.0),
        _pt("stub", "flywheel", 32, 2500, 12.0, 11.0), _pt("stub", "litellm", 32, 200, 150.0, 300.0),
        _pt("vllm", "direct", 32, 100, 300.0, 400.0),
        _failing("vllm", "flywheel", 32, 99, 310.0, 420.0, timeout=2, read=1),  # socket errors count as well
    ]  # fmt: skip
    checks = target_checks(points)
    assert [c.ok for c in checks] == [False, True, False, False, False]
    assert [c.failed for c in checks] == [40, 0, 40, 40, 3]
    section = markdown_section(points, "- date: now", duration_s=5, rounds=1, max_tokens=16, workers={"stub": 1})
    assert "| stub: Flywheel added p50 at c=1 (ms) | 0.05 | ≤ 1 | **no** (40 failed requests) |" in section
    assert "| stub: Flywheel added p99 at c=32 (ms) | 9.00 | ≤ 10 | yes |" in section
    assert "| stub | flywheel | 9,000 | 12.9% | 45.0× | 40 |" in section  # max throughput names its failures


def test_feedback_ratings_missing_from_the_store_fail_the_lag_target() -> None:
    """Lags are measured over stored ratings only; one that never arrived must not drop out of the judgement."""
    complete = _feedback_point(128, 3400, 200)
    missing = FeedbackPoint(128, complete.wrk, accepted=34000, stored=33990, lag_p50_ms=40.0, lag_p99_ms=200.0,
                            cpu_ms_per_rating=0.25)  # fmt: skip
    assert complete.missing == 0 and missing.missing == 10
    text = feedback_markdown([missing], 10, "", "")
    assert "lag p99 ≤ 1 s: **not met** (worst p99 200.0 ms over the stored ratings; 10 accepted rating(s)" in text
    assert "lag p99 ≤ 1 s: met" in feedback_markdown([complete], 10, "", "")


def test_feedback_measure_counts_the_ratings_the_store_never_got(monkeypatch: pytest.MonkeyPatch) -> None:
    """measure() itself: the wait's deadline passes with 3 of 5 accepted ratings stored; the point says 2 are
    missing. A straggler of an earlier point, stored during this one, is not counted as this point's."""
    import flywheel.bench.feedback as fb
    from rich.console import Console

    class Store:
        def __init__(self) -> None:
            self.taken: list[object] = []

        def take_lags(self, since: object = None) -> list[float]:
            self.taken.append(since)
            return [0.01, 0.02, 0.03] if since is not None else [5.0]  # the unfiltered call drops leftovers

        def seen(self, since: object = None) -> int:
            assert since is not None  # only this point's ratings count towards the wait
            return 3

    wrk = WrkResult(requests=5, duration_s=1, rps=5, p50_ms=1.0, p99_ms=2.0)
    monkeypatch.setattr(fb, "run_wrk_pool", lambda *a, **k: wrk)
    monkeypatch.setattr(fb, "_accepted", lambda url: 100)
    monkeypatch.setattr(fb, "_settled_accepted", lambda url: 105)
    monkeypatch.setattr(fb, "_cpu_s", lambda pid: 1.0)
    store = Store()
    point = fb.measure("http://x", 1, Path("s.lua"), store, 4, 1.0, Console(quiet=True),  # type: ignore[arg-type]
                       store_wait_s=0.2)  # fmt: skip
    assert (point.accepted, point.stored, point.missing) == (5, 3, 2)
    assert point.lag_p99_ms == pytest.approx(30.0)
    assert store.taken[0] is None and store.taken[1] is not None


def test_the_lag_store_keeps_stragglers_of_an_earlier_point_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine

    from feedback.events import Feedback
    from feedback.store import FeedbackStore
    from flywheel.bench.feedback_load import LagRecordingStore

    monkeypatch.setattr(FeedbackStore, "apply_batch", lambda self, events: len(events))
    store = LagRecordingStore(create_engine("sqlite://"))
    start = dt.datetime.now(dt.UTC)
    old = Feedback(response_id="r0", rating=1.0, rating_raw="up", time=start - dt.timedelta(seconds=30))
    new = [Feedback(response_id=f"r{i}", rating=1.0, rating_raw="up") for i in (1, 2)]
    store.apply_batch([old, *new])
    assert store.seen() == 3 and store.seen(start) == 2
    lags = store.take_lags(start)
    assert len(lags) == 2 and all(0 <= lag < 5 for lag in lags)
    assert store.seen() == 0  # taken: forgotten, the straggler too


def test_best_of_n_order_rotates_so_no_k_is_always_first() -> None:
    from flywheel.bench.pipeline import order_text, request_order

    orders = [request_order([1, 2, 4, 8], i) for i in range(8)]
    assert [o[0] for o in orders] == [1, 2, 4, 8, 1, 2, 4, 8]
    assert all(sorted(o) == [1, 2, 4, 8] for o in orders)
    assert "(1, 2, 4, 8, then 2, 4, 8, 1, …)" in order_text([1, 2, 4, 8])
    assert "at n=8, unmeasured" in order_text([1, 2, 4, 8])


def test_best_of_n_timing_leaves_each_questions_cold_cost_to_an_unmeasured_request() -> None:
    """A fake gateway whose first request for a question costs 100 ms more (cold caches) and each
    candidate 10 ms: every timed sample is exactly 10·k ms, whichever k comes first."""
    from flywheel.bench.pipeline import timed_best_of_n

    now = [0.0]
    seen: set[str] = set()
    calls: list[tuple[str, int]] = []

    def ask(question: str, k: int) -> None:
        calls.append((question, k))
        now[0] += 0.010 * k + (0.100 if question not in seen else 0.0)
        seen.add(question)

    samples = timed_best_of_n(ask, ["q0", "q1", "q2"], [1, 2, 4, 8], requests=6, clock=lambda: now[0])
    assert {k: {round(v, 6) for v in vs} for k, vs in samples.items()} == {1: {10}, 2: {20}, 4: {40}, 8: {80}}
    assert all(len(v) == 6 for v in samples.values())
    assert calls[0] == ("q0", 8) and calls[5] == ("q1", 8)  # each question's warm-up, before its timed requests
    assert [calls[i * 5 + 1][1] for i in range(6)] == [1, 2, 4, 8, 1, 2]  # the first timed k rotates


def test_the_litellm_proxy_is_stopped_when_interrupted_while_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM, which the bench turns into one) during the readiness wait: the proxy, in a
    session of its own, is on the caller's ExitStack already and is stopped on the way out."""
    import contextlib

    import flywheel.bench.litellm_proxy as lp
    from flywheel.procs import ManagedProcess

    fake = tmp_path / "litellm"
    fake.write_text("#!/bin/sh\nexec sleep 300\n")
    fake.chmod(0o755)
    monkeypatch.setattr(lp, "ensure_litellm_venv", lambda venv, log: fake)
    started: list[ManagedProcess] = []

    def interrupted(self: ManagedProcess, *args: object, **kwargs: object) -> None:
        started.append(self)
        assert self.alive()
        raise KeyboardInterrupt

    monkeypatch.setattr(ManagedProcess, "wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt), contextlib.ExitStack() as stack:
        lp.start_litellm_proxy(stack, tmp_path / "venv", tmp_path / "work", "m", "http://127.0.0.1:1")
    (proc,) = started
    assert proc.pid is not None and not _alive(proc.pid)


def test_the_loop_bench_points_the_controller_at_its_own_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another stack's settings in the environment (or .env) must not reach the loop the bench drives:
    the canary controller would read that stack's error counters."""
    from flywheel.bench.loop import loop_settings
    from flywheel.bench.services import Flywheel
    from flywheel.procs import ManagedProcess

    monkeypatch.setenv("FLYWHEEL_CANARY_GATEWAY_METRICS_URLS", "http://10.0.0.9:8000/metrics")
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", "postgresql://elsewhere/flywheel")
    env = {"FLYWHEEL_VAR_DIR": str(tmp_path / "gw"), "FLYWHEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}"}
    gateway = Flywheel("http://127.0.0.1:4321", ManagedProcess("gw", ["true"], tmp_path / "gw.log", env=env))
    settings = loop_settings(gateway, tmp_path / "seed")
    assert settings.canary_gateway_metrics_urls == ["http://127.0.0.1:4321/metrics"]
    assert settings.database_url == env["FLYWHEEL_DATABASE_URL"] and settings.var_dir == tmp_path / "gw"
