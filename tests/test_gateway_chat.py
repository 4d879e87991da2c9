"""The chat API through a real gateway process in front of real vLLM, driven by the official SDK."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import openai
import pytest

from flywheel.procs import free_port
from tests.fixtures.broker import wait_until
from tests.fixtures.gateway import GatewayHandle
from tests.fixtures.vllm import TokenMeter

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "How much does Kestrel Backup cost?"}]


def client(gw: GatewayHandle, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.api_key, max_retries=0)


def test_sync_completion_has_flywheel_object(gateway: GatewayHandle) -> None:
    resp = client(gateway).chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=24, temperature=0, seed=1
    )
    assert resp.choices[0].message.content
    assert resp.usage and resp.usage.completion_tokens > 0
    extra = resp.model_extra["flywheel"]
    assert extra["policy_version"] == "seed"
    assert extra["response_id"] == resp.id


def test_raw_response_carries_trace_id(gateway: GatewayHandle) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="flywheel", messages=MESSAGES, max_tokens=4
    )
    assert len(raw.headers["x-trace-id"]) == 32


async def test_async_completion_n_logprobs_stop(gateway: GatewayHandle) -> None:
    aclient = openai.AsyncOpenAI(base_url=gateway.v1, api_key=gateway.api_key, max_retries=0)
    resp = await aclient.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=12, temperature=0.8, top_p=0.9, n=3,
        logprobs=True, top_logprobs=2, stop=["\n\n"], user="alice",
    )  # fmt: skip
    assert len(resp.choices) == 3
    assert resp.choices[0].logprobs is not None and resp.choices[0].logprobs.content
    assert len(resp.choices[0].logprobs.content[0].top_logprobs) == 2
    await aclient.close()


def test_stream_carries_the_logprobs_of_the_same_answer_unstreamed(gateway: GatewayHandle) -> None:
    """Streamed logprobs wait for their text behind the safety hold-back, but every token's entry arrives,
    in order: the same greedy answer unstreamed has the same tokens."""
    ask = {"model": "flywheel", "messages": MESSAGES, "max_tokens": 24, "temperature": 0, "logprobs": True,
           "top_logprobs": 2}  # fmt: skip
    chunks = list(client(gateway).chat.completions.create(stream=True, **ask))  # type: ignore[call-overload]
    entries = [e for c in chunks for choice in c.choices if choice.logprobs for e in choice.logprobs.content or []]
    text = "".join(choice.delta.content or "" for c in chunks for choice in c.choices)
    whole = client(gateway).chat.completions.create(**ask)  # type: ignore[call-overload]
    assert whole.choices[0].message.content == text
    assert whole.choices[0].logprobs is not None
    assert [e.token for e in entries] == [e.token for e in whole.choices[0].logprobs.content or []]
    assert entries and all(len(e.top_logprobs) == 2 for e in entries)


def test_stream_final_chunk_carries_flywheel(gateway: GatewayHandle) -> None:
    stream = client(gateway).chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # As OpenAI sends it: usage on one chunk only, the last, whose choices are empty; it also carries ours.
    last = chunks[-1]
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert last.choices == [] and all(c.choices for c in chunks[:-1])
    assert last.model_extra["flywheel"]["policy_version"] == "seed"
    assert all("flywheel" not in (c.model_extra or {}) for c in chunks[:-1])
    assert all(c.id == last.id for c in chunks)
    same = client(gateway).chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert same.choices[0].message.content == text


def test_stream_without_usage_hides_usage(gateway: GatewayHandle) -> None:
    chunks = list(
        client(gateway).chat.completions.create(
            model="flywheel", messages=MESSAGES, max_tokens=8, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("n", [1, 2])
def test_stream_without_usage_never_sends_empty_choices(gateway: GatewayHandle, n: int) -> None:
    """The SDK's own way of reading a stream, ``chunk.choices[0].delta.content``, works on every chunk;
    the ``flywheel`` object rides on the last choice's finish chunk."""
    stream = client(gateway).chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=8, temperature=0.8, n=n, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)  # IndexError on an empty-choices chunk
    assert text
    last = chunks[-1]
    assert last.choices[0].finish_reason is not None
    assert last.model_extra["flywheel"]["response_id"] == last.id
    assert all("flywheel" not in (c.model_extra or {}) for c in chunks[:-1])
    finished = [choice.index for c in chunks for choice in c.choices if choice.finish_reason]
    assert sorted(finished) == list(range(n))


