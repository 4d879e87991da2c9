"""Keys for a one-machine stack: generated on first `flywheel up`, kept in ``var/credentials.json``.

Keys set in settings (``FLYWHEEL_API_KEYS`` / ``FLYWHEEL_ADMIN_KEYS``) win; otherwise the file is read,
or created with fresh random keys (mode 0600, since it holds secrets).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from flywheel.settings import Settings


@dataclass(frozen=True)
class Credentials:
    api_key: str
    admin_key: str
    feedback_secret: str
    generated: bool = False


def credentials_path(settings: Settings) -> Path:
    return settings.var_dir / "credentials.json"


def ensure_credentials(settings: Settings) -> Credentials:
    path = credentials_path(settings)
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    generated = False
    values = {
        "api_key": settings.api_keys[0] if settings.api_keys else stored.get("api_key"),
        "admin_key": settings.admin_keys[0] if settings.admin_keys else stored.get("admin_key"),
        "feedback_secret": stored.get("feedback_secret"),
    }
    for name, prefix in (("api_key", "fw-chat-"), ("admin_key", "fw-admin-"), ("feedback_secret", "")):
        if not values[name]:
            values[name] = prefix + secrets.token_urlsafe(24)
            generated = True
    if generated or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=2)
    return Credentials(generated=generated, **values)  # type: ignore[arg-type]


def as_env(creds: Credentials) -> dict[str, str]:
    data = asdict(creds)
    return {
        "FLYWHEEL_API_KEYS": data["api_key"],
        "FLYWHEEL_ADMIN_KEYS": data["admin_key"],
        "FLYWHEEL_FEEDBACK_SECRET": data["feedback_secret"],
    }
