"""Bad input on the command line ends as one clear line and a non-zero exit, never a traceback.

Each case runs the real CLI (``python -m flywheel.cli``) in its own empty working directory, with no
``FLYWHEEL_*`` variables inherited, so no ``.env`` or ``flywheel.toml`` of the checkout leaks in. Two kinds
of refusal are checked: the CLI's error boundary (flywheel/cli.py: ``error: <one line>`` on stderr, exit 1)
and click's own usage errors for a bad option value (exit 2, one ``error: Invalid value for '--x': ...`` line).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flywheel.cli import ErrorBoundaryGroup, user_error_message
from flywheel.procs import free_port

UNREACHABLE_DB = "postgresql://127.0.0.1:1/x"  # nothing listens on port 1: connection refused at once


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`flywheel ARGS` as a user runs it, in tmp_path, with only the given FLYWHEEL_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    # Wide and colourless, so click's usage-error panel keeps its message on one line of plain text.
    base.update({"FLYWHEEL_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args],
        cwd=tmp_path, env=base, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The boundary's contract: exit 1, exactly one non-empty stderr line, no traceback anywhere."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    return lines[0]


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """A bad option value: exit 2, click's message as one ``error:`` line naming the command's --help."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help')" in lines[0], done.stderr
    return lines[0]


# --- 1. a bad setting, in every command that reads the settings ---------------------------------------------

BAD_PORT_LINE = (
    "error: invalid setting port (FLYWHEEL_PORT): Input should be a valid integer, "
    "unable to parse string as an integer (got 'abc')"
)


