"""Keys for a one-machine stack: generated on first `flywheel up`, kept in ``var/credentials.json``.

What an operator set in settings wins, as a whole: every key of ``FLYWHEEL_API_KEYS`` /
``FLYWHEEL_ADMIN_KEYS`` (a comma-separated list) and ``FLYWHEEL_FEEDBACK_SECRET``, from the
environment, ``.env`` or ``flywheel.toml``. Whatever is not set is read from the file, or generated
with fresh random values and added to it (mode 0600, since it holds secrets). Operator-set values are
never copied into the file.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from flywheel.settings import Settings

# Name in credentials.json → prefix of a generated value.
_GENERATED = (("api_key", "fw-chat-"), ("admin_key", "fw-admin-"), ("feedback_secret", ""))


@dataclass(frozen=True)
class Credentials:
    api_keys: tuple[str, ...]
    admin_keys: tuple[str, ...]
    feedback_secret: str
    generated: tuple[str, ...] = ()  # names (as in credentials.json) of the values generated just now

    @property
    def api_key(self) -> str:
        """The chat key the banner shows (the first one)."""
        return self.api_keys[0]

    @property
    def admin_key(self) -> str:
        """The operator key the banner shows (the first one)."""
        return self.admin_keys[0]


def credentials_path(settings: Settings) -> Path:
    return settings.var_dir / "credentials.json"


def ensure_credentials(settings: Settings) -> Credentials:
    path = credentials_path(settings)
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    operator = {
        "api_key": tuple(settings.api_keys),
        "admin_key": tuple(settings.admin_keys),
        "feedback_secret": (settings.feedback_secret,) if settings.feedback_secret else (),
    }
    values: dict[str, tuple[str, ...]] = {}
    new: dict[str, str] = {}
    for name, prefix in _GENERATED:
        if operator[name]:
            values[name] = operator[name]
            continue
        if not stored.get(name):
            new[name] = prefix + secrets.token_urlsafe(24)
        values[name] = (stored.get(name) or new[name],)
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as fh:
            json.dump({**stored, **new}, fh, indent=2)
    return Credentials(
        api_keys=values["api_key"],
        admin_keys=values["admin_key"],
        feedback_secret=values["feedback_secret"][0],
        generated=tuple(new),
    )


def as_env(creds: Credentials) -> dict[str, str]:
    """The environment the stack's children read their keys from: every key, not just the first."""
    return {
        "FLYWHEEL_API_KEYS": ",".join(creds.api_keys),
        "FLYWHEEL_ADMIN_KEYS": ",".join(creds.admin_keys),
        "FLYWHEEL_FEEDBACK_SECRET": creds.feedback_secret,
    }
