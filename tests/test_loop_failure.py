"""`flywheel loop` when a round fails (no servers: a Loop whose stack is faked).

Whatever the exception (a known loop error, a bug, Ctrl-C), the rounds completed so far are still
reported, the failed round is marked with its error, and a canary the failed round registered and
nobody decided is rolled back rather than left serving users with no controller watching it.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.loop.config import LoopConfig
from flywheel.loop.observe import LoopError, VersionInfo
from flywheel.loop.report import write_report
from flywheel.loop.runner import Loop, LoopRecord, RoundRecord
from policies.registry_models import utcnow


class FakeOperator:
    """The registry as the operator API shows it: version id → status."""

    def __init__(self) -> None:
        self.status = {"seed": "stable"}

    def versions(self) -> list[VersionInfo]:
        return [VersionInfo(v, s, 1.0 if s == "stable" else 0.2 if s == "canary" else 0.0, "lora", None)
                for v, s in self.status.items()]  # fmt: skip

    def version(self, vid: str) -> VersionInfo:
        return next(v for v in self.versions() if v.id == vid)

    def stable(self) -> VersionInfo:
        return next(v for v in self.versions() if v.status == "stable")

    def canaries(self) -> list[VersionInfo]:
        return [v for v in self.versions() if v.status == "canary"]

    def close(self) -> None:
        pass


class FakeAdmin:
    def __init__(self, operator: FakeOperator, broken: bool = False) -> None:
        self.operator, self.broken = operator, broken
        self.rollbacks: list[str] = []

    def rollback(self, vid: str, reason: str, details: dict[str, Any]) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("operator API unreachable")
        self.rollbacks.append(vid)
        self.operator.status[vid] = "rolled_back"
        return {}

    def close(self) -> None:
        pass


class FakeLoop(Loop):
    """Round 1 registers v1 and the controller promotes it; round 2 registers v2 as a canary, then
    ``FAILURE`` is raised (after the controller decided it, when ``DECIDED``)."""

    FAILURE: BaseException = RuntimeError("boom")
    DECIDED = False
    BROKEN_ADMIN = False
    last: FakeLoop | None = None

    def __init__(self, config: LoopConfig, *args: Any, **kwargs: Any) -> None:
        self.config, self.console = config, Console(quiet=True)
        self.operator = FakeOperator()  # type: ignore[assignment]
        self.began, self.started = time.monotonic(), utcnow()
        self.stamp = self.started.strftime("%Y%m%d-%H%M%S")
        self.record = LoopRecord(config.to_dict(), self.started.isoformat(), "seed")
        self._current = None
        self.admin = FakeAdmin(self.operator, broken=self.BROKEN_ADMIN)  # type: ignore[arg-type]
        self._controller = SimpleNamespace(admin=self.admin)
        self.engine = SimpleNamespace(dispose=lambda: None)  # type: ignore[assignment]
        FakeLoop.last = self

    def round(self, n: int, round_dir: Path) -> RoundRecord:
        ops = self.operator
        record = self._current = RoundRecord(round=n, parent=ops.stable().id, algo="dpo", pairs=10)
        record.candidate = f"v{n}"
        ops.status[record.candidate] = "canary"  # type: ignore[attr-defined]
        if n == 1:
            ops.status.update({"seed": "retired", "v1": "stable"})  # type: ignore[attr-defined]
            record.outcome = "promoted"
            return record
        if self.DECIDED:
            ops.status[record.candidate] = "rolled_back"  # type: ignore[attr-defined]
        raise self.FAILURE


def _fake(monkeypatch: pytest.MonkeyPatch, failure: BaseException, **flags: bool) -> type[FakeLoop]:
    cls = type("Failing", (FakeLoop,), {"FAILURE": failure, **{k.upper(): v for k, v in flags.items()}})
    monkeypatch.setattr("flywheel.loop.runner.Loop", cls)
    return cls


def test_a_failed_round_is_recorded_and_its_canary_rolled_back(tmp_path: Path) -> None:
    loop = FakeLoop(LoopConfig(rounds=3, eval_interactions=0))
    with pytest.raises(RuntimeError, match="boom"):
        loop.run(tmp_path)
    r1, r2 = loop.record.rounds
    assert (r1.outcome, r2.outcome, r2.error) == ("promoted", "failed", "RuntimeError: boom")
    assert loop.admin.rollbacks == ["v2"] and r2.cleanup == "rolled back by the loop"
    assert loop.record.final_stable == "v1" and loop.record.error == "RuntimeError: boom"
    text = write_report(loop.record, tmp_path / "report").read_text()
    assert "| 2 | v1 | v2 | failed |" in text
    assert "- round 2 failed: RuntimeError: boom; canary `v2`: rolled back by the loop" in text


def test_a_canary_already_decided_is_left_alone_and_a_failed_rollback_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decided = _fake(monkeypatch, LoopError("store lag"), decided=True)(LoopConfig(rounds=2, eval_interactions=0))
    with pytest.raises(LoopError):
        decided.run(tmp_path)
    assert decided.admin.rollbacks == [] and decided.record.rounds[1].cleanup == "already decided; left as it is"
    broken = _fake(monkeypatch, KeyboardInterrupt(), broken_admin=True)(LoopConfig(rounds=2, eval_interactions=0))
    with pytest.raises(KeyboardInterrupt):  # the original exception, not the rollback's
        broken.run(tmp_path)
    r2 = broken.record.rounds[1]
    assert r2.error == "KeyboardInterrupt"
    assert r2.cleanup and r2.cleanup.startswith("NOT rolled back (RuntimeError: operator API unreachable)")
    assert "flywheel policy rollback v2" in r2.cleanup


def _run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)  # no .env or flywheel.toml of the checkout
    monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path / "var"))
    args = ["loop", "--rounds", "3", "--eval-interactions", "0", "--chat-key", "c", "--admin-key", "a",
            "--reports-dir", str(tmp_path / "reports")]  # fmt: skip
    return CliRunner().invoke(app, args)


def _summary(tmp_path: Path) -> str:
    (summary,) = (tmp_path / "reports").glob("*/summary.md")
    return summary.read_text()


def test_the_command_reports_the_rounds_so_far_when_a_bug_stops_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, ZeroDivisionError("division by zero"))
    result = _run_cli(tmp_path, monkeypatch)
    assert isinstance(result.exception, ZeroDivisionError)  # a bug keeps its traceback (the CLI's boundary)
    text = _summary(tmp_path)
    assert "| 1 | seed | v1 | promoted |" in text and "| 2 | v1 | v2 | failed |" in text
    assert "round 2 failed: ZeroDivisionError: division by zero; canary `v2`: rolled back by the loop" in text
    assert FakeLoop.last is not None and FakeLoop.last.admin.rollbacks == ["v2"]


def test_the_command_ends_a_known_failure_with_one_line_naming_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, LoopError("after 120s the store has 10/20 ratings"))
    result = _run_cli(tmp_path, monkeypatch)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: after 120s the store has 10/20 ratings; report of the "
                                                   "rounds so far → "), result.output  # fmt: skip
    assert "round 2 failed: LoopError: after 120s" in _summary(tmp_path)


def test_ctrl_c_still_reports_and_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, KeyboardInterrupt())
    result = _run_cli(tmp_path, monkeypatch)
    assert result.exit_code != 0
    assert "round 2 failed: KeyboardInterrupt; canary `v2`: rolled back by the loop" in _summary(tmp_path)
