"""Canaries on every replica of the stable vLLM server, through vLLM's filesystem LoRA resolver.

Two real vLLM servers on the fixture seed model stand for two replicas behind one Service; they share
``FLYWHEEL_VLLM_LORA_RESOLVER_DIR`` (vLLM's ``VLLM_LORA_RESOLVER_CACHE_DIR``). Two gateways on one
registry each talk to one replica. A LoRA version registered through the first gateway is published
to the directory and loaded by the first replica; the second gateway's canary traffic then reaches
the second replica, which was never sent a load call and resolves the adapter on its first request.
Rollback withdraws it from the directory; an adapter vLLM cannot load fails the registration and
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from flywheel.procs import free_port
from policies.vllm_server import VLLMServer, VLLMServerConfig
from tests.fixtures.broker import wait_until
from tests.fixtures.gateway import GatewayHandle, start_gateway
from tests.fixtures.vllm import make_lora_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

ASK = [{"role": "user", "content": "How much does the Family plan cost?"}]


@pytest.fixture(scope="module")
def replicas(seed_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[VLLMServer], Path]]:
    """Two vLLM servers reading one resolver directory, started side by side."""
    base = tmp_path_factory.mktemp("replicas")
    shared = base / "adapters"
    servers = [
        VLLMServer(VLLMServerConfig(model_dir=seed_model_dir, port=free_port(), var_dir=base / f"vllm-{i}",
                                    max_loras=4, max_lora_rank=8, max_model_len=512, lora_resolver_dir=shared))
        for i in range(2)
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.wait_ready(), servers))
        yield servers, shared


def greedy(url: str, model: str) -> str:
    body = {"model": model, "messages": ASK, "max_tokens": 16, "temperature": 0}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def adapters_on(url: str) -> set[str]:
    data = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in data if m.get("parent")}


def test_a_canary_published_through_one_gateway_is_served_by_every_replica(  # type: ignore[no-untyped-def]
    replicas: tuple[list[VLLMServer], Path], seed_model_dir: Path, tmp_path: Path, broker, gateway_shared_env
) -> None:
    (first, second), shared = replicas
    env = {
        "FLYWHEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "FLYWHEEL_VLLM_LORA_RESOLVER_DIR": str(shared),
        "FLYWHEEL_VLLM_MAX_LORAS": "4",
        "FLYWHEEL_ADAPTER_UNLOAD_GRACE_S": "0.5",
        "FLYWHEEL_GROUNDING_ENABLED": "false",
    }
    gateways: list[GatewayHandle] = []
    try:
        for name, server in (("gw-a", first), ("gw-b", second)):
            gateways.append(start_gateway(tmp_path / name, server.url, seed_model_dir, server.config.served_model_name,
                                          broker.bootstrap, extra_env=env, shared=gateway_shared_env))  # fmt: skip
        via_a, via_b = gateways
        adapter = make_lora_adapter(seed_model_dir, tmp_path / "adapter", rank=8, seed=3)
        with via_a.admin() as admin:
            created = admin.post("/admin/policies", json={"kind": "lora", "path": str(adapter), "parent": "seed"})
            assert created.status_code == 201, created.text
            version = created.json()
        name = version["served_model_name"]

        published = shared / name
        config = json.loads((published / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(seed_model_dir.resolve()), "must match vLLM's --model"
        assert name in adapters_on(first.url), "the registering gateway's replica loads it at once"
        assert name not in adapters_on(second.url), "the other replica was sent no load call"

        # The second gateway sends this version's traffic to the second replica, which resolves it (once its
        # routing table, re-read every FLYWHEEL_REGISTRY_CACHE_S, has the version).
        with httpx.Client(base_url=via_b.url, headers={"Authorization": f"Bearer {via_b.api_key}"}, timeout=60) as http:
            wait_until(lambda: version["id"] in {m["id"] for m in http.get("/v1/models").json()["data"]}, 15,
                       "the second gateway to read the new version from the registry")
            body = {"model": version["id"], "messages": ASK, "max_tokens": 16, "temperature": 0, "grounding": False}
            resp = http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["flywheel"]["policy_version"] == version["id"]
        assert name in adapters_on(second.url)
        canary_b = greedy(second.url, name)
        assert canary_b == greedy(first.url, name), "both replicas serve the same adapter"
        assert canary_b != greedy(second.url, second.config.served_model_name), "and it is not the base model"

        # Rollback withdraws it from the directory (after the unload grace), so no replica loads it anew.
        with via_a.admin() as admin:
            assert admin.post(f"/admin/policies/{version['id']}/rollback", json={"reason": "test"}).status_code == 200
        wait_until(lambda: not published.exists(), 15, "the rolled-back adapter to leave the directory")
        wait_until(lambda: name not in adapters_on(first.url), 15, "the registering replica to unload it")

        # An adapter vLLM cannot load (rank 16 > --max-lora-rank 8) fails registration and leaves nothing.
        too_big = make_lora_adapter(seed_model_dir, tmp_path / "too-big", rank=16, seed=4)
        with via_a.admin() as admin:
            refused = admin.post("/admin/policies", json={"kind": "lora", "path": str(too_big), "parent": "seed"})
        assert refused.status_code == 502, refused.text
        assert refused.json()["error"]["code"] == "adapter_load_failed"
        assert [p.name for p in shared.iterdir()] == [], "nothing half-published is left in the directory"
        assert httpx.get(f"{first.url}/health", timeout=10).status_code == 200
    finally:
        for handle in gateways:
            handle.process.stop()
