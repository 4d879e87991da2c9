"""An export replaces the previous one as a unit: a crash at any step never leaves a train file next to a
held-out file or datasheet of another export (feedback/export.py, "Publishing").

The crash is simulated at every filesystem mutation of the publish (each rename and delete) in turn: from
that point on every mutation raises, as if the process had died, and the files on disk are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from feedback.datasheet import datasheet_paths
from feedback.events import Event, Feedback, Interaction
from feedback.export import export_pairs, heldout_path
from feedback.pairs import ExportConfig
from feedback.store import FeedbackStore
from flywheel.db import create_schema, make_engine

CFG = ExportConfig(heldout_fraction=0.5)


def _events(prompts: range) -> list[Event]:
    out: list[Event] = []
    for p in prompts:
        question = [{"role": "user", "content": f"question number {p}?"}]
        out += [
            Interaction(response_id=f"{p}-a", messages=question, candidates=[{"text": f"a good answer {p}"}]),
            Interaction(response_id=f"{p}-b", messages=question, candidates=[{"text": f"a bad answer {p}"}]),
            Feedback.from_raw(f"{p}-a", "up", user_hash=f"user-{p}-a"),
            Feedback.from_raw(f"{p}-b", "down", user_hash=f"user-{p}-b"),
        ]
    return out


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two stores: the data of the old export (12 prompts) and of the new one (24 prompts)."""
    made = []
    for name, prompts in (("old", range(12)), ("new", range(24))):
        engine = make_engine(f"sqlite:///{tmp_path / name}.db")
        create_schema(engine)
        FeedbackStore(engine).apply_batch(_events(prompts))
        made.append(engine)
    yield made[0], made[1]
    for engine in made:
        engine.dispose()


@dataclass
class Generation:
    train: bytes
    heldout: bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reference(engine: Engine, out: Path) -> Generation:
    export_pairs(engine, "dpo", out, CFG)
    return Generation(out.read_bytes(), heldout_path(out).read_bytes())


class Crash(BaseException):
    """The process died here (BaseException: nothing in the exporter may swallow it)."""


class CrashAt:
    """Counts renames and deletes; the n-th and every later one raise Crash."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
        self.n, self.seen, self.crashed = n, 0, False
        for name in ("replace", "rename", "unlink", "remove"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(real))

    def _wrap(self, real: Any) -> Any:
        def op(*args: Any, **kwargs: Any) -> Any:
            self.seen += 1
            if self.crashed or self.seen >= self.n:
                self.crashed = True
                raise Crash(f"crashed at filesystem operation {self.seen}")
            return real(*args, **kwargs)

        return op


def _check_consistent(out: Path, old: Generation, new: Generation) -> str:
    """Every file on disk belongs to the same export as the train file; return which one it is."""
    assert out.is_file(), "the train file disappeared"
    train = out.read_bytes()
    gen = {old.train: ("old", old), new.train: ("new", new)}.get(train)
    assert gen is not None, "the train file is neither the old nor the new one (half-written?)"
    label, expected = gen
    held = heldout_path(out)
    if held.exists():
        assert held.read_bytes() == expected.heldout, f"{label} train file beside another export's held-out file"
    md_path, json_path = datasheet_paths(out)
    if json_path.exists():
        sheet = json.loads(json_path.read_text())
        assert sheet["files"]["train"]["sha256"] == _sha(train), f"{label} train file beside another datasheet"
        assert sheet["files"]["heldout"]["sha256"] == _sha(expected.heldout)
    if md_path.exists():
        assert _sha(train) in md_path.read_text(), f"{label} train file beside another datasheet (Markdown)"
    return label


def test_a_crash_at_any_step_leaves_one_consistent_export(
    engines: tuple[Engine, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_engine, new_engine = engines
    old = _reference(old_engine, tmp_path / "ref-old" / "prefs.jsonl")
    new = _reference(new_engine, tmp_path / "ref-new" / "prefs.jsonl")
    assert old.heldout and old.train and old.heldout != new.heldout and old.train != new.train
    outcomes = []
    for n in range(1, 50):
        out = tmp_path / f"crash-{n}" / "prefs.jsonl"
        export_pairs(old_engine, "dpo", out, CFG)
        with monkeypatch.context() as patch:
            crash = CrashAt(patch, n)
            try:
                export_pairs(new_engine, "dpo", out, CFG)
            except Crash:
                pass
        outcomes.append(_check_consistent(out, old, new))
        if not crash.crashed:  # got through every step: the new export, complete, with nothing left behind
            assert outcomes[-1] == "new"
            assert sorted(p.name for p in out.parent.iterdir()) == sorted(
                p.name for p in (out, heldout_path(out), *datasheet_paths(out))
            )
            break
    else:
        pytest.fail("the export never finished")
    assert "old" in outcomes and "new" in outcomes  # the crashes did land on both sides of the switch


def test_a_failed_export_leaves_the_previous_one_and_no_temp_files(
    engines: tuple[Engine, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_engine, new_engine = engines
    out = tmp_path / "export" / "prefs.jsonl"
    export_pairs(old_engine, "jsonl", out, CFG)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}

    def full_disk(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        export_pairs(new_engine, "jsonl", out, CFG)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
