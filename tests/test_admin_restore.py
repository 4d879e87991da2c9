"""A gateway that starts before vLLM (or outlives a vLLM restart) keeps trying to load the active LoRA
adapters until it can, and says so in the log; it does not give up after one failed start-up attempt.

The loader here stands in for vLLM's load endpoint: what is under test is the service's retry rule, and
a real vLLM cannot be made to refuse on cue and then accept (tests/test_gateway_canary.py loads real
adapters into the real vLLM)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from flywheel.db import create_schema, make_engine
from gateway.admin.service import AdminService
from policies.registry import PolicyRegistry


class FlakyLoader:
    """Refuses the first ``refusals`` loads (vLLM not up yet), then accepts."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts = 0
        self.loaded: set[str] = set()

    async def load_lora_adapter(self, name: str, path: str) -> None:
        self.attempts += 1
        if self.attempts <= self.refusals:
            raise ConnectionRefusedError("vLLM is not listening yet")
        self.loaded.add(name)

    async def unload_lora_adapter(self, name: str) -> None:
        self.loaded.discard(name)


@pytest.fixture
def registry(tmp_path: Path) -> PolicyRegistry:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    create_schema(engine)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "config.json").write_text("{}")
    reg = PolicyRegistry(engine)
    reg.ensure_seed(seed, served_model_name="seed")
    return reg


def test_adapters_that_fail_at_start_up_are_retried_until_loaded(
    registry: PolicyRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    loader = FlakyLoader(refusals=2)
    admin = AdminService(registry, loader, max_loaded_adapters=3)
    version = registry.register("lora", adapter, parent="seed")

    async def scenario() -> dict[str, str]:
        failures = await admin.start_restoring(retry_s=0.01)
        for _ in range(500):
            if version.served_model_name in loader.loaded:
                break
            await asyncio.sleep(0.01)
        await admin.aclose()
        return failures

    with caplog.at_level(logging.WARNING, logger="gateway.admin.service"):
        failures = asyncio.run(scenario())
    assert set(failures) == {version.id}
    assert loader.loaded == {version.served_model_name}
    assert loader.attempts == 3
    assert sum(f"adapter of {version.id} not loaded" in r.getMessage() for r in caplog.records) == 2


def test_nothing_is_retried_when_every_adapter_loads(registry: PolicyRegistry, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    loader = FlakyLoader(refusals=0)
    admin = AdminService(registry, loader, max_loaded_adapters=3)
    registry.register("lora", adapter, parent="seed")

    async def scenario() -> None:
        assert await admin.start_restoring(retry_s=0.01) == {}
        await asyncio.sleep(0.1)
        await admin.aclose()

    asyncio.run(scenario())
    assert loader.attempts == 1
