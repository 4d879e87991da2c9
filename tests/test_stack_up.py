"""`flywheel up` as a user runs it: everything starts, a chat request is answered, SIGTERM stops it all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from flywheel.procs import free_port

pytestmark = pytest.mark.vllm


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_tree(proc: subprocess.Popen[bytes], children: list[psutil.Process]) -> None:
    """SIGKILL what is left of `flywheel up`: its process group, and the children recorded before the stop
    (a child in a session of its own is outside the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    psutil.wait_procs(children, timeout=30)


def _env(tmp_path: Path, seed_model_dir: Path, shared: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **shared,
        **os.environ,
        "FLYWHEEL_VAR_DIR": str(tmp_path / "var"),
        "FLYWHEEL_PORT": str(free_port()),
        "FLYWHEEL_VLLM_PORT": str(free_port()),
        "FLYWHEEL_KAFKA_PORT": str(free_port()),
        "FLYWHEEL_SEED_MODEL_PATH": str(seed_model_dir),
        "FLYWHEEL_SEED_PRESET": "fixture",
        **extra,
    }


def _assert_kept_off_vllm_cores(children: list[psutil.Process]) -> None:
    """Where vLLM's worker pinned itself to some cores, the rest of the stack runs on the others."""
    from flywheel.cpus import cpus_besides, pinned_cpus

    vllm = next(c for c in children if "vllm.entrypoints" in " ".join(c.cmdline()))
    rest = cpus_besides(pinned_cpus(vllm.pid))
    if rest is None:
        return  # vLLM pinned nothing here (or took every core): nothing to keep apart
    for child in children:
        line = " ".join(child.cmdline())
        if any(part in line for part in ("flywheel.cli serve", "flywheel.cli consume", "canary watch", "tansu")):
            deadline = time.monotonic() + 60  # the consumer and controller may still be importing
            while True:
                masks = {frozenset(os.sched_getaffinity(t.id)) for t in child.threads()}
                if masks == {rest} or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert masks == {rest}, (line, masks, rest)


def test_up_serves_chat_and_stops_cleanly_on_sigterm(
    tmp_path: Path, seed_model_dir: Path, gateway_shared_env: dict[str, str]
) -> None:
    env = _env(tmp_path, seed_model_dir, gateway_shared_env)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{env['FLYWHEEL_PORT']}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200 and "Flywheel is up" in (
                    tmp_path / "up.log"
                ).read_text():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("flywheel up did not become ready:\n" + (tmp_path / "up.log").read_text()[-3000:])

        creds = json.loads((tmp_path / "var" / "credentials.json").read_text())
        assert oct((tmp_path / "var" / "credentials.json").stat().st_mode & 0o777) == "0o600"
        banner = (tmp_path / "up.log").read_text()
        assert creds["api_key"] in banner and creds["admin_key"] in banner
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=creds["api_key"], max_retries=0)
        answer = client.chat.completions.create(
            model="flywheel", messages=[{"role": "user", "content": "What plans are there?"}], max_tokens=16
        )
        assert answer.choices[0].message.content
        children = _tree(proc.pid)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for part in ("vllm.entrypoints", "serve", "consume", "tansu", "canary watch"):
            assert part in names, (part, names)
        _assert_kept_off_vllm_cores(children)
    finally:
        children = _tree(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code: int | None = None
        alive = children
        try:
            code = proc.wait(timeout=90)
            alive = psutil.wait_procs(children, timeout=10)[1]
        except subprocess.TimeoutExpired:
            pass  # asserted below, once nothing is left running
        finally:
            if code is None or alive:
                _kill_tree(proc, children)
            log.close()
    tail = (tmp_path / "up.log").read_text()[-3000:]
    assert code is not None, f"flywheel up did not stop within 90 s of SIGTERM (killed):\n{tail}"
    assert code == 0, tail
    assert not alive, f"left behind: {[p.pid for p in alive]}"


def test_up_names_a_busy_port(tmp_path: Path, seed_model_dir: Path, gateway_shared_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env(tmp_path, seed_model_dir, gateway_shared_env, FLYWHEEL_PORT=str(port))
        done = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", "up"], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], done.stderr
