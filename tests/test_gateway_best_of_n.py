"""Best-of-n through the real gateway, real vLLM and the real reward head: one vLLM call with n=k, the
highest-reward candidate returned, every candidate with its reward in the interaction event on Kafka."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import openai
import pytest
from kafka import KafkaConsumer

from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import private_topics
from tests.fixtures.gateway import GatewayHandle

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "How much does the Personal plan cost?"}]


def sdk(gw: GatewayHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)


def interaction_event(bootstrap: str, response_id: str, timeout_s: float = 30) -> dict:
    consumer = KafkaConsumer(
        "flywheel.interactions", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=1000, fetch_max_wait_ms=10,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in consumer:
                event = json.loads(record.value)
                if event.get("response_id") == response_id:
                    return event
        raise AssertionError(f"no interaction event for {response_id}")
    finally:
        consumer.close()


def test_best_of_n_returns_the_highest_reward_candidate_and_logs_all(gateway: GatewayHandle, broker) -> None:  # type: ignore[no-untyped-def]
    resp = sdk(gateway).chat.completions.create(
        model="flywheel", messages=QUESTION, max_tokens=24, temperature=1.0, extra_body={"best_of_n": 4}
    )
    extra = resp.model_extra["flywheel"]
    assert extra["candidates"] == 4 and 0 <= extra["chosen_index"] < 4
    assert len(resp.choices) == 1
    event = interaction_event(broker.bootstrap, extra["response_id"])
    rewards = [c["reward"] for c in event["candidates"]]
    assert len(rewards) == 4 and all(isinstance(r, float) for r in rewards)
    assert event["chosen_index"] == max(range(4), key=lambda i: (rewards[i], -i))
    assert extra["reward"] == pytest.approx(max(rewards))
    assert event["candidates"][event["chosen_index"]]["text"] == resp.choices[0].message.content


def test_best_of_n_streams_the_chosen_answer(gateway: GatewayHandle) -> None:
    chunks = list(sdk(gateway).chat.completions.create(
        model="flywheel", messages=QUESTION, max_tokens=24, temperature=1.0, stream=True, logprobs=True,
        extra_body={"best_of_n": 3},
    ))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason is not None
    final = chunks[-1].model_extra["flywheel"]
    assert final["candidates"] == 3 and final["reward"] is not None
    # The winner's logprobs come with it (withheld only where the output checks changed its text).
    tokens = [e.token for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    if final["safety"]["output"]["action"] == "allow":
        assert tokens and "".join(tokens).startswith(text)  # (vLLM lists the end-of-sequence token too)
    else:
        assert not tokens


def test_best_of_n_off_is_plain_generation(gateway: GatewayHandle) -> None:
    resp = sdk(gateway).chat.completions.create(model="flywheel", messages=QUESTION, max_tokens=8, temperature=0)
    assert "candidates" not in resp.model_extra["flywheel"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"best_of_n": 4, "n": 2}, "best_of_n"), ({"best_of_n": 4, "temperature": 0}, "temperature"),
     ({"best_of_n": 99}, "best_of_n")],
)  # fmt: skip
def test_best_of_n_misuse_is_a_400(gateway: GatewayHandle, extra: dict, param: str) -> None:
    body = {"temperature": 0.8, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        sdk(gateway).chat.completions.create(
            model="flywheel", messages=QUESTION, max_tokens=8, n=body.pop("n", 1),
            temperature=body.pop("temperature"), extra_body=body,
        )  # fmt: skip
    assert info.value.body["param"] == param


def test_a_version_sets_its_own_best_of_n_default(gateway_factory: Callable[..., GatewayHandle]) -> None:
    """`POST /admin/policies/{id}/serving`: the stable's default applies to requests that name no
    best_of_n, but never to ones it cannot serve (n > 1, greedy); an explicit value wins; audited.
    On a gateway of its own: the session gateway's stable must not serve best-of-n to other tests."""
    gw = gateway_factory("best-of-n-default", **private_topics())
    client = sdk(gw)

    def unnamed() -> dict:
        """The flywheel object of a request that names no best_of_n."""
        resp = client.chat.completions.create(model="flywheel", messages=QUESTION, max_tokens=1, temperature=0.9)
        return resp.model_extra["flywheel"]

    with gw.admin() as admin:
        stable = next(v for v in admin.get("/admin/policies").json()["data"] if v["status"] == "stable")["id"]
        assert admin.post(f"/admin/policies/{stable}/serving", json={"best_of_n": 99}).status_code == 400
        assert admin.post(f"/admin/policies/{stable}/serving", json={"best_of_n": 0}).status_code == 422
        set_ = admin.post(f"/admin/policies/{stable}/serving", json={"best_of_n": 3, "reason": "test"})
        assert set_.status_code == 200 and set_.json()["metrics"]["serving"] == {"best_of_n": 3}
        # The registry cache (FLYWHEEL_REGISTRY_CACHE_S=0.2 in tests) swaps in whole tables: once one
        # request sees the default, every later one does.
        wait_until(lambda: unnamed().get("candidates") == 3, 30, "the stable's best_of_n default to apply")
        plain = client.chat.completions.create(model="flywheel", messages=QUESTION, max_tokens=8, temperature=0.9)
        assert plain.model_extra["flywheel"]["candidates"] == 3
        explicit = client.chat.completions.create(model="flywheel", messages=QUESTION, max_tokens=8,
                                                  temperature=0.9, extra_body={"best_of_n": 2})  # fmt: skip
        assert explicit.model_extra["flywheel"]["candidates"] == 2
        two = client.chat.completions.create(model="flywheel", messages=QUESTION, max_tokens=8, temperature=0.9, n=2)
        greedy = client.chat.completions.create(model="flywheel", messages=QUESTION, max_tokens=8, temperature=0)
        assert len(two.choices) == 2 and "candidates" not in two.model_extra["flywheel"]
        assert "candidates" not in greedy.model_extra["flywheel"]
        entry = admin.get("/admin/audit", params={"version_id": stable}).json()["data"][0]
        assert entry["action"] == "set_serving" and entry["details"]["serving_to"] == {"best_of_n": 3}
        assert admin.post(f"/admin/policies/{stable}/serving", json={"best_of_n": None}).status_code == 200
    wait_until(lambda: "candidates" not in unnamed(), 30, "plain generation again once the default is cleared")
