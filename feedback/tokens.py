"""Signed feedback tokens: a widget may rate the one response it was given, and only until it expires.

Token = ``v1.<expiry>.<policy_version>.<mac>`` where ``mac = HMAC-SHA256(secret, response_id | version |
expiry)``, URL-safe base64 without padding. The response id is not inside the token (the request
carries it), so a token issued for one response verifies for no other. Verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "v1"
SEPARATOR = "|"  # between the MAC's fields; never in a response id, so the fields read back one way only


class InvalidToken(Exception):
    """Forged, expired, malformed, or issued for another response; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenClaims:
    response_id: str
    policy_version: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FeedbackTokenSigner:
    def __init__(self, secret: str | bytes, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a feedback token secret is required")
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, response_id: str, policy_version: str, expires_at: int) -> str:
        msg = f"{response_id}{SEPARATOR}{policy_version}{SEPARATOR}{expires_at}".encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def issue(self, response_id: str, policy_version: str) -> str:
        if SEPARATOR in response_id:
            raise ValueError(f"a response id may not contain {SEPARATOR!r}")
        expires_at = int(self._clock()) + self.ttl_s
        version = _b64(policy_version.encode())
        return f"{PREFIX}.{expires_at}.{version}.{self._mac(response_id, policy_version, expires_at)}"

    def verify(self, token: str, response_id: str) -> TokenClaims:
        if SEPARATOR in response_id:  # "a|b" of version "c" would read as "a" of version "b|c"
            raise InvalidToken("malformed response id")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise InvalidToken("malformed token")
        _, expiry_text, version_b64, mac = parts
        try:
            expires_at = int(expiry_text)
            policy_version = base64.urlsafe_b64decode(version_b64 + "=" * (-len(version_b64) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidToken("malformed token") from None
        if expiry_text != str(expires_at) or version_b64 != _b64(policy_version.encode()):
            # int() and b64decode also accept other spellings (" 17", "+17", spare bits): one token, one string
            raise InvalidToken("malformed token")
        expected = self._mac(response_id, policy_version, expires_at)
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise InvalidToken("token does not match this response")
        if self._clock() > expires_at:
            raise InvalidToken("token expired")
        return TokenClaims(response_id=response_id, policy_version=policy_version, expires_at=expires_at)
