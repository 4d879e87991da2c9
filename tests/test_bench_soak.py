"""`flywheel bench soak`: the pure analysis (windows, growth, drift, verdicts) on made-up data, and one
short real run of the whole stack on the fixture seed (vLLM + broker, about two minutes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.bench.soak_analysis import (
    RequestRecord, RssSample, build_windows, growth_pct, summarise, window_count, window_index,
)  # fmt: skip
from tests.fixtures.broker import wait_until

MIB = 1024 * 1024


def test_growth_pct_handles_missing_and_zero() -> None:
    assert growth_pct(100.0, 110.0) == pytest.approx(10.0)
    assert growth_pct(200.0, 150.0) == pytest.approx(-25.0)
    assert growth_pct(None, 1.0) is None
    assert growth_pct(0.0, 1.0) is None


def test_windows_absorb_a_short_tail_and_mark_warmup() -> None:
    assert window_count(125, 30) == 4
    assert window_index(124.9, 30, 4) == 3  # the 5 s tail belongs to the last full window
    assert window_index(-1, 30, 4) == 0
    windows = build_windows([], [], duration_s=125, window_s=30, warmup_s=45)
    assert [w.warmup for w in windows] == [True, True, False, False]  # 30-60 s straddles warm-up
    assert windows[-1].end == 125


def test_window_stats_count_latency_errors_and_rss_median() -> None:
    records = [RequestRecord("chat", t, 0.1 * (k + 1)) for k, t in enumerate([0, 1, 2, 3])]
    records += [RequestRecord("chat", 5, None, "timeout"), RequestRecord("feedback", 6, 0.02),
                RequestRecord("feedback", 7, None, "http_429")]  # fmt: skip
    samples = [RssSample(t, {"gateway": v * MIB}) for t, v in [(0, 100), (4, 300), (8, 200)]]
    (w,) = build_windows(records, samples, duration_s=10, window_s=10, warmup_s=0)
    assert (w.chat, w.feedback) == (5, 2)
    assert w.errors == {"chat:timeout": 1, "feedback:http_429": 1}
    assert w.chat_p50_ms == pytest.approx(200.0)  # nearest rank of 100, 200, 300, 400 ms
    assert w.chat_p99_ms == pytest.approx(400.0)
    assert w.feedback_p99_ms == pytest.approx(20.0)
    assert w.rss_median == {"gateway": 200 * MIB}


def _steady(
    duration: int, rss: dict[str, tuple[int, int]], p99: tuple[float, float]
) -> tuple[list[RequestRecord], list[RssSample]]:
    """Requests every second and RSS every 5 s, ramping linearly from the first value to the second."""
    records = [RequestRecord("chat", t, p99[0] + (p99[1] - p99[0]) * t / duration) for t in range(duration)]
    samples = [RssSample(t, {n: int(a + (b - a) * t / duration) for n, (a, b) in rss.items()})
               for t in range(0, duration, 5)]  # fmt: skip
    return records, samples


def test_summary_meets_targets_on_a_flat_run() -> None:
    records, samples = _steady(300, {"gateway": (500 * MIB, 505 * MIB), "vllm": (2000 * MIB, 2000 * MIB)},
                               (0.5, 0.52))  # fmt: skip
    summary = summarise(records, samples, duration_s=300, window_s=60, warmup_s=60)
    assert summary.rss_growth_pct["vllm"] == pytest.approx(0.0)
    assert 0 < summary.rss_growth_pct["gateway"] < 1.0
    assert summary.p99_drift_pct is not None and 0 < summary.p99_drift_pct < 5
    assert summary.requests["chat"] == 300
    assert all(v.met for v in summary.verdicts), summary.verdicts


def test_summary_flags_growth_errors_and_drift() -> None:
    records, samples = _steady(300, {"consumer": (100 * MIB, 200 * MIB), "broker": (50 * MIB, 50 * MIB)}, (0.5, 1.0))
    records.append(RequestRecord("feedback", 10, None, "http_500"))  # during warm-up: still counted
    summary = summarise(records, samples, duration_s=300, window_s=60, warmup_s=60)
    met = {v.measure.split(":")[-1].strip() if "RSS" in v.measure else v.measure.split(",")[0]: v.met
           for v in summary.verdicts}  # fmt: skip
    assert met == {"broker": True, "consumer": False, "errors (whole run)": False, "chat p99 drift": False}
    assert summary.errors_total == {"feedback:http_500": 1}
    assert not summary.errors_after_warmup
    assert summary.rss_growth_pct["consumer"] == pytest.approx(100 * (190 - 130) / 130, rel=0.05)


def test_one_window_after_warmup_is_not_judged() -> None:
    records, samples = _steady(120, {"gateway": (100 * MIB, 200 * MIB)}, (0.5, 1.0))
    summary = summarise(records, samples, duration_s=120, window_s=60, warmup_s=60)
    judged = {v.measure: v.met for v in summary.verdicts}
    assert [m for m, ok in judged.items() if ok is None] == [
        "RSS growth after warm-up: gateway (one window after warm-up: nothing to compare)",
        "chat p99 drift, last window vs first after warm-up (one window after warm-up: nothing to compare)",
    ]
    assert summary.p99_drift_pct == pytest.approx(0.0)  # first and last are the same window


@pytest.mark.vllm
@pytest.mark.broker
def test_short_real_soak_on_the_fixture_seed(seed_model_dir: Path, tmp_path: Path) -> None:
    """The whole command for one minute at 2 chat/s: it drives, samples every process and judges."""
    env = {**os.environ, "FLYWHEEL_VAR_DIR": str(tmp_path / "var"), "FLYWHEEL_VLLM_STARTUP_TIMEOUT_S": "600"}
    argv = [sys.executable, "-m", "flywheel.cli", "bench", "soak", "--minutes", "1", "--rate", "2",
            "--warmup-minutes", "0.25", "--window-s", "15", "--sample-s", "2", "--model-dir", str(seed_model_dir),
            "--out", str(tmp_path / "benchmarks.md"), "--plot-out", str(tmp_path / "soak.png")]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = (tmp_path / "benchmarks.md").read_text()
    assert "<!-- bench:soak -->" in page and "![soak" in page
    for role in ("gateway", "vllm", "broker", "consumer"):
        assert f"RSS growth after warm-up: {role}" in page
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert (tmp_path / "var" / "bench" / "soak" / "soak.json").exists()


@pytest.mark.vllm
@pytest.mark.broker
def test_sigterm_stops_the_benchmark_and_every_server_it_started(seed_model_dir: Path, tmp_path: Path) -> None:
    """The servers run in sessions of their own, so a SIGTERM to the benchmark reaches none of them by
    itself: the benchmark must unwind and stop them (found when a soak was stopped by hand)."""
    import re
    import signal

    import psutil

    env = {**os.environ, "FLYWHEEL_VAR_DIR": str(tmp_path / "var"), "FLYWHEEL_VLLM_STARTUP_TIMEOUT_S": "600"}
    argv = [sys.executable, "-m", "flywheel.cli", "bench", "soak", "--minutes", "5", "--rate", "1",
            "--model-dir", str(seed_model_dir), "--no-write"]  # fmt: skip
    log_path = tmp_path / "soak.log"  # a file, not a pipe: nothing blocks the benchmark's output while we wait
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def listed() -> list[int]:
        """The pids in "soak: … processes vllm=123, broker=456, gateway=789, consumer=1011" (complete lines
        only: the console may wrap it)."""
        text = log_path.read_text(errors="replace")
        text = text[: text.rfind("\n") + 1]
        at = re.search(r"\bprocesses\s", text)
        return [int(p) for p in re.findall(r"\b(?:vllm|broker|gateway|consumer)=(\d+)", text[at.end():])] if at else []

    pids: list[int] = []
    try:
        # vLLM may take its whole startup timeout (600 s) on a loaded machine: the deadline is a hang guard
        wait_until(lambda: len(listed()) >= 4 or proc.poll() is not None, 900, "the benchmark to list its processes")
        pids = listed()[:4]
        assert len(pids) == 4, f"the benchmark never listed its processes: {pids}\n{log_path.read_text()[-3000:]}"
        tree = [psutil.Process(pid) for pid in pids]
        tree += [child for parent in list(tree) for child in parent.children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE], "servers left behind"
    finally:
        if proc.poll() is None:
            started = psutil.Process(proc.pid).children(recursive=True)  # servers it had not listed yet, too
            proc.kill()
            proc.wait()
            for child in started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
