"""`serve --workers N` on a fresh var/: every worker asks for the initial reward head at once. They take
turns on ``var/reward/.lock``: one builds it, the others load that build; ACTIVE and the manifest are
written through temporary files of their own, so nothing is left half-written or shared."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies.reward import store


class TinyEncoder:
    """A deterministic stand-in for the MiniLM encoder: 8 numbers per text."""

    name, dim = "tiny", 8

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], dtype=np.uint8) for t in texts]
        return np.stack(rows).astype(np.float32) / 255.0


@pytest.fixture(autouse=True)
def few_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handful of epochs: these tests are about who builds and writes, not about the head's quality."""
    from policies.reward import fit

    real = fit.HeadFitConfig
    monkeypatch.setattr(fit, "HeadFitConfig", lambda: real(epochs=5))


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    from flywheel.settings import Settings

    return Settings(var_dir=tmp_path / "var")


def _in_threads(n: int, fn: Any) -> list[Any]:
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_workers_starting_together_build_the_initial_head_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policies.reward import fit

    settings = _settings(tmp_path)
    real_fit, builds = fit.fit_head, []

    def slow_fit(*args: Any, **kwargs: Any) -> Any:
        builds.append(threading.get_ident())
        time.sleep(0.3)  # long enough for every other worker to arrive meanwhile
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fit, "fit_head", slow_fit)
    results = _in_threads(4, lambda: store.load_active_scorer(settings, TinyEncoder()))
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(builds) == 1
    assert store.active_id(settings) == store.INITIAL_ID
    store.verify_version(settings.reward_dir / store.INITIAL_ID)
    leftovers = [p.name for p in settings.reward_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_lock_holds_off_a_build(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    done = threading.Event()
    with store._locked(settings.reward_dir):
        worker = threading.Thread(target=lambda: (store.ensure_initial_scorer(settings, TinyEncoder()), done.set()))
        worker.start()
        time.sleep(0.5)
        assert not done.is_set() and store.read_manifest(settings.reward_dir / store.INITIAL_ID) is None
    worker.join(60)
    assert done.is_set() and store.read_manifest(settings.reward_dir / store.INITIAL_ID) is not None


def test_manifest_and_active_are_written_through_temporary_files_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    settings = _settings(tmp_path)
    store.ensure_initial_scorer(settings, TinyEncoder())
    made: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(name)
        return fd, name

    monkeypatch.setattr(store.tempfile, "mkstemp", spy)
    store.activate(settings, store.INITIAL_ID)
    store.activate(settings, store.INITIAL_ID)
    assert len(made) == 2 and made[0] != made[1] and all(Path(m).parent == settings.reward_dir for m in made)
    assert (settings.reward_dir / store.ACTIVE).read_text() == "initial\n"
    assert oct((settings.reward_dir / store.ACTIVE).stat().st_mode & 0o777) == "0o644"
