"""Canary versions end to end: a real LoRA adapter registered through the operator API is loaded into
the real vLLM, routed to by weight and stickiness, promoted and rolled back live; a failing canary
falls back to stable. Each test uses a gateway of its own (its own registry)."""

from __future__ import annotations

from collections import Counter

import httpx
import openai
import pytest

from flywheel.procs import free_port
from tests.fixtures.broker import wait_until
from tests.fixtures.gateway import GatewayHandle

pytestmark = pytest.mark.vllm

PROMPT = [{"role": "user", "content": "How do I restore a file?"}]


def ask(gw: GatewayHandle, user: str | None = None, model: str = "flywheel") -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    return client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12, temperature=0, user=user)


def version_of(resp: openai.types.chat.ChatCompletion) -> str:
    return resp.model_extra["flywheel"]["policy_version"]


def routed_to(gw: GatewayHandle, user: str) -> str:
    """The version that answers ``user`` now (one token: only the routing matters)."""
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    resp = client.chat.completions.create(model="flywheel", messages=PROMPT, max_tokens=1, temperature=0, user=user)
    return version_of(resp)


def wait_routed(gw: GatewayHandle, users: list[str], version: str) -> None:
    """Until one of ``users`` is answered by ``version``. The gateway re-reads the registry every
    FLYWHEEL_REGISTRY_CACHE_S (0.2 s in tests), and at once after its own changes, but asynchronously;
    it swaps in whole tables, so one user routed by the new table means every user is."""
    wait_until(lambda: any(routed_to(gw, u) == version for u in users), 30, f"{version} answering {users[:3]}…")


def fallbacks(gw: GatewayHandle, version: str) -> float:
    series = f'flywheel_canary_fallbacks_total{{policy_version="{version}"}} '
    lines = httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines()
    return next((float(line[len(series):]) for line in lines if line.startswith(series)), 0.0)


def test_lora_canary_split_promote_and_rollback(gateway_factory, lora_adapter_dir) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory("canary")
    baseline = ask(gw).choices[0].message.content
    with gw.admin() as admin:
        created = admin.post("/admin/policies", json={"kind": "lora", "path": str(lora_adapter_dir), "parent": "seed"})
        assert created.status_code == 201, created.text
        canary = created.json()["id"]
        assert admin.post(f"/admin/policies/{canary}/weight", json={"weight": 0.5}).status_code == 200
        wait_routed(gw, [f"user-{i}" for i in range(30)], canary)  # some of them, at weight 0.5

        # Split by weight, sticky per user, and the adapter really answers canary traffic.
        seen = {f"user-{i}": ask(gw, user=f"user-{i}") for i in range(30)}
        by_version = Counter(version_of(r) for r in seen.values())
        assert set(by_version) == {"seed", canary}, by_version
        for user, first in list(seen.items())[:8]:
            assert version_of(ask(gw, user=user)) == version_of(first)
        for resp in seen.values():
            if version_of(resp) == "seed":
                assert resp.choices[0].message.content == baseline  # stable never sees the adapter
        canary_texts = {r.choices[0].message.content for r in seen.values() if version_of(r) == canary}
        assert canary_texts != {baseline}

        # Pinning by version id reaches the canary directly, and the stable's id ("seed", which is also
        # the name vLLM serves the base model under) reaches the stable only.
        assert version_of(ask(gw, model=canary)) == canary
        pinned_stable = [ask(gw, model="seed") for _ in range(12)]
        assert {version_of(r) for r in pinned_stable} == {"seed"}
        assert {r.choices[0].message.content for r in pinned_stable} == {baseline}

        # Rollback: weight 0, status rolled_back, everyone back on stable.
        assert admin.post(f"/admin/policies/{canary}/rollback", json={"reason": "test"}).status_code == 200
        wait_routed(gw, [next(u for u, r in seen.items() if version_of(r) == canary)], "seed")
        assert {version_of(ask(gw, user=u)) for u in seen} == {"seed"}
        listed = {v["id"]: v for v in admin.get("/admin/policies").json()["data"]}
        assert listed[canary]["status"] == "rolled_back" and listed[canary]["weight"] == 0

        # A second adapter version, promoted: all traffic moves, old stable kept as retired.
        second = admin.post("/admin/policies", json={"kind": "lora", "path": str(lora_adapter_dir), "parent": "seed"})
        assert second.status_code == 201, second.text
        new_id = second.json()["id"]
        assert admin.post(f"/admin/policies/{new_id}/promote").status_code == 200
        wait_routed(gw, ["probe"], new_id)
        assert {version_of(ask(gw, user=u)) for u in list(seen)[:10]} == {new_id}
        listed = {v["id"]: v for v in admin.get("/admin/policies").json()["data"]}
        assert listed[new_id]["status"] == "stable" and listed["seed"]["status"] == "retired"

        # Reversible: promoting the old stable brings it back.
        assert admin.post("/admin/policies/seed/promote").status_code == 200
        wait_routed(gw, ["probe"], "seed")
        assert version_of(ask(gw, user="user-1")) == "seed"
        actions = [a["action"] for a in admin.get("/admin/audit").json()["data"]]
        assert {"register", "set_weight", "rollback", "promote"} <= set(actions)


def test_failing_canary_falls_back_to_stable(gateway_factory, seed_model_dir) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory("fallback")
    dead = f"http://127.0.0.1:{free_port()}"
    with gw.admin() as admin:
        created = admin.post(
            "/admin/policies", json={"kind": "full", "path": str(seed_model_dir), "endpoint": dead, "parent": "seed"}
        )
        assert created.status_code == 201, created.text
        broken = created.json()["id"]
        assert admin.post(f"/admin/policies/{broken}/weight", json={"weight": 1.0}).status_code == 200
    # Answers come from stable before and after the change: the fallback counter shows it reached routing.
    wait_until(lambda: routed_to(gw, "probe") == "seed" and fallbacks(gw, broken) > 0, 30, "a first fallback")
    before = fallbacks(gw, broken)
    answers = [ask(gw, user=f"u{i}") for i in range(5)]
    assert {version_of(a) for a in answers} == {"seed"}
    assert fallbacks(gw, broken) - before == 5
    # Pinned to the broken version there is nothing to fall back to: a clean 503.
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, model=broken)
    assert info.value.status_code == 503


def test_chat_key_cannot_reach_admin(gateway: GatewayHandle) -> None:
    resp = httpx.get(f"{gateway.url}/admin/policies", headers={"Authorization": f"Bearer {gateway.api_key}"})
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    assert httpx.get(f"{gateway.url}/admin/policies").status_code == 401
