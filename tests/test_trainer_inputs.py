"""Trainer input checks that need no model: malformed rows and an empty held-out set are refused as
``DataError`` naming file and line (one line on the command line, no traceback); a named run refuses to
resume or reuse a directory made with other knobs or other data (``ResumeMismatch``); ``--merge``
names its own run; resume checkpoints outlive a failed manifest write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.common import DataError, ResumeMismatch, TrainError, check_resume, naming_knobs, record_inputs

PROMPT = [{"role": "user", "content": "How do I restore a file?"}]


def _rows(n: int = 30, tag: str = "") -> list[dict[str, Any]]:
    return [{"prompt": f"question {i % 10}{tag}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def _write(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings whose seed model does not exist: any test that reaches model loading fails loudly."""
    from flywheel.settings import Settings

    return Settings(var_dir=tmp_path / "var", seed_model_path=tmp_path / "no-seed-here")


# --- malformed rows (item: DataError with file:line) ---------------------------------------------------------

@pytest.mark.parametrize(("line", "why"), [
    ('{"prompt": ["hi"], "chosen": "a", "rejected": "b"}', "prompt message 0 must be an object"),
    ("5", "must be a JSON object"),
    ('["a", "b"]', "must be a JSON object"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "weight": "x"}', "'weight' must be a finite number"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "weight": Infinity}', "'weight' must be a finite number"),
    ('{"prompt": 7, "chosen": "a", "rejected": "b"}', "'prompt' must be a string or a non-empty list"),
])
def test_malformed_pair_rows_are_data_errors_naming_the_line(tmp_path: Path, line: str, why: str) -> None:
    from trainer.data import read_pairs

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=why) as info:
        read_pairs(path)
    assert f"{path}:2:" in str(info.value)


def test_numeric_and_null_weights_still_read(tmp_path: Path) -> None:
    from trainer.data import read_pairs

    rows = [{"prompt": PROMPT, "chosen": "a", "rejected": "b", "weight": w} for w in (2, 0.5, None)]
    assert [p.weight for p in read_pairs(_write(tmp_path / "p.jsonl", rows))] == [2.0, 0.5, 0.0]


@pytest.mark.parametrize(("line", "why"), [
    ("5", "a row must be an object"),
    ('{"prompt": 5}', "'prompt' must be a string or a non-empty list"),
    ('{"prompt": ["hi"]}', "prompt message 0 must be an object"),
    ("[3]", "prompt message 0 must be an object"),
])
def test_malformed_ppo_prompts_are_data_errors_naming_the_line(tmp_path: Path, line: str, why: str) -> None:
    from trainer.ppo import read_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=why) as info:
        read_prompts(path)
    assert f"{path}:2:" in str(info.value)


def test_an_empty_explicit_heldout_file_is_refused_before_training(tmp_path: Path) -> None:
    from trainer.data import load_split

    data = _write(tmp_path / "pairs.jsonl", _rows())
    empty = tmp_path / "held.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable held-out pairs"):
        load_split(data, empty)
    same = _write(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "x"}])
    with pytest.raises(DataError, match="no usable held-out pairs"):
        load_split(data, same)


def test_gates_refuse_to_run_without_prompts() -> None:
    from trainer.gates import GateConfig, evaluate_gates

    with pytest.raises(DataError, match="no held-out prompts"):
        evaluate_gates(None, None, [], None, [], GateConfig())


def test_cli_reports_a_malformed_row_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flywheel.commands.train import app

    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": ["hi"], "chosen": "a", "rejected": "b"}\n')
    env = {"FLYWHEEL_VAR_DIR": str(tmp_path / "var"), "FLYWHEEL_SEED_MODEL_PATH": str(tmp_path / "none")}
    result = CliRunner().invoke(app, ["reward", "--data", str(data)], env=env)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and f"{data}:1:" in result.output


# --- resume / reuse checks -----------------------------------------------------------------------------------

