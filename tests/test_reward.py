"""Reward scorers and `train reward`: deterministic batched scoring, both kinds learn the preferred
property well above chance on held-out pairs, versions + ACTIVE pointer, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from policies.reward import RewardScorer, activate, active_id, load_active_scorer, load_scorer, read_manifest
from tests.trainer_data import PROPERTY, property_rows, trainer_settings, write_property_data, write_rows
from trainer.common import DataError
from trainer.reward import RewardConfig, train_reward

PROMPT = [{"role": "user", "content": "How much is the Personal plan?"}]
ANSWERS = [
    f"{PROPERTY} The Personal plan costs $6 per month.",
    "Ugh, fine. The Personal plan costs $6 per month.",
    "The Personal plan costs $6 per month and includes 1 TB of storage.",
    "Whatever. Read the manual.",
    f"{PROPERTY} It includes 1 TB of storage for up to 3 devices.",
]


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    from gateway.grounding.encoder import Encoder

    return Encoder.load(threads=1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reward")


@pytest.fixture(scope="module")
def data(workdir: Path) -> Path:
    return write_property_data(workdir / "data")


@pytest.fixture(scope="module")
def encoder_run(workdir: Path, data: Path, seed_model_dir: Path, encoder):  # type: ignore[no-untyped-def]
    settings = trainer_settings(workdir / "var", seed_model_dir)
    return settings, train_reward(RewardConfig(data=data, kind="encoder", quiet=True), settings, encoder=encoder)


@pytest.mark.parametrize("kind", ["encoder", "hf"])
def test_reward_model_ranks_heldout_pairs(kind: str, workdir: Path, data: Path, seed_model_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    settings = trainer_settings(workdir / f"var-{kind}", seed_model_dir)
    run = train_reward(RewardConfig(data=data, kind=kind, quiet=True), settings, encoder=encoder)  # type: ignore[arg-type]
    assert run.finished and run.metrics["heldout_pairs"] >= 20
    assert run.metrics["heldout_accuracy"] >= 0.9, run.metrics  # chance is 0.5
    manifest = read_manifest(run.path)
    assert manifest and manifest["kind"] == kind and manifest["data_sha256"] and manifest["files"]
    scorer = load_scorer(run.path, encoder)  # dispatches on the manifest
    assert isinstance(scorer, RewardScorer) and scorer.kind == kind and scorer.version == run.version
    polite, rude = scorer.score(PROMPT, ANSWERS[:2])
    assert polite > rude


@pytest.mark.parametrize("kind", ["encoder", "hf"])
def test_scorer_is_deterministic_and_batched(kind: str, workdir: Path, data: Path, seed_model_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    settings = trainer_settings(workdir / f"var-{kind}", seed_model_dir)
    run = train_reward(RewardConfig(data=data, kind=kind, quiet=True), settings, encoder=encoder)  # type: ignore[arg-type]
    scorer = load_scorer(run.path, encoder)
    batch = scorer.score(PROMPT, ANSWERS)
    assert len(batch) == len(ANSWERS) and all(isinstance(x, float) for x in batch)
    assert scorer.score(PROMPT, ANSWERS) == batch  # same inputs, same numbers
    singles = [scorer.score(PROMPT, [a])[0] for a in ANSWERS]
    assert singles == pytest.approx(batch, abs=1e-4)  # batching does not change a score
    assert scorer.score(PROMPT, []) == []
    reloaded = load_scorer(run.path, encoder)
    assert reloaded.score(PROMPT, ANSWERS) == pytest.approx(batch, abs=1e-6)


def test_activate_points_the_gateway_at_a_version(encoder_run, encoder) -> None:  # type: ignore[no-untyped-def]
    settings, run = encoder_run
    activate(settings, run.version)
    assert active_id(settings) == run.version
    assert (settings.reward_dir / "ACTIVE").read_text().strip() == run.version
    scorer = load_active_scorer(settings, encoder)
    assert scorer.version == run.version


def test_initial_scorer_from_shipped_examples(tmp_path: Path, seed_model_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    """No ACTIVE yet: the head trained from policies/reward_data is built, activated and prefers the
    product's answer policy (correct, polite, short, cited) on examples it was not trained on."""
    settings = trainer_settings(tmp_path / "var", seed_model_dir)
    scorer = load_active_scorer(settings, encoder)
    assert scorer.version == "initial" and active_id(settings) == "initial"
    q = [{"role": "user", "content": "Does Kestrel Backup have a free plan?"}]
    good = "Yes, the Free plan costs nothing and includes 5 GB of storage for one device."
    assert scorer.score(q, [good, "Ugh, fine. " + good])[0] > scorer.score(q, [good, "Ugh, fine. " + good])[1]
    grounded = [{"role": "system", "content": "Sources:\n[1] The Free plan costs nothing and includes 5 GB of storage for one device."}, *q]
    cited, uncited = scorer.score(grounded, [good.rstrip(".") + " [1].", good])
    assert cited > uncited


def test_encoder_run_resumes_to_the_same_head(workdir: Path, data: Path, seed_model_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    settings = trainer_settings(workdir / "var-resume", seed_model_dir)
    whole = train_reward(RewardConfig(data=data, run_name="whole", quiet=True), settings, encoder=encoder)
    cut = train_reward(RewardConfig(data=data, run_name="cut", stop_after=120, quiet=True), settings, encoder=encoder)
    assert not cut.finished and (cut.path / "checkpoints" / "head.pt").is_file()
    resumed = train_reward(RewardConfig(data=data, run_name="cut", quiet=True), settings, encoder=encoder)
    assert resumed.finished
    from safetensors.torch import load_file

    a, b = load_file(str(whole.path / "head.safetensors")), load_file(str(resumed.path / "head.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_refuses_unusable_data(tmp_path: Path, seed_model_dir: Path) -> None:
    settings = trainer_settings(tmp_path / "var", seed_model_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        train_reward(RewardConfig(data=empty, quiet=True), settings)
    rows, _ = property_rows()
    one_sided = write_rows(tmp_path / "same.jsonl", [{**r, "rejected": r["chosen"]} for r in rows])
    with pytest.raises(DataError, match="one-sided"):
        train_reward(RewardConfig(data=one_sided, quiet=True), settings)
    missing = write_rows(tmp_path / "missing.jsonl", [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in rows])
    with pytest.raises(DataError, match="one-sided"):
        train_reward(RewardConfig(data=missing, quiet=True), settings)
    data = write_property_data(tmp_path / "d")
    with pytest.raises(DataError, match="longer than the context"):
        train_reward(RewardConfig(data=data, kind="hf", max_length=8, quiet=True), settings)


def test_cli_reports_one_line_errors(tmp_path: Path) -> None:
    from flywheel.commands.train import app

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "a"}) + "\n")
    result = CliRunner().invoke(app, ["reward", "--data", str(bad)], env={"FLYWHEEL_VAR_DIR": str(tmp_path / "var")})
    assert result.exit_code == 1
    assert "error:" in result.output and "one-sided" in result.output
