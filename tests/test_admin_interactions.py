"""GET /admin/interactions/{response_id} through a real gateway, broker, `flywheel consume` and store:
an operator follows a response id to what was stored for it (what the user was served, and the ratings)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle, private_topics
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]


def test_an_operator_reads_a_stored_interaction_and_its_ratings(
    gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle]
) -> None:
    gw = gateway_factory("interactions", **private_topics())
    consumer_for(gw)
    chat = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    resp = chat.chat.completions.create(
        model="flywheel", messages=[{"role": "user", "content": "How do I restore a file?"}], max_tokens=12,
        temperature=0, user="operator-test",
    )  # fmt: skip
    fw = resp.model_extra["flywheel"]
    rating = {"response_id": fw["response_id"], "feedback_token": fw["feedback_token"], "rating": "up"}
    posted = httpx.post(f"{gw.url}/v1/feedback", json=rating, headers={"Authorization": f"Bearer {gw.api_key}"})
    assert posted.status_code == 202, posted.text

    with gw.admin() as admin:
        url = f"/admin/interactions/{fw['response_id']}"

        def stored() -> bool:
            got = admin.get(url)
            return got.status_code == 200 and bool(got.json()["interaction"]) and bool(got.json()["feedback"])

        wait_until(stored, 60, "the interaction and its rating in the store")
        got = admin.get(url).json()
        assert got["response_id"] == fw["response_id"]
        interaction = got["interaction"]
        assert interaction["policy_version"] == fw["policy_version"]
        assert [c["text"] for c in interaction["candidates"]] == [resp.choices[0].message.content]
        assert [r["rating"] for r in got["feedback"]] == [1.0]

        missing = admin.get("/admin/interactions/resp-that-was-never-served")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "interaction_not_found"
        assert admin.get(f"/admin/interactions/{'x' * 129}").status_code == 422

    as_chat_key = httpx.get(f"{gw.url}{url}", headers={"Authorization": f"Bearer {gw.api_key}"})
    assert as_chat_key.status_code == 403
    assert httpx.get(f"{gw.url}{url}").status_code == 401
