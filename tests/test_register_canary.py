"""`--register-canary` is idempotent: re-running the command (how an interrupted run resumes) reuses the
gateway's active version of the same artifact instead of registering another one (each lora spends a LoRA
slot), and a registration whose weight cannot be set is retired again instead of left at weight 0.
The operator API is a small in-process fake behind ``httpx.MockTransport``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies.artifacts import artifact_sha256
from trainer.artifacts import REGISTRATION, RegistrationError, register_canary, write_manifest

URL = "http://gateway.test"


class FakeGateway:
    """Just enough of /admin/policies: list, register, weight, retire."""

    def __init__(self) -> None:
        self.versions: list[dict[str, Any]] = []
        self.refuse_weight = False
        self.refuse_retire = False
        self.registrations = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, body = request.url.path, json.loads(request.content or b"{}")
        if request.method == "GET" and path == "/admin/policies":
            return httpx.Response(200, json={"object": "list", "data": self.versions})
        if request.method == "POST" and path == "/admin/policies":
            self.registrations += 1
            sha = artifact_sha256(Path(body["path"]))
            version = {"id": f"v{len(self.versions) + 1}", "kind": body["kind"], "status": "canary", "weight": 0.0,
                       "artifact_path": body["path"], "artifact_sha256": sha, "endpoint": body.get("endpoint"),
                       "served_model_name": f"flywheel-v{len(self.versions) + 1}-{sha[:12]}"}
            self.versions.append(version)
            return httpx.Response(201, json=version)
        version = next(v for v in self.versions if path.startswith(f"/admin/policies/{v['id']}/"))
        if path.endswith("/weight"):
            if self.refuse_weight:
                return httpx.Response(400, json={"error": {"message": "canary weights would sum to 1.2 (> 1)"}})
            version["weight"] = body["weight"]
        elif path.endswith("/retire"):
            if self.refuse_retire:
                return httpx.Response(503, json={"error": {"message": "database unavailable"}})
            version.update(status="retired", weight=0.0)
        return httpx.Response(200, json=version)

    def active(self) -> list[dict[str, Any]]:
        return [v for v in self.versions if v["status"] in ("canary", "stable")]


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    """A finished, gate-passing lora version (no training: the files and manifest are what matters)."""
    directory = tmp_path / "versions" / "dpo-run"
    (directory / "adapter").mkdir(parents=True)
    (directory / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (directory / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 50)
    write_manifest(directory, algorithm="dpo", kind="lora", artifact="adapter", parent={"id": "seed"},
                   gates={"passed": True})
    return directory


def _register(directory: Path, gateway: FakeGateway, weight: float = 0.1) -> dict[str, Any]:
    return register_canary(directory, weight, URL, "key", transport=gateway.transport())


def test_rerunning_reuses_the_registered_version(version_dir: Path) -> None:
    gateway = FakeGateway()
    first = _register(version_dir, gateway)
    assert first["id"] == "v1" and first["weight"] == 0.1 and not first.get("reused")
    gateway.versions[0]["weight"] = 0.5  # the controller has stepped the canary on since
    again = _register(version_dir, gateway, weight=0.2)
    assert again["id"] == "v1" and again["reused"] and again["weight"] == 0.5  # a rerun leaves it there
    assert gateway.registrations == 1 and len(gateway.active()) == 1
    gateway.versions[0]["weight"] = 0.0  # left at 0 (the weight call failed last time): the rerun sets it
    assert _register(version_dir, gateway, weight=0.2)["weight"] == 0.2
    assert json.loads((version_dir / REGISTRATION).read_text())["version"]["id"] == "v1"


def test_the_version_registration_json_names_is_preferred(version_dir: Path) -> None:
    gateway = FakeGateway()
    _register(version_dir, gateway)
    gateway.versions.append({**gateway.versions[0], "id": "v2"})  # the same artifact registered by hand
    assert _register(version_dir, gateway)["id"] == "v1" and gateway.registrations == 1


def test_a_stable_version_of_the_artifact_is_left_as_it_is(version_dir: Path) -> None:
    gateway = FakeGateway()
    _register(version_dir, gateway)
    gateway.versions[0].update(status="stable", weight=0.0)
    version = _register(version_dir, gateway)
    assert version["id"] == "v1" and version["status"] == "stable" and version["reused"]
    assert gateway.registrations == 1


def test_a_refused_weight_retires_the_new_version(version_dir: Path) -> None:
    gateway = FakeGateway()
    gateway.refuse_weight = True
    with pytest.raises(RegistrationError, match="would sum to 1.2.*v1 was retired again"):
        _register(version_dir, gateway)
    assert gateway.versions[0]["status"] == "retired" and not gateway.active()
    gateway.refuse_weight = False
    version = _register(version_dir, gateway)
    assert version["id"] == "v2" and [v["id"] for v in gateway.active()] == ["v2"]


def test_a_version_that_could_not_be_retired_is_reused_by_the_rerun(version_dir: Path) -> None:
    gateway = FakeGateway()
    gateway.refuse_weight = gateway.refuse_retire = True
    with pytest.raises(RegistrationError, match="v1 stays at weight 0 and a re-run reuses it"):
        _register(version_dir, gateway)
    gateway.refuse_weight = False
    version = _register(version_dir, gateway)
    assert version["id"] == "v1" and version["weight"] == 0.1 and gateway.registrations == 1


def test_a_changed_artifact_is_registered_anew(version_dir: Path) -> None:
    gateway = FakeGateway()
    _register(version_dir, gateway)
    gateway.versions[0]["artifact_sha256"] = "0" * 64  # the gateway's v1 is some other artifact
    assert _register(version_dir, gateway)["id"] == "v2" and gateway.registrations == 2


def test_an_unreachable_gateway_is_one_registration_error(version_dir: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(RegistrationError, match="cannot reach the gateway"):
        register_canary(version_dir, 0.1, URL, "key", transport=httpx.MockTransport(down))