@pytest.mark.parametrize(
    "args",
    [
        ["policy", "list"],
        ["canary", "watch", "--key", "k"],
        ["export"],
        ["consume"],
        ["kb", "list"],
        ["seed-model"],
        ["safety", "train"],
        ["safety", "eval"],
        ["serve"],
        ["up"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_bad_env_setting_is_one_line(tmp_path: Path, args: list[str]) -> None:
    done = run_cli(tmp_path, *args, env={"FLYWHEEL_PORT": "abc"})
    assert error_line(done) == BAD_PORT_LINE


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("FLYWHEEL_PORT", "70000",
         "error: invalid setting port (FLYWHEEL_PORT): Input should be less than or equal to 65535 (got '70000')"),
        ("FLYWHEEL_KAFKA_PORT", "0",
         "error: invalid setting kafka_port (FLYWHEEL_KAFKA_PORT): Input should be greater than or equal to 1 "
         "(got '0')"),
        ("FLYWHEEL_VLLM_PORT", "65536",
         "error: invalid setting vllm_port (FLYWHEEL_VLLM_PORT): Input should be less than or equal to 65535 "
         "(got '65536')"),
        ("FLYWHEEL_VLLM_MAX_LORAS", "1",
         "error: invalid setting vllm_max_loras (FLYWHEEL_VLLM_MAX_LORAS): Input should be greater than or equal "
         "to 2 (got '1')"),
        ("FLYWHEEL_SAFETY_PII_LEAK_ACTION", "drop",
         "error: invalid setting safety_pii_leak_action (FLYWHEEL_SAFETY_PII_LEAK_ACTION): Input should be "
         "'redact' or 'block' (got 'drop')"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("FLYWHEEL_") else None,
)
def test_out_of_range_settings_are_refused_at_start(tmp_path: Path, name: str, value: str, line: str) -> None:
    """Ports, LoRA slots and the PII action are checked by Settings, not later by whoever uses them."""
    assert error_line(run_cli(tmp_path, "serve", env={name: value})) == line


def test_model_level_setting_error_names_the_settings(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "policy", "list", env={"FLYWHEEL_PRODUCER_DELIVERY_TIMEOUT_MS": "1"})
    assert error_line(done).startswith("error: invalid settings: producer_delivery_timeout_ms (1) must exceed")


# --- 2. `up` fails before anything is left running ----------------------------------------------------------


def test_up_with_a_seed_dir_that_is_not_a_seed_model_is_one_line(tmp_path: Path) -> None:
    """SeedBuildError used to escape `up` as a traceback."""
    not_seed = tmp_path / "not-seed"
    not_seed.mkdir()
    (not_seed / "notes.txt").write_text("mine, not a model\n")
    env = {
        "FLYWHEEL_SEED_MODEL_PATH": str(not_seed), "FLYWHEEL_PORT": str(free_port()),
        "FLYWHEEL_VLLM_PORT": str(free_port()), "FLYWHEEL_KAFKA_PORT": str(free_port()),
    }  # fmt: skip
    done = run_cli(tmp_path, "up", env=env)
    line = error_line(done)
    assert line.startswith(f"error: {not_seed} ") and "not a seed model directory" in line, line
    assert (not_seed / "notes.txt").read_text() == "mine, not a model\n"  # nothing lost
    assert "stopped." in done.stdout


# --- 3. an out-of-range port on the command line -------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "up"])
def test_port_option_out_of_range_is_a_usage_error(tmp_path: Path, command: str) -> None:
    """`--port 70000` used to reach socket.bind and raise OverflowError."""
    message = usage_error(run_cli(tmp_path, command, "--port", "70000"))
    assert "Invalid value for '--port': Input should be less than or equal to 65535" in message


# --- 4. safety train | eval -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "eval"])
def test_safety_missing_dataset_is_refused_before_loading_anything(tmp_path: Path, command: str) -> None:
    message = usage_error(run_cli(tmp_path, "safety", command, "--dataset", "missing.jsonl"))
    assert "Invalid value for '--dataset': file 'missing.jsonl' does not exist." in message


def test_safety_train_malformed_dataset_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": "benign"}\n')  # no family, no split
    done = run_cli(tmp_path, "safety", "train", "--dataset", str(bad))
    assert error_line(done) == f"error: {bad}: not a labelled safety dataset (KeyError: 'family')"


@pytest.mark.parametrize("value", ["2", "1", "-0.1"])
def test_safety_train_target_fp_outside_zero_one_is_refused(tmp_path: Path, value: str) -> None:
    """At 1 or beyond (or below 0) the threshold index in safety/classifier.py wrapped around silently."""
    message = usage_error(run_cli(tmp_path, "safety", "train", "--target-fp", value))
    assert f"Invalid value for '--target-fp': must be in [0, 1), got {float(value):g}" in message


def test_safety_train_c_zero_is_refused(tmp_path: Path) -> None:
    message = usage_error(run_cli(tmp_path, "safety", "train", "--c", "0"))
    assert "Invalid value for '--c': must be > 0, got 0" in message


def test_safety_eval_unknown_split_is_refused(tmp_path: Path) -> None:
    """`--split bogus` used to report "0.0% of 0" as if it had scored something."""
    message = usage_error(run_cli(tmp_path, "safety", "eval", "--split", "bogus"))
    assert "Invalid value for '--split'" in message and "'bogus' is not one of 'train', 'heldout'" in message


# --- 5. canary watch, export -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1"])
def test_canary_watch_interval_must_be_positive(tmp_path: Path, value: str) -> None:
    """0 used to mean "the default" silently; a negative interval busy-looped."""
    message = usage_error(run_cli(tmp_path, "canary", "watch", "--key", "k", "--interval", value))
    assert f"Invalid value for '--interval': must be > 0 seconds, got {value}" in message


@pytest.mark.parametrize(
    "args",
    [["canary", "watch", "--key", "k", "--database-url", UNREACHABLE_DB], ["export", "--database-url", UNREACHABLE_DB]],
    ids=["canary watch", "export"],
)
def test_unreachable_database_is_one_line(tmp_path: Path, args: list[str]) -> None:
    line = error_line(run_cli(tmp_path, *args))
    assert line.startswith("error: database unreachable: (psycopg.OperationalError) connection failed:"), line
    assert not (tmp_path / "var" / "datasets").exists()  # export wrote nothing


def test_database_url_that_is_not_a_url_is_one_line(tmp_path: Path) -> None:
    line = error_line(run_cli(tmp_path, "export", "--database-url", "not a url"))
    assert line == "error: bad database URL: Could not parse SQLAlchemy URL from given URL string"


# --- the boundary itself (in process) ---------------------------------------------------------------------------


def test_project_errors_become_one_line_and_others_are_left_alone() -> None:
    from deploy.broker import BrokerBinaryMissingError
    from policies.seed.build import SeedBuildError
    from safety.chain import SafetyConfigError
    from safety.classifier import ClassifierError

    assert user_error_message(BrokerBinaryMissingError("no Tansu binary at /x")) == "no Tansu binary at /x"
    assert user_error_message(SafetyConfigError("unknown safety filters: x")) == "unknown safety filters: x"
    assert user_error_message(ClassifierError("a\n  b")) == "a b"
    assert user_error_message(SeedBuildError("bad seed")) == "bad seed"
    assert user_error_message(FileNotFoundError(2, "No such file or directory", "x.jsonl")) == (
        "No such file or directory: x.jsonl"
    )
    for other in (ValueError("bug"), RuntimeError("bug"), KeyError("k"), typer.Exit(3), KeyboardInterrupt()):
        assert user_error_message(other) is None, other


def test_boundary_passes_exits_and_real_bugs_through() -> None:
    """Only known user errors are caught: typer.Exit keeps its code, Ctrl-C stays Ctrl-C, a bug keeps its traceback."""
    from safety.chain import SafetyConfigError

    demo = typer.Typer(cls=ErrorBoundaryGroup, pretty_exceptions_enable=False)

    @demo.command()
    def fail(kind: str) -> None:
        if kind == "config":
            raise SafetyConfigError("unknown safety filters: nope")
        if kind == "exit":
            raise typer.Exit(3)
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("a real bug")

    @demo.command()
    def other() -> None:  # a second command makes `demo` a group, as the real app is
        pass

    runner = CliRunner()
    config = runner.invoke(demo, ["fail", "config"])
    assert config.exit_code == 1 and config.stderr.strip() == "error: unknown safety filters: nope"
    assert runner.invoke(demo, ["fail", "exit"]).exit_code == 3
    assert runner.invoke(demo, ["fail", "interrupt"]).exit_code == 130
    bug = runner.invoke(demo, ["fail", "bug"])
    assert isinstance(bug.exception, RuntimeError) and str(bug.exception) == "a real bug"
