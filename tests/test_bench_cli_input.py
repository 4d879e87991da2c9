"""Bad input to `flywheel bench ...` ends as one `error:` line and exit status 2, before any server starts.

Each case runs the real CLI in an empty working directory with its own var/ (no FLYWHEEL_* settings
inherited): that var/ must still have no bench/ directory afterwards, which every benchmark creates
before it starts a process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from flywheel.bench.options import int_list


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update({"FLYWHEEL_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    return subprocess.run([sys.executable, "-m", "flywheel.cli", "bench", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("gateway", "--rounds", "0"), "--rounds"),
        (("gateway", "--concurrency", "1,x"), "'x' is not an integer"),
        (("gateway", "--concurrency", "0"), "must be ≥ 1"),
        (("gateway", "--backends", "stub,gpu"), "unknown backend(s): gpu"),
        (("feedback", "--concurrency", "1,x"), "'x' is not an integer"),
        (("feedback", "--pool", "0"), "--pool"),
        (("pipeline", "--ks", "1,,4,four"), "'four' is not an integer"),
        (("pipeline", "--ks", "1,16"), "above the gateway's max_best_of_n"),
        (("pipeline", "--requests", "0"), "--requests"),
    ],
)  # fmt: skip
def test_bad_bench_input_is_one_usage_error_line_and_starts_nothing(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    done = _bench(tmp_path, *args)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stdout[-1000:], done.stderr[-1000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], done.stderr
    assert not (tmp_path / "var" / "bench").exists()


def test_int_list_parses_and_refuses() -> None:
    assert int_list(" 1, 8 ,32,", "--c") == [1, 8, 32]
    for bad, why in (("", "comma-separated"), ("1,x", "'x'"), ("0,1", "≥ 1"), ("4,4", "twice"), ("2.5", "'2.5'")):
        with pytest.raises(typer.BadParameter, match=why):
            int_list(bad, "--c")
