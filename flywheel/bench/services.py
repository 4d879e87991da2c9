"""Start the processes one gateway benchmark point needs: a backend (stub or vLLM) and Flywheel in front.

Every process is a :class:`flywheel.procs.ManagedProcess` (its own process group), registered on the
caller's ``ExitStack`` as soon as it is spawned, so a failure half-way through the set-up still stops
everything that was started. Each gets a fresh directory under ``var/bench`` (a fresh registry: the
gateway registers the backend's model as its seed version on start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from flywheel.cpus import available_cpus, cpus_besides, format_cpu_list, move_tree, pinned_cpus
from flywheel.procs import ManagedProcess, free_port
from flywheel.settings import Settings
from policies.vllm_server import VLLMServer, VLLMServerConfig

BENCH_API_KEY = "bench-chat-key"
STUB_MODEL = "stub"


@dataclass
class Backend:
    """What every path calls: the backend's URL, the model name it serves, and its model dir."""

    name: str
    url: str
    model: str
    model_dir: Path
    # Cores the backend's worker is pinned to (vLLM on CPU): proxies in front run on the others, as
    # `flywheel up` runs them (flywheel/cpus.py). Empty for the stub.
    pinned: frozenset[int] = frozenset()

    @property
    def proxy_cpus(self) -> frozenset[int] | None:
        """Where what runs in front goes: every other core (None: anywhere)."""
        return cpus_besides(self.pinned)

    @property
    def proxy_core_count(self) -> int:
        """How many cores what runs in front may use: the default worker count of each proxy."""
        return len(self.proxy_cpus or available_cpus()) or 1

    def keep_off(self, pid: int | None) -> None:
        """Move a running process tree in front of this backend onto ``proxy_cpus``."""
        if self.proxy_cpus is not None and pid is not None:
            move_tree(pid, self.proxy_cpus)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_stub(stack: contextlib.ExitStack, work: Path, delay_ms: float = 0) -> Backend:
    """The stub: zero-latency (backend ``stub``), or answering chat completions after ``delay_ms`` (backend
    ``paced``). The gateway still needs a model directory to register, so give it one."""
    work = _fresh_dir(work)
    port = free_port()
    argv = [sys.executable, "-m", "flywheel.bench.stub_server", "--port", str(port), "--model", STUB_MODEL,
            "--delay-ms", str(delay_ms)]  # fmt: skip
    proc = ManagedProcess(f"stub-{port}", argv, work / "stub.log")
    proc.start()
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: _http_ok(f"{url}/health"), timeout_s=30, interval_s=0.1)
    model_dir = work / "model"  # a registry record only: the stub has no weights
    model_dir.mkdir()
    (model_dir / "README.txt").write_text("placeholder policy for the stub backend\n")
    return Backend("paced" if delay_ms > 0 else "stub", url, STUB_MODEL, model_dir)


def start_vllm(stack: contextlib.ExitStack, work: Path, model_dir: Path, settings: Settings) -> Backend:
    """vLLM as `flywheel up` configures it (bf16, eager, LoRA slots on), on a free port."""
    config = VLLMServerConfig.from_settings(settings, model_dir)
    config.port = free_port()
    config.var_dir = work
    server = VLLMServer(config)
    server.start()
    stack.callback(server.stop)
    server.wait_ready()
    pinned = pinned_cpus(server.pid) if server.pid is not None else frozenset()
    return Backend("vllm", server.url, config.served_model_name, model_dir, pinned)


@dataclass
class Flywheel:
    url: str
    process: ManagedProcess
    api_key: str = BENCH_API_KEY


def start_flywheel(
    stack: contextlib.ExitStack, work: Path, backend: Backend, stages: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Flywheel:  # fmt: skip
    """`flywheel serve` as deployed (with a broker for its interaction events). Without ``stages``,
    grounding and safety are off, so the gateway bench measures the gateway's own overhead as a proxy;
    `flywheel bench pipeline` turns them on and measures what they add."""
    from deploy.broker import EmbeddedBroker

    work = _fresh_dir(work)
    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", free_port(), work / "broker.log")
    broker.start()
    stack.callback(broker.stop)
    backend.keep_off(broker.pid)
    env = {
        **os.environ,
        "FLYWHEEL_HOST": "127.0.0.1",
        "FLYWHEEL_PORT": str(port),
        "FLYWHEEL_VAR_DIR": str(work),
        "FLYWHEEL_DATABASE_URL": f"sqlite:///{(work / 'flywheel.db').resolve()}",
        "FLYWHEEL_VLLM_URL": backend.url,
        "FLYWHEEL_SEED_MODEL_PATH": str(backend.model_dir.resolve()),
        "FLYWHEEL_SEED_MODEL_NAME": backend.model,
        "FLYWHEEL_API_KEYS": BENCH_API_KEY,
        "FLYWHEEL_ADMIN_KEYS": "bench-admin-key",
        "FLYWHEEL_KAFKA_BOOTSTRAP": broker.bootstrap,
        "FLYWHEEL_FEEDBACK_SECRET": "bench-feedback-secret",
    }
    if backend.proxy_cpus is not None:
        env["FLYWHEEL_CPUS"] = format_cpu_list(backend.proxy_cpus)
    if not stages:
        env.update({"FLYWHEEL_GROUNDING_ENABLED": "false", "FLYWHEEL_SAFETY_ENABLED": "false"})
    env.update(extra_env or {})
    proc = ManagedProcess(
        f"flywheel-{port}", [sys.executable, "-m", "flywheel.cli", "serve"], work / "gateway.log", env=env
    )
    proc.start()
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: _http_ok(f"{url}/readyz"), timeout_s=90)
    return Flywheel(url, proc)


def check_answers(url: str, api_key: str | None, body: dict[str, object], expect_flywheel: bool) -> None:
    """One real request per path before timing it: a path that errors would 'win' any benchmark."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    if resp.status_code != 200:
        raise RuntimeError(f"{url} answered {resp.status_code}: {resp.text[:500]}")
    data = resp.json()
    if not data.get("choices"):
        raise RuntimeError(f"{url} answered without choices: {resp.text[:500]}")
    if expect_flywheel and "flywheel" not in data:
        raise RuntimeError(f"{url} answered without the flywheel object: {resp.text[:500]}")