def test_merge_names_its_own_run_and_unmerged_names_do_not_change() -> None:
    from trainer.artifacts import run_name
    from trainer.dpo import DPOConfig

    plain, merged = naming_knobs(DPOConfig()), naming_knobs(DPOConfig(merge=True))
    assert "merge" not in plain and merged["merge"] is True
    assert run_name("dpo", "ab" * 32, plain) != run_name("dpo", "ab" * 32, merged)
    from trainer.common import config_dict

    old_style = {k: v for k, v in config_dict(DPOConfig()).items()  # what earlier releases hashed
                 if k not in ("run_name", "stop_after", "quiet", "merge")}
    assert run_name("dpo", "ab" * 32, plain) == run_name("dpo", "ab" * 32, old_style)


def test_check_resume_compares_knobs_and_data(tmp_path: Path) -> None:
    from trainer.dpo import DPOConfig

    out = tmp_path / "run"
    out.mkdir()
    check_resume(out, DPOConfig(), "a" * 64)  # nothing recorded yet
    record_inputs(out, DPOConfig(threads=2, stop_after=3), "a" * 64)
    check_resume(out, DPOConfig(threads=4, quiet=True), "a" * 64)  # how it runs may change
    with pytest.raises(ResumeMismatch, match="other data"):
        check_resume(out, DPOConfig(), "b" * 64)
    with pytest.raises(ResumeMismatch, match="lora_r 8 -> 4"):
        check_resume(out, DPOConfig(lora_r=4), "a" * 64)
    with pytest.raises(ResumeMismatch, match="merge false -> true"):
        check_resume(out, DPOConfig(merge=True), "a" * 64)
    # Paths are compared as files, not spellings; the data by its hash only.
    check_resume(out, DPOConfig(data=Path("./elsewhere/../prefs.jsonl"), heldout=None), "a" * 64)
    other = tmp_path / "run2"
    other.mkdir()
    record_inputs(other, DPOConfig(heldout=Path("held.jsonl")), "a" * 64)
    check_resume(other, DPOConfig(heldout=Path("./held.jsonl")), "a" * 64)
    with pytest.raises(ResumeMismatch, match="heldout"):
        check_resume(other, DPOConfig(heldout=Path("other-held.jsonl")), "a" * 64)


def test_dpo_refuses_to_resume_a_named_run_with_other_data_or_knobs(tmp_path: Path) -> None:
    from trainer.data import load_split
    from trainer.dpo import DPOConfig, train_dpo

    settings = _settings(tmp_path)
    first = _write(tmp_path / "a" / "prefs.jsonl", _rows())
    other = _write(tmp_path / "b" / "prefs.jsonl", _rows(tag=" again"))
    out = settings.versions_dir / "mine"
    out.mkdir(parents=True)  # an interrupted run of `--data a --run-name mine`
    record_inputs(out, DPOConfig(data=first, run_name="mine"), load_split(first).sha256)
    with pytest.raises(ResumeMismatch, match="other data"):
        train_dpo(DPOConfig(data=other, run_name="mine", quiet=True), settings)
    with pytest.raises(ResumeMismatch, match="lora_r"):
        train_dpo(DPOConfig(data=first, run_name="mine", lora_r=4, quiet=True), settings)
    with pytest.raises(TrainError, match="config.json missing") as same:  # same inputs: on to loading the model
        train_dpo(DPOConfig(data=first, run_name="mine", quiet=True), settings)
    assert not isinstance(same.value, ResumeMismatch)


def test_a_finished_run_from_before_inputs_json_is_not_reused_for_other_data(tmp_path: Path) -> None:
    from trainer.artifacts import FORMAT
    from trainer.common import save_config
    from trainer.data import load_split
    from trainer.dpo import DPOConfig, train_dpo

    settings = _settings(tmp_path)
    first = _write(tmp_path / "prefs.jsonl", _rows())
    out = settings.versions_dir / "done"
    config = DPOConfig(data=first, run_name="done", threads=settings.trainer_threads)
    save_config(config, out / "config.json")
    manifest = {"format": FORMAT, "kind": "lora", "data": {"sha256": load_split(first).sha256}, "gates": {}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert train_dpo(DPOConfig(data=first, run_name="done", quiet=True), settings).finished  # reused
    _write(first, _rows(tag=" re-exported"))  # same path, new content
    with pytest.raises(ResumeMismatch, match="other data"):
        train_dpo(DPOConfig(data=first, run_name="done", quiet=True), settings)


def test_ppo_refuses_a_named_run_with_another_lora_rank(tmp_path: Path) -> None:
    import hashlib

    from trainer.ppo import PPOConfig, train_ppo

    settings = _settings(tmp_path)
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(6)])
    out = settings.versions_dir / "rl"
    out.mkdir(parents=True)
    record_inputs(out, PPOConfig(prompts=prompts, run_name="rl"), hashlib.sha256(prompts.read_bytes()).hexdigest())
    with pytest.raises(ResumeMismatch, match="lora_r 8 -> 4"):
        train_ppo(PPOConfig(prompts=prompts, run_name="rl", lora_r=4, quiet=True), settings)


