"""The LiteLLM proxy, the peer Flywheel is benchmarked against, as a plain pass-through to one backend.

Why its own virtualenv: ``litellm[proxy]==1.100.5`` pins ``rich<14`` and pulls ``openai``, boto3,
polars and more, which would downgrade or add packages in the project venv (checked with
``pip install --dry-run``). So the bench creates ``var/bench/litellm-venv`` on first use (idempotent:
a marker file records the installed version) and runs the proxy from there. Newer releases move the
proxy into a package the index does not serve, hence the pin.

The config is the fairest pass-through LiteLLM offers: one model routed to the backend's
``/v1`` with ``openai/<model>``, a master key (Flywheel checks a key too), no database, no callbacks,
no cost-map download, one worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from flywheel.procs import ManagedProcess, free_port

LITELLM_VERSION = "1.100.5"
LITELLM_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
MASTER_KEY = "sk-flywheel-bench"


class LiteLLMSetupError(RuntimeError):
    """The LiteLLM virtualenv could not be created or installed."""


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_litellm_venv(venv: Path, log: Path) -> Path:
    """Create ``venv`` with LiteLLM installed (once); returns its ``litellm`` console script."""
    marker = venv / f".installed-{LITELLM_VERSION}"
    script = venv / "bin" / "litellm"
    if marker.exists() and script.exists():
        return script
    log.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)  # not the project venv's python
    steps = [
        [base_python, "-m", "venv", str(venv)],
        [str(_venv_python(venv)), "-m", "pip", "install", "--quiet", LITELLM_REQUIREMENT],
    ]
    with log.open("ab") as out:
        for argv in steps:
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise LiteLLMSetupError(f"`{' '.join(argv)}` failed; see {log}")
    marker.touch()
    return script


def proxy_config(model: str, api_base: str) -> dict[str, object]:
    """One model, passed straight to an OpenAI-compatible backend; nothing else switched on."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": api_base, "api_key": "unused"},
            }
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False, "callbacks": [], "set_verbose": False},
        "general_settings": {"master_key": MASTER_KEY, "disable_spend_logs": True},
    }


@dataclass
class LiteLLMProxy:
    """A running proxy process and the URL to reach it."""

    url: str
    process: ManagedProcess
    api_key: str = MASTER_KEY

    def stop(self) -> None:
        self.process.stop()


def start_litellm_proxy(
    stack: contextlib.ExitStack, venv: Path, work_dir: Path, model: str, backend_url: str, timeout_s: float = 180,
    workers: int = 1,
) -> LiteLLMProxy:  # fmt: skip
    """Write the config, start ``litellm`` (``workers`` processes) on a free port and wait until it
    answers an authenticated call. Its stop is on ``stack`` from the moment it is spawned: it runs in
    a session of its own, so a Ctrl-C or SIGTERM during the readiness wait must still stop it."""
    venv, work_dir = venv.resolve(), work_dir.resolve()  # the proxy runs with cwd=work_dir
    script = ensure_litellm_venv(venv, work_dir / "litellm-install.log")
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / f"litellm-{port}.json"  # JSON is valid YAML, and needs no yaml package here
    config.write_text(json.dumps(proxy_config(model, f"{backend_url.rstrip('/')}/v1"), indent=2))
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network: use the cost map shipped in the wheel
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MODE": "PRODUCTION",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
    env.pop("DATABASE_URL", None)
    argv = [str(script), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", str(workers)]
    proc = ManagedProcess(f"litellm-{port}", argv, work_dir / f"litellm-{port}.log", env=env, cwd=work_dir)
    proc.start()
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            resp = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=2)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    proc.wait_ready(ready, timeout_s=timeout_s, interval_s=0.5)
    return LiteLLMProxy(url=url, process=proc)
