"""PPO against the learned reward model on the fixture seed policy: sampled answers show the preferred
property ("Happy to help!") far more often than the parent's, with KL to the reference bounded; every
iteration logs reward, KL, entropy, value loss and clip fraction; an interrupted run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer_data import property_rate, property_rows, trainer_settings, write_property_data, write_rows
from trainer.common import DataError
from trainer.gates import GateConfig
from trainer.ppo import PPOConfig, train_ppo
from trainer.reward import RewardConfig, train_reward


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, seed_model_dir: Path):  # type: ignore[no-untyped-def]
    from gateway.grounding.encoder import Encoder
    from policies.reward import load_scorer

    root = tmp_path_factory.mktemp("ppo")
    settings = trainer_settings(root / "var", seed_model_dir)
    data = write_property_data(root / "data")
    encoder = Encoder.load(threads=1)
    reward = train_reward(RewardConfig(data=data, quiet=True), settings, encoder=encoder)
    train, held = property_rows()
    prompts = write_rows(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in train + held])
    return settings, prompts, load_scorer(reward.path, encoder)


def test_ppo_raises_the_property_with_bounded_kl(env) -> None:  # type: ignore[no-untyped-def]
    settings, prompts, scorer = env
    gates = GateConfig(n_prompts=32, samples_per_prompt=4, max_kl=20.0)
    run = train_ppo(PPOConfig(prompts=prompts, iterations=20, quiet=True), settings, gates, scorer=scorer)
    assert run.finished and run.passed, run.failure_lines()
    new, parent = property_rate(run.gates.new_texts), property_rate(run.gates.parent_texts)
    assert new >= parent + 0.25, (new, parent)  # held-out prompts the policy never trained on
    metrics = run.manifest["gates"]["metrics"]
    assert metrics["kl"] <= gates.max_kl and metrics["reward_win_rate"] > 0.5
    log = [json.loads(line) for line in (run.path / "ppo_log.jsonl").read_text().splitlines()]
    assert len(log) == 20
    for key in ("reward", "kl", "entropy", "value_loss", "clip_frac", "kl_coef"):
        assert all(key in row for row in log), key
    assert log[-1]["reward"] > log[0]["reward"]
    assert run.manifest["kind"] == "lora" and (run.path / "adapter" / "adapter_config.json").is_file()


def test_ppo_resumes_to_the_same_adapter(env) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    settings, prompts, scorer = env
    gates = GateConfig(n_prompts=4, samples_per_prompt=2, min_reward_win_rate=0.0)
    cfg = {"prompts": prompts, "iterations": 2, "batch_prompts": 8, "samples_per_prompt": 2, "quiet": True}
    whole = train_ppo(PPOConfig(run_name="whole", **cfg), settings, gates, scorer=scorer)
    cut = train_ppo(PPOConfig(run_name="cut", stop_after=1, **cfg), settings, gates, scorer=scorer)
    assert not cut.finished
    resumed = train_ppo(PPOConfig(run_name="cut", **cfg), settings, gates, scorer=scorer)
    a = load_file(str(whole.path / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.path / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_ppo_refuses_unusable_prompts(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _, scorer = env
    empty = tmp_path / "p.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="distinct prompts"):
        train_ppo(PPOConfig(prompts=empty, quiet=True), settings, scorer=scorer)
    long = write_rows(tmp_path / "long.jsonl", [{"prompt": "backup " * 3000}, {"prompt": "hi"}])
    with pytest.raises(DataError, match="exceeds the context"):
        train_ppo(PPOConfig(prompts=long, quiet=True), settings, scorer=scorer)