def test_ppo_checkpoint_that_does_not_fit_is_a_resume_mismatch(tmp_path: Path) -> None:
    import torch

    from trainer.ppo import _load_checkpoint

    path = tmp_path / "ppo.pt"
    torch.save({"something": "else"}, path)
    with pytest.raises(ResumeMismatch, match="does not fit this run"):
        _load_checkpoint(path, None, None, None, None)  # type: ignore[arg-type]


def test_reward_refuses_a_named_run_with_other_data(tmp_path: Path) -> None:
    from trainer.data import load_split
    from trainer.reward import RewardConfig, train_reward

    settings = _settings(tmp_path)
    first = _write(tmp_path / "a.jsonl", _rows())
    other = _write(tmp_path / "b.jsonl", _rows(tag=" b"))
    out = settings.reward_dir / "rm"
    out.mkdir(parents=True)
    record_inputs(out, RewardConfig(data=first, run_name="rm"), load_split(first).sha256)
    with pytest.raises(ResumeMismatch, match="other data"):
        train_reward(RewardConfig(data=other, run_name="rm", quiet=True), settings)


# --- checkpoints outlive the manifest write ------------------------------------------------------------------

def test_policy_checkpoints_are_removed_only_after_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.artifacts import read_manifest, write_manifest

    out = tmp_path / "version"
    (out / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (out / "adapter").mkdir()
    (out / "adapter" / "w.bin").write_bytes(b"w")

    def broken(self: Path, target: Any) -> Path:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Path, "replace", broken)
        with pytest.raises(OSError):
            write_manifest(out, kind="lora")
    assert (out / "checkpoints" / "checkpoint-5").is_dir() and read_manifest(out) is None  # still resumable
    write_manifest(out, kind="lora")
    assert read_manifest(out) is not None and not (out / "checkpoints").exists()


def test_reward_checkpoints_are_removed_only_after_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.reward as reward
    from policies.reward import read_manifest

    settings = _settings(tmp_path)
    data = _write(tmp_path / "prefs.jsonl", _rows())

    def fake_train(config, settings, split, train, out, encoder):  # type: ignore[no-untyped-def]
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "head.pt").write_bytes(b"resume point")
        (out / "head.json").write_text("{}")
        return {"heldout_accuracy": 1.0}

    def failing_manifest(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(reward, "_train_encoder", fake_train)
    config = reward.RewardConfig(data=data, run_name="rm", quiet=True)
    with monkeypatch.context() as m:
        m.setattr(reward, "write_manifest", failing_manifest)
        with pytest.raises(OSError):
            reward.train_reward(config, settings)
    out = settings.reward_dir / "rm"
    assert (out / "checkpoints" / "head.pt").is_file()
    run = reward.train_reward(config, settings)
    assert run.finished and read_manifest(out) is not None and not (out / "checkpoints").exists()


def test_a_merged_version_resolves_to_its_checkpoint(tmp_path: Path) -> None:
    """A merged version directory holds the run's own config.json beside model/: the policy is model/."""
    from trainer.policy_ops import policy_dir

    version = tmp_path / "v3"
    (version / "model").mkdir(parents=True)
    (version / "config.json").write_text(json.dumps({"beta": 0.1, "merge": True}))
    (version / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert policy_dir(version) == version / "model"
    plain = tmp_path / "checkpoint"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert policy_dir(plain) == plain
