"""What `flywheel up` hands its children, and how it watches the embedded broker; no gateway, no vLLM.

Keys: every key an operator set reaches the children (a comma-separated list, from the environment or
``flywheel.toml``), and operator-set values win over the stored file; generated ones are stored (0600)
and reused. Broker: the launcher waits until it listens before saying so, and a broker that dies later
stops the stack like any other child.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from deploy.broker import EmbeddedBroker
from deploy.credentials import as_env, credentials_path, ensure_credentials
from deploy.launcher import Stack
from flywheel.procs import ProcessStartError, free_port
from flywheel.settings import Settings
from gateway.auth import KeyRing


@pytest.fixture(autouse=True)
def _clean_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLYWHEEL_* variable, ``.env`` or ``flywheel.toml`` of the checkout leaks into these Settings."""
    for name in list(os.environ):
        if name.startswith("FLYWHEEL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _stack(tmp_path: Path, **fields: object) -> tuple[Stack, io.StringIO]:
    out = io.StringIO()
    return Stack(Settings(var_dir=tmp_path / "var", **fields), Console(file=out, width=200)), out


def _child_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a child started with ``env`` would read."""
    for name in list(os.environ):
        if name.startswith("FLYWHEEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("FLYWHEEL_"):
            monkeypatch.setenv(name, value)
    return Settings()


# --- keys -----------------------------------------------------------------------------------------
def test_every_operator_key_reaches_the_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_API_KEYS", "chat-a, chat-b")
    monkeypatch.setenv("FLYWHEEL_ADMIN_KEYS", "op-a,op-b,op-c")
    monkeypatch.setenv("FLYWHEEL_FEEDBACK_SECRET", "operator-secret")
    monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path / "var"))
    stack = Stack(Settings(), Console(file=io.StringIO()))
    creds = ensure_credentials(stack.settings)
    assert creds.api_keys == ("chat-a", "chat-b") and creds.admin_keys == ("op-a", "op-b", "op-c")
    assert creds.feedback_secret == "operator-secret" and not creds.generated
    env = stack.child_env(creds)
    assert env["FLYWHEEL_API_KEYS"] == "chat-a,chat-b"
    assert env["FLYWHEEL_ADMIN_KEYS"] == "op-a,op-b,op-c"
    assert env["FLYWHEEL_FEEDBACK_SECRET"] == "operator-secret"

    child = _child_settings(env, monkeypatch)
    ring = KeyRing.from_settings(child)  # what the gateway checks bearer keys against
    assert [ring.scope_of(k) for k in ("chat-a", "chat-b", "op-a", "op-c", "nope")] == [
        "chat", "chat", "admin", "admin", None
    ]  # fmt: skip
    assert child.feedback_secret == "operator-secret"
    assert not credentials_path(stack.settings).exists(), "operator-set secrets are not copied to disk"


def test_operator_settings_win_over_the_stored_file(tmp_path: Path) -> None:
    stack, _ = _stack(tmp_path)
    first = ensure_credentials(stack.settings)  # generates and stores all three
    assert set(first.generated) == {"api_key", "admin_key", "feedback_secret"}
    stored = json.loads(credentials_path(stack.settings).read_text())

    stack, _ = _stack(tmp_path, api_keys=["chat-x", "chat-y"], feedback_secret="set-by-operator")
    creds = ensure_credentials(stack.settings)
    env = as_env(creds)
    assert env["FLYWHEEL_API_KEYS"] == "chat-x,chat-y"
    assert env["FLYWHEEL_FEEDBACK_SECRET"] == "set-by-operator"
    assert env["FLYWHEEL_ADMIN_KEYS"] == stored["admin_key"], "what the operator did not set comes from the file"
    assert not creds.generated
    assert json.loads(credentials_path(stack.settings).read_text()) == stored, "the file is left as it was"


def test_a_key_list_from_flywheel_toml_reaches_the_children(tmp_path: Path) -> None:
    # Not in os.environ at all: only passing the resolved settings through gets it to the children.
    (tmp_path / "flywheel.toml").write_text('api_keys = ["toml-1", "toml-2"]\nadmin_keys = ["toml-op"]\n')
    stack, _ = _stack(tmp_path)
    env = stack.child_env(ensure_credentials(stack.settings))
    assert env["FLYWHEEL_API_KEYS"] == "toml-1,toml-2" and env["FLYWHEEL_ADMIN_KEYS"] == "toml-op"


def test_generated_keys_are_stored_privately_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack, out = _stack(tmp_path)
    creds = ensure_credentials(stack.settings)
    path = credentials_path(stack.settings)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    stored = json.loads(path.read_text())
    assert stored == {"api_key": creds.api_key, "admin_key": creds.admin_key, "feedback_secret": creds.feedback_secret}
    assert creds.api_key.startswith("fw-chat-") and creds.admin_key.startswith("fw-admin-")
    env = stack.child_env(creds)
    child = _child_settings(env, monkeypatch)
    assert child.api_keys == [creds.api_key] and child.admin_keys == [creds.admin_key]
    assert child.feedback_secret == creds.feedback_secret
    stack.print_banner(creds)
    assert "chat key (new)" in out.getvalue() and str(path) in out.getvalue()

    again = ensure_credentials(stack.settings)
    assert (again.api_keys, again.admin_keys, again.feedback_secret) == (creds.api_keys, creds.admin_keys,
                                                                          creds.feedback_secret)  # fmt: skip
    assert not again.generated


def test_a_missing_value_is_added_to_the_file(tmp_path: Path) -> None:
    stack, _ = _stack(tmp_path)
    path = credentials_path(stack.settings)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"api_key": "old-chat", "admin_key": "old-op"}))  # from before feedback secrets
    path.chmod(0o644)
    creds = ensure_credentials(stack.settings)
    assert creds.generated == ("feedback_secret",)
    assert (creds.api_key, creds.admin_key) == ("old-chat", "old-op")
    assert json.loads(path.read_text()) == {"api_key": "old-chat", "admin_key": "old-op",
                                            "feedback_secret": creds.feedback_secret}  # fmt: skip
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# --- the embedded broker --------------------------------------------------------------------------
@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """Stack.wait() installs SIGINT/SIGTERM handlers; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_broker_is_ready_when_announced_and_its_death_stops_the_stack(
    tmp_path: Path, keep_signal_handlers: None
) -> None:
    stack, out = _stack(tmp_path, kafka_port=free_port())
    try:
        stack._start_broker()
        # Announced only once it listens: connect at once, no retry.
        with socket.create_connection(("127.0.0.1", stack.settings.kafka_port), timeout=1):
            pass
        assert "Kafka-protocol broker (Tansu) on" in out.getvalue()
        assert stack.dead() is None

        broker = stack._broker
        assert isinstance(broker, EmbeddedBroker) and broker.pid is not None
        os.killpg(broker.pid, signal.SIGKILL)
        give_up = threading.Timer(15.0, stack._stop.set)  # a wait() blind to the broker returns 0, not hangs
        give_up.start()
        try:
            assert stack.wait() == 1, "a dead broker must end wait()"
        finally:
            give_up.cancel()
        assert "✗ the broker exited" in out.getvalue() and str(broker.log_path) in out.getvalue()
    finally:
        stack.stop()
    assert stack._broker is None


def test_a_broker_that_dies_at_start_is_an_error_not_a_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddedBroker, "argv", lambda self: ["sh", "-c", "echo tansu-says-no; exit 3"])
    stack, out = _stack(tmp_path, kafka_port=free_port())
    try:
        with pytest.raises(ProcessStartError, match="tansu-says-no"):
            stack._start_broker()
        assert "✓" not in out.getvalue()
    finally:
        stack.stop()
    assert stack._broker is None
