"""``flywheel up``: the whole stack on one machine, started in order and stopped together.

Order: credentials → seed model (built if missing) → safety head (trained if missing) → broker (unless
external) → vLLM (unless external) → gateway → feedback consumer → canary controller. Each child runs in its own process group (flywheel.procs), so Ctrl-C or
SIGTERM stops every one of them and their workers. If a child dies (the embedded broker and vLLM
included), the launcher says which and stops the rest rather than leaving a half-working stack.

The children get the settings this process resolved (environment, ``.env``, ``flywheel.toml``, the
command line), the keys included: every key an operator set, else the stored or generated ones
(deploy/credentials.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from deploy.credentials import Credentials, as_env, ensure_credentials
from flywheel.procs import ManagedProcess, ensure_port_free
from flywheel.settings import Settings


class StackError(RuntimeError):
    """The stack could not start; the message is one line an operator can act on."""


@dataclass
class Stack:
    settings: Settings
    console: Console
    children: list[ManagedProcess] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _vllm: object | None = None
    _broker: object | None = None

    # --- start ----------------------------------------------------------------------------
    def preflight(self) -> None:
        """Fail fast, before minutes of start-up, on a port someone else holds."""
        s = self.settings
        ensure_port_free(s.host, s.port, "the gateway (FLYWHEEL_PORT)")
        if not s.vllm_url:
            ensure_port_free(s.vllm_host, s.vllm_port, "vLLM (FLYWHEEL_VLLM_PORT)")
        if not s.kafka_bootstrap:
            ensure_port_free("127.0.0.1", s.kafka_port, "the embedded broker (FLYWHEEL_KAFKA_PORT)")

    def child_env(self, creds: Credentials) -> dict[str, str]:
        """The children's environment: ours, with the resolved keys and paths on top (so a key list from
        ``.env`` or ``flywheel.toml`` reaches them whole, and a stored key never hides an operator's)."""
        s = self.settings
        env = dict(os.environ)
        env.update(as_env(creds))
        env.update(
            {
                "FLYWHEEL_VAR_DIR": str(s.var_dir.resolve()),
                "FLYWHEEL_DATABASE_URL": s.effective_database_url,
                "FLYWHEEL_VLLM_URL": s.effective_vllm_url,
                "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap or f"127.0.0.1:{s.kafka_port}",
                "FLYWHEEL_HOST": s.host,
                "FLYWHEEL_PORT": str(s.port),
                "FLYWHEEL_SEED_MODEL_PATH": str(s.seed_model_dir.resolve()),
                "FLYWHEEL_CANARY_GATEWAY_METRICS_URLS": f"http://{s.host}:{s.port}/metrics",
            }
        )
        return env

    def start(self) -> Credentials:
        s = self.settings
        self.preflight()
        creds = ensure_credentials(s)
        self._ensure_seed_model()
        self._ensure_safety_classifier()
        if not s.kafka_bootstrap:
            self._start_broker()
        if not s.vllm_url:
            self._start_vllm()
        env = self.child_env(creds)
        self._keep_off_vllm_cores(env)
        flywheel = [sys.executable, "-m", "flywheel.cli"]
        gateway = ManagedProcess("gateway", [*flywheel, "serve"], s.logs_dir / "gateway.log", env=env)
        with self.console.status("starting the gateway…"):
            gateway.start()
            self.children.append(gateway)
            gateway.wait_ready(lambda: _http_ok(f"http://{s.host}:{s.port}/readyz"), timeout_s=120)
        self.console.print(f"[green]✓[/] gateway on http://{s.host}:{s.port}")
        consumer = ManagedProcess("consumer", [*flywheel, "consume"], s.logs_dir / "consumer.log", env=env)
        consumer.start()
        self.children.append(consumer)
        self.console.print("[green]✓[/] feedback consumer started")
        if not s.canary_controller:
            self.console.print("[yellow]canary controller not started[/] (FLYWHEEL_CANARY_CONTROLLER=false)")
            return creds
        controller = ManagedProcess(
            "canary controller", [*flywheel, "canary", "watch"], s.logs_dir / "canary.log", env=env
        )
        controller.start()
        self.children.append(controller)
        self.console.print("[green]✓[/] canary controller started")
        return creds

    def _keep_off_vllm_cores(self, env: dict[str, str]) -> None:
        """Run the broker and the children on the cores vLLM's CPU worker is not pinned to
        (flywheel/cpus.py says why); an explicit FLYWHEEL_CPUS wins."""
        from flywheel.cpus import cpus_besides, format_cpu_list, move_tree, pinned_cpus

        if self.settings.cpus or self._vllm is None or self._vllm.pid is None:  # type: ignore[attr-defined]
            return
        rest = cpus_besides(pinned_cpus(self._vllm.pid))  # type: ignore[attr-defined]
        if rest is None:
            return
        env["FLYWHEEL_CPUS"] = format_cpu_list(rest)
        if self._broker is not None and self._broker.pid is not None:  # type: ignore[attr-defined]
            move_tree(self._broker.pid, rest)  # type: ignore[attr-defined]
        cpus = env["FLYWHEEL_CPUS"]
        self.console.print(f"[green]✓[/] vLLM's worker is pinned to its own cores: the rest runs on CPUs {cpus}")

    def _ensure_seed_model(self) -> None:
        from policies.seed.build import SeedConfig, ensure_seed_model

        target = self.settings.seed_model_dir
        config = SeedConfig.fixture() if self.settings.seed_preset == "fixture" else SeedConfig.default()
        ensure_seed_model(target, config, console=self.console)
        self.console.print(f"[green]✓[/] seed policy at {target}")

    def _ensure_safety_classifier(self) -> None:
        """The learned input filter is trained here, once, from the labelled set the project ships."""
        if "classifier" not in self.settings.safety_input_filters or not self.settings.safety_enabled:
            return
        from gateway.grounding.encoder import Encoder
        from safety.classifier import ensure_trained

        with self.console.status("training the safety classifier head (first start only)…"):
            trained = ensure_trained(self.settings.safety_classifier_dir, Encoder.from_settings(self.settings, bulk=True))
        verb = "trained" if trained else "found"
        self.console.print(f"[green]✓[/] safety classifier {verb} at {self.settings.safety_classifier_dir}")

    def _start_broker(self) -> None:
        from deploy.broker import EmbeddedBroker

        broker = EmbeddedBroker("127.0.0.1", self.settings.kafka_port, self.settings.logs_dir / "broker.log")
        with self.console.status("starting the Kafka-protocol broker…"):
            broker.start()
            self._broker = broker  # stop() cleans up even when it never gets ready
            broker.wait_ready()  # ProcessStartError, with the log tail, if it dies or never listens
        self.console.print(f"[green]✓[/] Kafka-protocol broker (Tansu) on {broker.bootstrap}")

    def _start_vllm(self) -> None:
        from policies.vllm_server import VLLMServer, VLLMServerConfig

        server = VLLMServer(VLLMServerConfig.from_settings(self.settings))
        with self.console.status("starting vLLM on the seed policy (about 20-60 s on CPU)…"):
            server.start()
            self._vllm = server
            server.wait_ready()
        self.console.print(f"[green]✓[/] vLLM on {server.url} (log: {server.log_path})")

    # --- run & stop -----------------------------------------------------------------------
    def wait(self) -> int:
        """Block until a signal or until a child dies; returns the exit code for the launcher."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self._stop.set())
        while not self._stop.wait(1.0):
            dead = self.dead()
            if dead is not None:
                name, log_path = dead
                self.console.print(f"[red]✗ {name} exited; see {log_path}. Stopping the stack.[/]")
                return 1
        return 0

    def dead(self) -> tuple[str, Path] | None:
        """The first process of the stack that is no longer running, as (name, log path); None if all are."""
        if self._broker is not None and not self._broker.alive():  # type: ignore[attr-defined]
            return "the broker", self._broker.log_path  # type: ignore[attr-defined]
        if self._vllm is not None and not self._vllm.alive():  # type: ignore[attr-defined]
            return "vLLM", self._vllm.log_path  # type: ignore[attr-defined]
        for child in self.children:
            if not child.alive():
                return child.name, child.log_path
        return None

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self._vllm is not None:
            self._vllm.stop()  # type: ignore[attr-defined]
            self._vllm = None
        if self._broker is not None:
            self._broker.stop()  # type: ignore[attr-defined]
            self._broker = None

    def print_banner(self, creds: Credentials) -> None:
        s = self.settings
        base = f"http://{s.host}:{s.port}"
        key_note = " (new)" if "api_key" in creds.generated else ""
        if s.api_keys and s.admin_keys:
            kept = "keys from FLYWHEEL_API_KEYS / FLYWHEEL_ADMIN_KEYS"
        else:
            kept = f"keys are kept in {s.var_dir / 'credentials.json'}"
        self.console.print(
            f"""
[bold]Flywheel is up.[/]
  chat page     {base}/
  OpenAI API    {base}/v1   (model "flywheel")
  metrics       {base}/metrics
  chat key{key_note}     {creds.api_key}
  operator key  {creds.admin_key}
  ({kept})

Try:
  curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {creds.api_key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"flywheel","messages":[{{"role":"user","content":"How much does Kestrel Backup cost?"}}]}}'
  FLYWHEEL_ADMIN_KEY={creds.admin_key} flywheel policy list --url {base}

Ctrl-C stops everything."""
        )


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_stack(settings: Settings, console: Console) -> int:
    """Start everything, wait, stop everything. SIGTERM during start-up unwinds like Ctrl-C."""
    signal.signal(signal.SIGTERM, _interrupt)
    stack = Stack(settings, console)
    try:
        creds = stack.start()
        stack.print_banner(creds)
        return stack.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("stopped.")