async def test_async_stream(gateway: GatewayHandle) -> None:
    aclient = openai.AsyncOpenAI(base_url=gateway.v1, api_key=gateway.api_key, max_retries=0)
    stream = await aclient.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=8, stream=True
    )
    parts = [c async for c in stream]
    assert parts[-1].model_extra["flywheel"]["response_id"] == parts[0].id
    await aclient.close()


def test_models_lists_routed_model_and_versions(gateway: GatewayHandle) -> None:
    models = {m.id: m for m in client(gateway).models.list()}
    assert "flywheel" in models and "seed" in models
    with gateway.admin() as admin:
        versions = {v["id"]: v for v in admin.get("/admin/policies").json()["data"]}
    registered = int(datetime.fromisoformat(versions["seed"]["created_at"]).timestamp())
    assert models["seed"].created == registered  # when the version was registered, not the time of the call
    stable = next(v for v in versions.values() if v["status"] == "stable")
    assert models["flywheel"].created == int(datetime.fromisoformat(stable["created_at"]).timestamp())


def test_pinning_a_version_by_model_name(gateway: GatewayHandle) -> None:
    resp = client(gateway).chat.completions.create(model="seed", messages=MESSAGES, max_tokens=4)
    assert resp.model_extra["flywheel"]["policy_version"] == "seed"


# --- errors ------------------------------------------------------------------------------------
def test_missing_and_wrong_key(gateway: GatewayHandle) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, key="nope").chat.completions.create(model="flywheel", messages=MESSAGES)
    resp = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "flywheel", "messages": MESSAGES})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"


def test_unknown_model_is_404(gateway: GatewayHandle) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway).chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "flywheel", "messages": MESSAGES, "n": 999}, 400, "n"),
        ({"model": "flywheel", "messages": MESSAGES, "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": "flywheel", "messages": MESSAGES * 300}, 400, "messages"),
        ({"model": "flywheel", "messages": []}, 422, "messages"),
        ({"model": "flywheel"}, 422, "messages"),
        ({"model": "flywheel", "messages": MESSAGES, "temperature": "hot"}, 422, "temperature"),
    ],
)
def test_bad_requests_are_openai_shaped(gateway: GatewayHandle, body: dict, status: int, param: str) -> None:
    resp = httpx.post(
        f"{gateway.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {gateway.api_key}"}
    )
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] and err["param"].startswith(param)
    assert "Traceback" not in resp.text


def test_n_above_one_with_greedy_is_a_clean_400(gateway: GatewayHandle) -> None:
    with pytest.raises(openai.BadRequestError):
        client(gateway).chat.completions.create(model="flywheel", messages=MESSAGES, n=2, temperature=0)


