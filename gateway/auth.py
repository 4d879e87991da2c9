"""Bearer-key authentication with two scopes: chat keys and operator (admin) keys.

Keys are compared in constant time: both sides are hashed to equal-length SHA-256 digests and
compared with ``hmac.compare_digest``, and every configured key is compared (no early exit), so
neither timing nor key length tells an attacker how close a guess was. A chat key never opens
``/admin`` (403); a missing or unknown key is 401. With no chat keys configured the chat API is open
(development), but the operator API always needs an operator key. The audit log records a short
fingerprint of the key, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from flywheel.settings import Settings
from gateway.errors import Forbidden, Unauthorized

Scope = Literal["chat", "admin"]
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the scope their key grants and a non-secret name for logs and audit."""

    scope: Scope | Literal["anonymous"]
    actor: str


def fingerprint(key: str) -> str:
    """First 8 hex digits of the key's SHA-256: enough to tell keys apart, useless to an attacker."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class KeyRing:
    """The configured keys, pre-hashed once; decides which scope a presented key grants."""

    def __init__(self, chat_keys: Sequence[str], admin_keys: Sequence[str]) -> None:
        self._chat = [_digest(k) for k in chat_keys if k]
        self._admin = [_digest(k) for k in admin_keys if k]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.api_keys, settings.admin_keys)

    @property
    def chat_open(self) -> bool:
        return not self._chat

    def scope_of(self, key: str) -> Scope | None:
        """``"admin"``, ``"chat"`` or None, after comparing against every key of both lists."""
        presented = _digest(key)
        admin = chat = False
        for known in self._admin:
            admin |= hmac.compare_digest(presented, known)
        for known in self._chat:
            chat |= hmac.compare_digest(presented, known)
        return "admin" if admin else "chat" if chat else None

    def authorize_chat(self, authorization: str | None) -> Principal:
        """Chat keys and operator keys may chat; anyone may when no chat keys are configured."""
        key = _bearer(authorization)
        scope = self.scope_of(key) if key else None
        if scope is not None:
            assert key is not None
            return Principal(scope, f"{'op' if scope == 'admin' else 'key'}:{fingerprint(key)}")
        if self.chat_open:
            return Principal("anonymous", "anonymous")
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", headers=_CHALLENGE)
        raise Unauthorized("invalid API key", headers=_CHALLENGE)

    def authorize_admin(self, authorization: str | None) -> Principal:
        """Only operator keys; a valid chat key is recognised and refused with 403."""
        key = _bearer(authorization)
        if key is None:
            raise Unauthorized("missing operator key: send 'Authorization: Bearer <key>'", headers=_CHALLENGE)
        scope = self.scope_of(key)
        if scope == "admin":
            return Principal("admin", f"op:{fingerprint(key)}")
        if scope == "chat":
            raise Forbidden("this key may not use the operator API", code="insufficient_scope")
        if not self._admin:
            raise Unauthorized("no operator keys are configured (set FLYWHEEL_ADMIN_KEYS)", headers=_CHALLENGE)
        raise Unauthorized("invalid operator key", headers=_CHALLENGE)


def chat_key_guard(keyring: KeyRing) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency bound to ``keyring`` (for routers built outside an app that has one in state)."""

    async def guard(request: Request) -> Principal:
        return keyring.authorize_chat(request.headers.get("authorization"))

    return guard


def admin_key_guard(keyring: KeyRing) -> Callable[[Request], Awaitable[Principal]]:
    async def guard(request: Request) -> Principal:
        return keyring.authorize_admin(request.headers.get("authorization"))

    return guard


def _app_keyring(request: Request) -> KeyRing:
    keyring = getattr(request.app.state, "keyring", None)
    if keyring is None:
        raise RuntimeError("app.state.keyring is not set (create_app sets KeyRing.from_settings(settings))")
    return keyring


async def require_chat_key(request: Request) -> Principal:
    """FastAPI dependency for chat routes; uses ``request.app.state.keyring``."""
    return _app_keyring(request).authorize_chat(request.headers.get("authorization"))


async def require_admin_key(request: Request) -> Principal:
    """FastAPI dependency for operator routes; uses ``request.app.state.keyring``."""
    return _app_keyring(request).authorize_admin(request.headers.get("authorization"))
