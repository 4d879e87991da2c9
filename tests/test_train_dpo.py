"""DPO end to end on the fixture seed model and crafted data ("Happy to help!" beats rudeness):
held-out chosen answers become more likely than under the parent, sampled answers show the property
more often and win against the parent under the reward model with KL bounded; reversed data fails a
gate and cannot be registered; an interrupted run resumes to the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_data import property_rate, trainer_settings, write_property_data
from trainer.artifacts import RegistrationError, register_canary, verify
from trainer.common import DataError, TrainError
from trainer.data import Pair, resample
from trainer.dpo import DPOConfig, train_dpo
from trainer.gates import GateConfig
from trainer.reward import RewardConfig, train_reward

GATES = GateConfig(n_prompts=24, samples_per_prompt=4, max_kl=20.0)
SMALL_GATES = GateConfig(n_prompts=6, samples_per_prompt=2)


def _config(data: Path, **kw) -> DPOConfig:  # type: ignore[no-untyped-def]
    """A few hundred pair-passes: 4 epochs over ~200 pairs, LoRA lr 5e-4, SFT term weight 2."""
    return DPOConfig(**{"data": data, "epochs": 4, "learning_rate": 5e-4, "loss_weights": [1.0, 2.0], "quiet": True, **kw})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, seed_model_dir: Path):  # type: ignore[no-untyped-def]
    from gateway.grounding.encoder import Encoder
    from policies.reward import load_scorer

    root = tmp_path_factory.mktemp("dpo")
    settings = trainer_settings(root / "var", seed_model_dir)
    data = write_property_data(root / "data", per_fact=6)
    encoder = Encoder.load(threads=1)
    reward = train_reward(RewardConfig(data=data, quiet=True), settings, encoder=encoder)
    return settings, data, load_scorer(reward.path, encoder), root


def test_dpo_makes_the_policy_prefer_the_property(env) -> None:  # type: ignore[no-untyped-def]
    settings, data, scorer, _ = env
    run = train_dpo(_config(data), settings, GATES, scorer=scorer)
    assert run.finished and run.passed, run.failure_lines()
    held = run.manifest["metrics"]["heldout"]
    assert held["pairs"] >= 20
    assert held["chosen_logp_up_rate"] > 0.5, held  # no likelihood displacement of chosen answers
    assert held["implicit_reward_accuracy"] > 0.8, held
    new, parent = property_rate(run.gates.new_texts), property_rate(run.gates.parent_texts)
    assert new >= parent + 0.25, (new, parent)  # sampled answers, held-out prompts
    metrics = run.manifest["gates"]["metrics"]
    assert metrics["reward_win_rate"] > 0.5 and metrics["kl"] <= GATES.max_kl
    # The version directory: adapter vLLM can load, tokenizer, config, manifest with checksums.
    manifest = verify(run.path)
    assert manifest["kind"] == "lora" and manifest["parent"]["id"] == "seed" and manifest["data"]["sha256"]
    assert manifest["config"]["beta"] == 0.1 and manifest["config"]["loss_type"] == ["sigmoid", "sft"]
    assert (run.path / "adapter" / "adapter_config.json").is_file() and (run.path / "tokenizer").is_dir()
    assert not (run.path / "checkpoints").exists()


def test_reversed_data_fails_a_gate_and_is_not_registered(env) -> None:  # type: ignore[no-untyped-def]
    settings, _, scorer, root = env
    reversed_data = write_property_data(root / "reversed", reverse=True, per_fact=6)
    run = train_dpo(_config(reversed_data), settings, GATES, scorer=scorer)
    assert run.finished and not run.passed
    assert (run.path / "manifest.json").is_file()  # kept on disk
    failed = {r.name for r in run.gates.failures()}
    assert "reward_win_rate" in failed, run.failure_lines()
    assert any("short by" in line for line in run.failure_lines())
    with pytest.raises(RegistrationError, match="failed its gates"):
        register_canary(run.path, 0.1, "http://127.0.0.1:9", "key")  # refused before any request
    # The command line says which gate failed and by how much, and exits 3 without registering.
    from typer.testing import CliRunner

    from flywheel.commands.train import app

    env_vars = {"FLYWHEEL_VAR_DIR": str(settings.var_dir), "FLYWHEEL_SEED_MODEL_PATH": str(settings.seed_model_dir)}
    args = ["dpo", "--data", str(reversed_data), "--epochs", "4", "--lr", "5e-4", "--loss-weight", "1", "--loss-weight", "2",
            "--register-canary", "--url", "http://127.0.0.1:9", "--key", "k"]
    result = CliRunner().invoke(app, args, env=env_vars)  # same data + knobs: reuses the finished version
    assert result.exit_code == 3, result.output
    assert "gate reward_win_rate failed" in result.output and "short by" in result.output
    assert "not registered" in result.output


def test_interrupted_run_resumes_to_the_same_adapter(env) -> None:  # type: ignore[no-untyped-def]
    settings, data, scorer, _ = env
    cfg = {"epochs": 1, "save_steps": 5, "quiet": True}
    whole = train_dpo(DPOConfig(data=data, run_name="whole", **cfg), settings, SMALL_GATES, scorer=scorer)
    cut = train_dpo(DPOConfig(data=data, run_name="cut", stop_after=10, **cfg), settings, SMALL_GATES, scorer=scorer)
    assert not cut.finished and any((cut.path / "checkpoints").glob("checkpoint-*"))
    resumed = train_dpo(DPOConfig(data=data, run_name="cut", **cfg), settings, SMALL_GATES, scorer=scorer)
    assert resumed.finished and resumed.manifest["metrics"]["steps"] == whole.manifest["metrics"]["steps"]
    a = load_file(str(whole.path / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.path / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_merge_writes_a_full_checkpoint_that_needs_its_own_endpoint(env) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    settings, data, scorer, _ = env
    run = train_dpo(DPOConfig(data=data, epochs=1, merge=True, run_name="merged", quiet=True), settings,
                    GateConfig(n_prompts=6, samples_per_prompt=2, min_reward_win_rate=0.0), scorer=scorer)
    assert run.manifest["kind"] == "full" and (run.path / "model" / "tokenizer_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(run.path / "model")
    with pytest.raises(RegistrationError, match="--endpoint"):
        register_canary(run.path, 0.1, "http://127.0.0.1:9", "key")


def test_a_lora_version_is_a_parent_and_its_child_is_one_servable_adapter(env) -> None:  # type: ignore[no-untyped-def]
    """Round two of the loop: DPO on top of a LoRA version. The child's adapter folds the parent's in
    (rank 8 + 8), on the seed base vLLM serves, and equals parent-merged + the child's own step."""
    import json

    from peft import PeftModel

    from trainer.policy_ops import load_policy

    settings, data, scorer, _ = env
    first = train_dpo(_config(data, epochs=1, run_name="round-1"), settings, SMALL_GATES, scorer=scorer)
    second = train_dpo(_config(data, epochs=1, run_name="round-2", policy=first.path, parent="v-round-1"),
                       settings, GateConfig(n_prompts=6, samples_per_prompt=2, min_reward_win_rate=0.0), scorer=scorer)
    assert second.finished and second.manifest["kind"] == "lora"
    assert second.manifest["parent"] == {"id": "v-round-1", "path": str(first.path.resolve())}
    folded = json.loads((second.path / "adapter" / "adapter_config.json").read_text())
    assert folded["r"] == 16 and Path(folded["base_model_name_or_path"]).resolve() == settings.seed_model_dir.resolve()
    child, tokenizer = load_policy(second.path)
    parent, _ = load_policy(first.path)
    ids = tokenizer("How often does Kestrel back up my files? Happy to help!", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        before = parent(ids).logits
        stepped = PeftModel.from_pretrained(parent, second.path / "delta").eval()  # wraps parent in place
        assert torch.allclose(stepped(ids).logits, child(ids).logits, atol=1e-4)
        assert (before - child(ids).logits).abs().max() > 1e-3  # the child's own step is in it
    # The rank budget counts the parent's rank: 16 + 49 > vLLM's 64.
    with pytest.raises(TrainError, match="rank-16 LoRA parent"):
        train_dpo(DPOConfig(data=data, policy=second.path, lora_r=49, quiet=True), settings, scorer=scorer)


def test_refuses_unservable_or_unusable_input(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, data, scorer, _ = env
    with pytest.raises(TrainError, match="max-lora-rank"):
        train_dpo(DPOConfig(data=data, lora_r=128, quiet=True), settings, scorer=scorer)
    with pytest.raises(TrainError, match="cannot serve LoRA"):
        train_dpo(DPOConfig(data=data, target_modules=["lm_head"], quiet=True), settings, scorer=scorer)
    with pytest.raises(DataError, match="longer than the context"):
        train_dpo(DPOConfig(data=data, max_length=12, quiet=True), settings, scorer=scorer)
    with pytest.raises(TrainError, match="config.json"):
        train_dpo(DPOConfig(data=data, policy=tmp_path, quiet=True), settings, scorer=scorer)


def test_refuses_a_mismatched_tokenizer(seed_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from trainer.common import TokenizerMismatch
    from trainer.data import check_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(seed_model_dir)
    config = AutoConfig.from_pretrained(seed_model_dir)
    check_tokenizer(tokenizer, config)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(config.vocab_size)])
    with pytest.raises(TokenizerMismatch, match="mismatched tokenizer"):
        check_tokenizer(tokenizer, config)


def test_rlaif_pairs_have_their_own_weight() -> None:
    prompt = [{"role": "user", "content": "q"}]
    pairs = [Pair(prompt, f"c{i}", f"r{i}", source="rlaif" if i % 2 else "human") for i in range(200)]
    kept = resample(pairs, {"rlaif": 0.5}, seed=0)
    human = sum(p.source == "human" for p in kept)
    rlaif = sum(p.source == "rlaif" for p in kept)
    assert human == 100 and 35 <= rlaif <= 65
    assert resample(pairs, {"rlaif": 0.5}, seed=0) == kept  # deterministic
    assert sum(p.source == "rlaif" for p in resample(pairs, {"rlaif": 2.0}, seed=0)) == 200


def test_export_sources_become_human_and_rlaif(tmp_path: Path) -> None:
    """The export names pairs by how they were found; the trainer weighs them by who labelled them."""
    import json

    from trainer.data import read_pairs

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "source": s}
            for s in ("rated", "rated_vs_candidate", "best_of_n", "custom")]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.source for p in read_pairs(path)] == ["human", "human", "rlaif", "custom"]


def test_an_empty_heldout_file_falls_back_to_a_split_here(tmp_path: Path) -> None:
    """An export over few prompts may hold none out; the trainer then holds out a slice itself."""
    import json

    from trainer.data import load_split

    rows = [{"prompt": f"q{i % 6}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(30)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pairs.heldout.jsonl").write_text("")
    split = load_split(tmp_path / "pairs.jsonl", heldout_fraction=0.2)
    assert split.heldout and split.train and len(split.heldout) + len(split.train) == 30
    assert not {p.prompt_key for p in split.heldout} & {p.prompt_key for p in split.train}
