"""`seed-model --force` replaces only an earlier seed build: a directory is recognised by the builder's own
manifest (or its seed_config.json), never by the config.json every Hugging Face checkpoint has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies.seed.build import FORMAT, MANIFEST, SeedBuildError, SeedConfig, _replaceable, ensure_seed_model


def _foreign_checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (directory / "model.safetensors").write_bytes(b"someone else's weights")
    return directory


def test_a_foreign_checkpoint_is_not_replaceable(tmp_path: Path) -> None:
    assert not _replaceable(_foreign_checkpoint(tmp_path / "ckpt"))


def test_earlier_seed_builds_and_empty_directories_are_replaceable(tmp_path: Path) -> None:
    assert _replaceable(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert _replaceable(tmp_path / "empty")
    built = _foreign_checkpoint(tmp_path / "built")
    (built / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": {}}))
    assert _replaceable(built)
    damaged = _foreign_checkpoint(tmp_path / "damaged")  # a seed build whose manifest was lost
    (damaged / "seed_config.json").write_text("{}")
    assert _replaceable(damaged)
    other = _foreign_checkpoint(tmp_path / "other")
    (other / MANIFEST).write_text(json.dumps({"format": "something-else/1"}))
    assert not _replaceable(other)


def test_force_refuses_to_delete_a_foreign_checkpoint(tmp_path: Path) -> None:
    target = _foreign_checkpoint(tmp_path / "ckpt")
    with pytest.raises(SeedBuildError, match="not a seed model directory"):
        ensure_seed_model(target, SeedConfig.fixture(), force=True)
    assert (target / "model.safetensors").read_bytes() == b"someone else's weights"
