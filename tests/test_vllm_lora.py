"""Runtime LoRA against real vLLM: load, serve, unload, the error cases, the slot budget, and the CPU
LoRA trap (a base request batched with adapter requests must not get the adapter applied)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio

from policies.errors import AdapterAlreadyLoaded, AdapterCapacityError, AdapterNotFound
from policies.vllm_client import PolicyClient
from policies.vllm_server import VLLMServer
from tests.fixtures.vllm import make_lora_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session")]

TOPICS = ["kestrel", "falcon", "river", "mountain", "harbor", "forest", "lantern", "bridge", "garden", "comet"]
PROMPTS = [f"{verb} the {topic}." for verb in ("Describe", "Explain", "Name", "Praise") for topic in TOPICS]


def _name(prefix: str) -> str:
    """A fresh adapter name per load: same-name reloads can serve stale prefix-cache blocks."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(vllm_server: VLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{vllm_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def clean_adapters(policy_client: PolicyClient) -> AsyncIterator[None]:
    """Each test starts and ends with no adapter loaded (the session server is shared)."""
    for name in await policy_client.loaded_adapters():
        await policy_client.unload_lora_adapter(name)
    yield
    for name in await policy_client.loaded_adapters():
        await policy_client.unload_lora_adapter(name)


async def _greedy(sdk: openai.AsyncOpenAI, model: str, prompt: str) -> tuple[str, tuple[int, ...]]:
    """Greedy text and token ids (ids catch differences that decode to the same or empty text)."""
    resp = await sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=16,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    choice = resp.choices[0]
    ids = (choice.model_extra or {}).get("token_ids") or []
    return choice.message.content or "", tuple(ids)


@pytest.mark.usefixtures("clean_adapters")
async def test_load_serve_unload(policy_client: PolicyClient, sdk: openai.AsyncOpenAI, lora_adapter_dir: Path) -> None:
    name = _name("v")
    await policy_client.load_lora_adapter(name, str(lora_adapter_dir))
    cards = {m["id"]: m for m in await policy_client.models()}
    assert cards[name]["parent"] == "seed"
    assert await policy_client.loaded_adapters() == [name]
    resp = await sdk.chat.completions.create(
        model=name, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=8, temperature=0
    )
    assert resp.model == name and resp.choices[0].finish_reason in {"stop", "length"}
    await policy_client.unload_lora_adapter(name)
    assert name not in [m["id"] for m in await policy_client.models()]
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)


@pytest.mark.usefixtures("clean_adapters")
async def test_adapter_errors(policy_client: PolicyClient, lora_adapter_dir: Path, tmp_path: Path) -> None:
    name = _name("dup")
    await policy_client.load_lora_adapter(name, str(lora_adapter_dir))
    with pytest.raises(AdapterAlreadyLoaded) as dup:
        await policy_client.load_lora_adapter(name, str(lora_adapter_dir))
    assert dup.value.status_code == 400 and "already been loaded" in dup.value.message
    with pytest.raises(AdapterNotFound) as missing:
        await policy_client.load_lora_adapter(_name("bad"), str(tmp_path / "no-adapter-here"))
    assert missing.value.status_code == 404
    with pytest.raises(AdapterNotFound):
        await policy_client.unload_lora_adapter(_name("never-loaded"))
    assert await policy_client.loaded_adapters() == [name]


@pytest.mark.usefixtures("clean_adapters")
async def test_client_keeps_the_spare_lora_slot(
    vllm_server: VLLMServer, sdk: openai.AsyncOpenAI, lora_adapter_dir: Path, tmp_path: Path
) -> None:
    """With a budget of one slot: a second name is refused, in-place replacement is not, and unloading
    gives no slot back (vLLM keeps the adapter in the engine)."""
    assert vllm_server.max_adapters == vllm_server.config.max_loras - 1
    other = make_lora_adapter(vllm_server.config.model_dir, tmp_path / "other", seed=7)
    async with PolicyClient(vllm_server.url, timeout_s=60, max_connections=4, max_adapters=1) as client:
        name = _name("cap")
        await client.load_lora_adapter(name, str(lora_adapter_dir))
        before = await _greedy(sdk, name, PROMPTS[1])
        with pytest.raises(AdapterCapacityError):
            await client.load_lora_adapter(_name("second"), str(lora_adapter_dir))
        await client.replace_lora_adapter(name, str(other))
        after = await _greedy(sdk, name, PROMPTS[1])
        assert after != before, "the in-place reload should serve the new weights"
        await client.unload_lora_adapter(name)
        with pytest.raises(AdapterCapacityError, match="unloading frees no slot"):
            await client.load_lora_adapter(_name("after-unload"), str(lora_adapter_dir))
        assert await client.loaded_adapters() == []


@pytest.mark.usefixtures("clean_adapters")
async def test_base_outputs_unchanged_under_mixed_lora_traffic(
    policy_client: PolicyClient, sdk: openai.AsyncOpenAI, lora_adapter_dir: Path
) -> None:
    """THE CPU LoRA TRAP: stable (base) traffic batched with canary (adapter) traffic must stay base."""
    assert await policy_client.loaded_adapters() == []
    baseline = await asyncio.gather(*(_greedy(sdk, "seed", p) for p in PROMPTS))

    name = _name("canary")
    await policy_client.load_lora_adapter(name, str(lora_adapter_dir))
    adapter_alone = await asyncio.gather(*(_greedy(sdk, name, p) for p in PROMPTS))
    changed = sum(a != b for a, b in zip(adapter_alone, baseline, strict=True))
    assert changed >= len(PROMPTS) * 3 // 4, f"the adapter changed only {changed}/{len(PROMPTS)} outputs"

    calls = []
    for prompt in PROMPTS:  # interleaved, so the scheduler batches base and adapter requests together
        calls += [_greedy(sdk, "seed", prompt), _greedy(sdk, name, prompt)]
    mixed = await asyncio.gather(*calls)
    base_mixed, adapter_mixed = mixed[0::2], mixed[1::2]

    leaked = [p for p, got, want in zip(PROMPTS, base_mixed, baseline, strict=True) if got != want]
    assert leaked == [], f"{len(leaked)}/{len(PROMPTS)} base requests got the adapter applied: {leaked[:5]}"
    lost = [p for p, got, want in zip(PROMPTS, adapter_mixed, adapter_alone, strict=True) if got != want]
    assert lost == [], f"{len(lost)}/{len(PROMPTS)} adapter requests lost the adapter: {lost[:5]}"
