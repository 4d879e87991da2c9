"""What can go wrong talking to a policy server, as a small hierarchy the gateway maps to HTTP answers."""

from __future__ import annotations

from typing import Any


class PolicyError(Exception):
    """Base of every policy-server failure."""


class PolicyUnavailable(PolicyError):
    """The server cannot be reached, dropped the connection, or answered 503: retry elsewhere or later."""


class PolicyTimeout(PolicyError):
    """The server took longer than the client's timeout (or the connection pool stayed full that long)."""


class PolicyHTTPError(PolicyError):
    """The server answered with an error status; ``message`` is vLLM's own explanation."""

    def __init__(self, status_code: int, body: Any, message: str | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.message = message or _message_of(body)
        super().__init__(f"policy server answered {status_code}: {self.message}")


class AdapterNotFound(PolicyHTTPError):
    """A LoRA adapter path could not be loaded (404), or the adapter to unload is not loaded."""


class AdapterAlreadyLoaded(PolicyHTTPError):
    """An adapter with that name is already loaded; use a new name per version (stale prefix cache)."""


class AdapterCapacityError(PolicyError):
    """Loading one more adapter would use the last LoRA slot, which the CPU LoRA bug needs kept free."""


def _message_of(body: Any) -> str:
    """vLLM puts its message at ``error.message`` (newer) or ``message`` (older); fall back to the body."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return str(body)[:1000]
