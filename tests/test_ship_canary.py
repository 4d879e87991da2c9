"""Shipping: a DPO adapter trained here registers through the operator API of a real gateway, which
loads it into the real vLLM and routes canary traffic to it (one LoRA load of the session budget)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.fixtures.broker import wait_until
from tests.trainer_data import has_property, trainer_settings, write_property_data
from trainer.artifacts import register_canary
from trainer.dpo import DPOConfig, train_dpo
from trainer.gates import GateConfig
from trainer.reward import RewardConfig, train_reward

pytestmark = pytest.mark.vllm

QUESTIONS = ["How much is the Personal plan?", "Is there a free plan?", "How do I restore a file?"]


def test_shipped_adapter_serves_through_the_gateway_as_a_canary(gateway_factory, seed_model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gateway.grounding.encoder import Encoder
    from policies.reward import load_scorer

    settings = trainer_settings(tmp_path / "var", seed_model_dir)
    data = write_property_data(tmp_path / "data")
    encoder = Encoder.load(threads=1)
    scorer = load_scorer(train_reward(RewardConfig(data=data, quiet=True), settings, encoder=encoder).path, encoder)
    run = train_dpo(DPOConfig(data=data, epochs=4, learning_rate=5e-4, loss_weights=[1.0, 2.0], quiet=True),
                    settings, GateConfig(n_prompts=12, samples_per_prompt=2), scorer=scorer)
    assert run.passed, run.failure_lines()

    gw = gateway_factory("ship")
    version = register_canary(run.path, 0.5, gw.url, gw.admin_key)
    assert version["kind"] == "lora" and version["status"] == "canary" and version["weight"] == 0.5
    assert version["parent"] == "seed"
    assert json.loads((run.path / "registration.json").read_text())["version"]["id"] == version["id"]

    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)

    def routed_to(user: str) -> str:
        resp = client.chat.completions.create(model="flywheel", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                              max_tokens=1, temperature=0, user=user,
                                              extra_body={"grounding": False})  # fmt: skip
        return resp.model_extra["flywheel"]["policy_version"]

    # The gateway re-reads the registry every 0.2 s in tests (at once after its own changes, but
    # asynchronously): wait until the weight reached its routing, i.e. some of the users below meet the canary.
    users = [f"user-{i}" for i in range(16)]
    wait_until(lambda: any(routed_to(u) == version["id"] for u in users), 30, "canary traffic at weight 0.5")

    def ask(question: str, model: str = "flywheel", user: str | None = None):  # type: ignore[no-untyped-def]
        # Ungrounded: the adapter was trained on bare questions, and greedy decoding under a "Sources:" system
        # message it never saw kept the seed's answers on some CPUs' float kernels.
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              max_tokens=32, temperature=0, user=user,
                                              extra_body={"grounding": False})  # fmt: skip

    canary = [ask(q, model=version["id"]) for q in QUESTIONS]
    assert {r.model_extra["flywheel"]["policy_version"] for r in canary} == {version["id"]}
    stable = [ask(q, model="seed") for q in QUESTIONS]
    canary_texts = [r.choices[0].message.content for r in canary]
    stable_texts = [r.choices[0].message.content for r in stable]
    assert canary_texts != stable_texts and any(has_property(t) for t in canary_texts), canary_texts
    routed = {ask(QUESTIONS[0], user=u).model_extra["flywheel"]["policy_version"] for u in users}
    assert routed == {"seed", version["id"]}  # weight 0.5 splits users between stable and canary
    with gw.admin() as admin:
        listed = {v["id"]: v for v in admin.get("/admin/policies").json()["data"]}
    assert listed[version["id"]]["status"] == "canary"
