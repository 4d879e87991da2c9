"""Suite-wide fixtures. Each server (vLLM, broker, gateway) is started once per session by a fixture
module under tests/fixtures/, on its own free port and its own var/ directory, and stopped at the end."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.models",
    "tests.fixtures.vllm",
    "tests.fixtures.broker",
    "tests.fixtures.gateway",
    "tests.fixtures.feedback",
    "tests.fixtures.browser",
]