def test_invalid_json_and_oversized_body(gateway: GatewayHandle) -> None:
    headers = {"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"}
    bad = httpx.post(f"{gateway.v1}/chat/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 422 and "error" in bad.json()
    big = httpx.post(f"{gateway.v1}/chat/completions", content=b"x" * 2_000_000, headers=headers)
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"


def test_unreachable_vllm_is_503_with_retry_after(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory("dead", ready_path="/healthz", FLYWHEEL_VLLM_URL=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="flywheel", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"]
    assert httpx.get(f"{gw.url}/readyz").status_code == 503


def test_upstream_timeout_is_504(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory("slow", FLYWHEEL_UPSTREAM_TIMEOUT_S="0.01")
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(
            model="flywheel", messages=MESSAGES, max_tokens=900, temperature=1.0, n=8,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
    assert info.value.status_code == 504


def test_request_vllm_rejects_is_the_clients_error_not_the_versions(gateway: GatewayHandle) -> None:
    """A prompt longer than the context: vLLM answers 400, so does the gateway, and the version's error
    counter (the canary controller's error rate) does not move: a client cannot fail a version."""

    def version_errors() -> float:
        lines = httpx.get(f"{gateway.url}/metrics").text.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith("flywheel_errors_total{") and 'policy_version="seed"' in line)  # fmt: skip

    before = version_errors()
    too_long = [{"role": "user", "content": "restore " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="flywheel", messages=too_long, max_tokens=4)
    assert info.value.status_code == 400
    assert info.value.code == "upstream_rejected"
    assert version_errors() == before


def test_a_request_without_an_output_limit_is_answered(gateway: GatewayHandle) -> None:
    """No max_tokens: vLLM's own default applies (the context left; the SDKs omit the field by default)."""
    resp = client(gateway).chat.completions.create(model="flywheel", messages=MESSAGES, temperature=0)
    assert resp.choices[0].finish_reason in ("stop", "length") and resp.usage is not None


def test_a_version_vllm_does_not_serve_falls_back_and_counts_against_it(  # type: ignore[no-untyped-def]
    gateway_factory, vllm_server, seed_model_dir
) -> None:
    """vLLM's 404 for a model name the gateway chose (an adapter lost in a vLLM restart, say) is the
    deployment's failure, not the client's: routed requests fall back to stable and count against the
    canary; a request pinned to it gets a 503 to retry, not a 404 for a model the client did not name."""
    gw = gateway_factory("unserved")
    with gw.admin() as admin:
        created = admin.post("/admin/policies", json={
            "kind": "full", "path": str(seed_model_dir), "endpoint": vllm_server.url, "parent": "seed",
            "served_model_name": "not-served-here"})  # fmt: skip
        assert created.status_code == 201, created.text
        lost = created.json()["id"]
        assert admin.post(f"/admin/policies/{lost}/weight", json={"weight": 1.0}).status_code == 200

    def routed_version() -> str:
        resp = client(gw).chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=2)
        return str(resp.model_extra["flywheel"]["policy_version"])

    def fell_back() -> bool:
        assert routed_version() == "seed"
        return f'flywheel_canary_fallbacks_total{{policy_version="{lost}"}}' in httpx.get(f"{gw.url}/metrics").text

    wait_until(fell_back, 10, "a routed request tried on the canary and answered by stable")
    assert {routed_version() for _ in range(3)} == {"seed"}
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert f'flywheel_errors_total{{kind="PolicyHTTPError:404",policy_version="{lost}"}}' in metrics
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model=lost, messages=MESSAGES, max_tokens=2)
    assert info.value.status_code == 503


# --- telemetry -----------------------------------------------------------------------------------
def test_metrics_and_health(gateway: GatewayHandle) -> None:
    client(gateway).chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=2)
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'flywheel_requests_total{policy_version="seed",status="200"}' in text
    assert "flywheel_request_latency_seconds_bucket" in text
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz").json()["policy_server"] is True


async def test_client_disconnect_cancels_upstream(gateway: GatewayHandle, vllm_server) -> None:  # type: ignore[no-untyped-def]
    """Closing the stream early must abort the vLLM request, not leave it generating. The proof is vLLM's
    token counter: fewer than max_tokens generated, none after the close. The generation is as long as the
    context allows (~5 s), so a request vLLM kept generating cannot pass for one it stopped; a test process
    stalled longer than that before the close loses the race, which is tried again (ABORT_TRIES)."""
    max_tokens = 1500
    body = {"model": "flywheel", "messages": MESSAGES, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {gateway.api_key}"}

    async def leave_after_the_first_chunk() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("POST", f"{gateway.v1}/chat/completions", headers=headers, json=body) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        break

    async with TokenMeter(vllm_server) as meter:
        generated = await meter.tries_until_stopped(leave_after_the_first_chunk, max_tokens)
    assert generated[-1] < max_tokens, f"every request generated all {max_tokens} tokens: {generated}"


async def test_concurrency_limit_answers_429(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory("bounded", FLYWHEEL_MAX_IN_FLIGHT="2")
    aclient = openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)

    async def one() -> int:
        try:
            await aclient.chat.completions.create(
                model="flywheel", messages=MESSAGES, max_tokens=200, extra_body={"ignore_eos": True}
            )
        except openai.RateLimitError as exc:
            assert exc.response.headers["retry-after"] == "1"
            return 429
        return 200

    codes = await asyncio.gather(*(one() for _ in range(8)))
    await aclient.close()
    assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert "flywheel_requests_in_flight 0.0" in metrics


def test_per_key_rate_limit_answers_429_for_that_key_only(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    """FLYWHEEL_CHAT_RATE_PER_S: a key past its burst gets an OpenAI-shaped 429 with Retry-After before
    anything reaches vLLM; another key (here the operator's) still chats."""
    gw = gateway_factory("per-key", FLYWHEEL_CHAT_RATE_PER_S="0.05", FLYWHEEL_CHAT_RATE_BURST="2")
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=4)
    assert err.value.code == "rate_limit_exceeded" and err.value.type == "rate_limit_error"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 20
    other = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key, max_retries=0)
    assert other.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=4).choices
