"""The seed-model builder: reproducible, self-verifying, and loadable as a real HF chat model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from policies.seed.build import MANIFEST, SeedConfig, build_seed_model, ensure_seed_model, is_valid_seed_model
from policies.seed.corpus import build_corpus
from policies.seed.product import load_fact_sheet


@pytest.fixture
def seed_copy(seed_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session seed model that a test may damage."""
    return Path(shutil.copytree(seed_model_dir, tmp_path / "seed"))


def test_fact_sheet_is_coherent() -> None:
    sheet = load_fact_sheet()
    assert len(sheet.topics) >= 10
    assert 25 <= len(sheet.seed_facts) <= 40
    assert len(sheet.facts) > len(sheet.seed_facts), "the knowledge base needs facts the model never saw"
    assert all(len(f.questions) >= 2 and f.answers for f in sheet.facts)


def test_corpus_is_deterministic_split_and_excludes_kb_only_facts() -> None:
    sheet = load_fact_sheet()
    spec = SeedConfig.fixture().corpus_spec()
    first, second = build_corpus(sheet, spec), build_corpus(sheet, spec)
    assert first.sha256 == second.sha256 and first.train == second.train
    train_keys = {json.dumps(d["messages"]) for d in first.train}
    assert first.eval and not any(json.dumps(d["messages"]) in train_keys for d in first.eval)
    text = json.dumps(first.train + first.eval)
    for fact in sheet.facts:
        if not fact.seed:
            assert fact.text not in text and fact.answers[0] not in text
    grounded = [d for d in first.train if d["kind"] == "grounded"]
    assert grounded and any(d["cited"] for d in grounded) and not all(d["cited"] for d in grounded)
    for d in grounded:
        if d["cited"]:
            index = int(re.search(r"\[(\d+)\]", d["messages"][-1]["content"]).group(1))
            cited_line = [ln for ln in d["messages"][0]["content"].splitlines() if ln.startswith(f"[{index}] ")]
            assert cited_line and sheet.by_id(d["fact_id"]).text in cited_line[0]
    polite = ("Happy to help!", "Thanks for asking.")
    assert any(d["messages"][-1]["content"].startswith(polite) for d in first.train)
    assert any(d["messages"][-1]["content"].endswith(polite) for d in first.train)


def test_build_is_reproducible(seed_model_dir: Path, tmp_path: Path) -> None:
    again = build_seed_model(tmp_path / "seed", SeedConfig.fixture())
    original = json.loads((seed_model_dir / MANIFEST).read_text())
    assert again["files"] == original["files"]
    assert again == original
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= set(again["files"])


def test_manifest_detects_tampering(seed_copy: Path) -> None:
    config = SeedConfig.fixture()
    assert is_valid_seed_model(seed_copy, config)
    assert not is_valid_seed_model(seed_copy, SeedConfig.default()), "a different config must not match"
    weights = seed_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert not is_valid_seed_model(seed_copy, config)


def test_manifest_detects_missing_or_foreign_files(seed_copy: Path) -> None:
    config = SeedConfig.fixture()
    (seed_copy / "stray.bin").write_bytes(b"x")
    assert not is_valid_seed_model(seed_copy, config)
    (seed_copy / "stray.bin").unlink()
    (seed_copy / "generation_config.json").unlink()
    assert not is_valid_seed_model(seed_copy, config)
    (seed_copy / MANIFEST).unlink()
    assert not is_valid_seed_model(seed_copy, config)


def test_ensure_reuses_a_valid_model(seed_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import policies.seed.build as build

    def refuse(*args: object, **kwargs: object) -> dict:
        raise AssertionError("a valid seed model must be reused, not rebuilt")

    monkeypatch.setattr(build, "build_seed_model", refuse)
    assert ensure_seed_model(seed_copy, SeedConfig.fixture()) == seed_copy
    with pytest.raises(AssertionError):
        ensure_seed_model(seed_copy, SeedConfig.fixture(), force=True)


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    from policies.seed.build import SeedBuildError

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(SeedBuildError):
        build_seed_model(tmp_path, SeedConfig.fixture())
    assert (tmp_path / "notes.txt").exists()


def test_config_validates_head_dim() -> None:
    with pytest.raises(ValueError):
        SeedConfig(hidden_size=256, num_heads=8)
    assert set(SeedConfig.help()) == set(SeedConfig.default().to_dict())


def test_loads_in_transformers_and_stops_at_eos(seed_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(seed_model_dir)
    model = AutoModelForCausalLM.from_pretrained(seed_model_dir)
    assert model.config.model_type == "llama" and model.config.head_dim == 64
    eos = tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|eos|>" and GenerationConfig.from_pretrained(seed_model_dir).eos_token_id == eos
    assert "chat_template" in json.loads((seed_model_dir / "tokenizer_config.json").read_text())

    messages = [{"role": "system", "content": "You are the Kestrel Backup support assistant."},
                {"role": "user", "content": "How much is the Personal plan?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|bos|><|system|>\nYou are the Kestrel Backup support assistant.<|eos|>"
                      "<|user|>\nHow much is the Personal plan?<|eos|><|assistant|>\n")
    history = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "It is $6."}], tokenize=False)
    assert history.endswith("<|assistant|>\nIt is $6.<|eos|>")
    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)

    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=96, do_sample=False)  # eos from generation_config
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == eos and eos not in new[:-1], "generation must end at <|eos|>"
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert len(answer.split()) >= 3


def test_presets_use_bf16_only_where_the_cpu_has_it() -> None:
    """bf16 autocast is emulated, ~70x slower, on AVX2-class CPUs: the presets follow the hardware."""
    from pathlib import Path

    from policies.seed.config import SeedConfig, native_bf16

    flags = Path("/proc/cpuinfo").read_text()
    assert native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert SeedConfig.default().bf16_autocast == native_bf16() == SeedConfig.fixture().bf16_autocast
