"""What the registry recorded is what gets served: an artifact whose bytes changed after registration is
refused before it is loaded into vLLM (by the API loader and the resolver-directory loader) and a seed
rebuilt under a registry is refused at start; a failed load probe withdraws only what that very call
published, never an adapter that was already there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from flywheel.db import make_engine
from policies.errors import PolicyHTTPError, PolicyUnavailable
from policies.lora_directory import DirectoryAdapterLoader
from policies.artifacts import adapter_name, adapter_sha256_prefix, artifact_sha256, verify_artifact
from policies.registry import PolicyRegistry
from policies.registry_errors import ArtifactChanged, InvalidArtifact
from policies.vllm_client import PolicyClient


def _adapter(directory: Path, weights: bytes = b"w" * 64) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "/train/seed"}))
    (directory / "adapter_model.safetensors").write_bytes(weights)
    return directory


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    yield engine
    engine.dispose()


# --- the check itself ----------------------------------------------------------------------------------------

def test_verify_artifact_accepts_the_recorded_hash_and_refuses_changed_bytes(tmp_path: Path) -> None:
    path = _adapter(tmp_path / "a")
    sha = artifact_sha256(path)
    assert verify_artifact(path, sha) == sha and verify_artifact(path, sha[:12]) == sha
    (path / "adapter_model.safetensors").write_bytes(b"x" * 64)
    with pytest.raises(ArtifactChanged, match="has changed since it was registered"):
        verify_artifact(path, sha)
    with pytest.raises(InvalidArtifact, match="does not exist"):
        verify_artifact(tmp_path / "gone", sha)


def test_adapter_names_carry_the_hash_prefix() -> None:
    sha = "0123456789abcdef" * 4
    assert adapter_sha256_prefix(adapter_name("v12", sha)) == sha[:12]
    assert adapter_sha256_prefix(adapter_name("seed-2", sha)) == sha[:12]
    assert adapter_sha256_prefix("my-adapter-1a2b3c4d") is None and adapter_sha256_prefix("flywheel-v1") is None


# --- registry ------------------------------------------------------------------------------------------------

def test_ensure_seed_refuses_a_seed_rebuilt_in_place(engine: Engine, tmp_path: Path) -> None:
    seed = _adapter(tmp_path / "seed")
    registry = PolicyRegistry(engine)
    registry.ensure_seed(seed, "seed-model")
    assert registry.ensure_seed(seed, "seed-model").id == "seed"  # unchanged: fine, every start
    (seed / "adapter_model.safetensors").write_bytes(b"rebuilt" * 10)
    with pytest.raises(ArtifactChanged, match="registered seed model"):
        PolicyRegistry(engine).ensure_seed(seed, "seed-model")
    with pytest.raises(ArtifactChanged):  # also when this process was given another path
        PolicyRegistry(engine).ensure_seed(_adapter(tmp_path / "elsewhere"), "seed-model")


def test_check_artifact_before_loading_a_version_again(engine: Engine, tmp_path: Path) -> None:
    registry = PolicyRegistry(engine)
    registry.ensure_seed(_adapter(tmp_path / "seed", b"seed"), "seed-model")
    path = _adapter(tmp_path / "v1")
    version = registry.register("lora", path)
    assert registry.check_artifact(version.id).id == version.id
    (path / "adapter_model.safetensors").write_bytes(b"swapped" * 10)
    with pytest.raises(ArtifactChanged, match=f"the artifact of {version.id}"):
        registry.check_artifact(version.id)


# --- loaders -------------------------------------------------------------------------------------------------

class FakeVLLM:
    """The parts of PolicyClient the directory loader calls; ``probe`` is what the one-token request does."""

    def __init__(self, probe: BaseException | None = None) -> None:
        self.probe = probe
        self.probed: list[str] = []

    async def models(self) -> list[dict[str, Any]]:
        return [{"id": "seed", "root": "/models/seed", "parent": None}]

    async def loaded_adapters(self) -> list[str]:
        return []

    async def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self.probed.append(body["model"])
        if self.probe is not None:
            raise self.probe
        return {"choices": [{"message": {"content": "p"}}]}


def _loader(tmp_path: Path, probe: BaseException | None = None) -> DirectoryAdapterLoader:
    return DirectoryAdapterLoader(FakeVLLM(probe), tmp_path / "resolver", max_adapters=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("probe", [PolicyUnavailable("replica starting"), PolicyHTTPError(404, {"message": "no"}),
                                   asyncio.CancelledError()])
def test_a_failed_probe_keeps_an_adapter_this_call_did_not_publish(tmp_path: Path, probe: BaseException) -> None:
    source = _adapter(tmp_path / "v1")
    name = adapter_name("v1", artifact_sha256(source))
    asyncio.run(_loader(tmp_path).load_lora_adapter(name, str(source)))  # published while the stable loaded it
    target = tmp_path / "resolver" / name
    assert json.loads((target / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/seed"
    restarted = _loader(tmp_path, probe)  # a gateway restart whose probe reaches a starting replica
    with pytest.raises(type(probe)):
        asyncio.run(restarted.load_lora_adapter(name, str(source)))
    assert (target / "adapter_model.safetensors").is_file()


def test_a_failed_probe_withdraws_what_this_call_published(tmp_path: Path) -> None:
    source = _adapter(tmp_path / "v1")
    name = adapter_name("v1", artifact_sha256(source))
    loader = _loader(tmp_path, PolicyHTTPError(400, {"message": "bad adapter"}))
    with pytest.raises(PolicyHTTPError, match="did not load the published adapter"):
        asyncio.run(loader.load_lora_adapter(name, str(source)))
    assert list((tmp_path / "resolver").iterdir()) == [] and not loader._published


def test_a_cancelled_call_withdraws_nothing(tmp_path: Path) -> None:
    source = _adapter(tmp_path / "v1")
    name = adapter_name("v1", artifact_sha256(source))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_loader(tmp_path, asyncio.CancelledError()).load_lora_adapter(name, str(source)))
    assert (tmp_path / "resolver" / name / "adapter_config.json").is_file()


def test_the_directory_loader_refuses_an_artifact_changed_since_registration(tmp_path: Path) -> None:
    source = _adapter(tmp_path / "v1")
    name = adapter_name("v1", artifact_sha256(source))
    (source / "adapter_model.safetensors").write_bytes(b"rebuilt" * 10)
    fake = FakeVLLM()
    loader = DirectoryAdapterLoader(fake, tmp_path / "resolver")  # type: ignore[arg-type]
    with pytest.raises(ArtifactChanged, match="has changed since it was registered"):
        asyncio.run(loader.load_lora_adapter(name, str(source)))
    assert list((tmp_path / "resolver").iterdir()) == [] and fake.probed == []  # nothing published or asked


def test_the_api_loader_refuses_an_artifact_changed_since_registration(tmp_path: Path) -> None:
    source = _adapter(tmp_path / "v1")
    name = adapter_name("v1", artifact_sha256(source))
    (source / "adapter_model.safetensors").write_bytes(b"rebuilt" * 10)

    async def load() -> None:
        client = PolicyClient("http://127.0.0.1:9", timeout_s=1)  # nothing listens: a request would fail otherwise
        try:
            await client.load_lora_adapter(name, str(source))
        finally:
            await client.aclose()

    with pytest.raises(ArtifactChanged):
        asyncio.run(load())
