"""SeedConfig: every knob of the seed-model build, with defaults and help text.

Saved with the run (seed_config.json and the manifest) so a built model says how it was made,
and compared on reuse so a changed knob triggers a rebuild.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from policies.seed.corpus import CorpusSpec


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without it, torch emulates
    bf16 and a seed-model step measured ~25 s instead of ~0.35 s (an AVX2-only EPYC), so the presets
    train in fp32 there. The choice is part of the config, hence of the manifest and its hash."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _knob(default: Any, help: str) -> Any:  # noqa: A002 - mirrors TRL/argparse naming
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SeedConfig:
    """Corpus, tokenizer, model shape, optimiser and determinism settings for one seed build."""

    # --- corpus ------------------------------------------------------------------------------
    n_dialogues: int = _knob(9000, "dialogues generated before de-duplication and the eval split")
    eval_fraction: float = _knob(0.05, "share of dialogues held out for the final loss/perplexity")
    grounded_fraction: float = _knob(0.3, "share with a system message of numbered sources")
    cite_fraction: float = _knob(0.8, "share of grounded answers that cite the source as [n]")
    max_sources: int = _knob(3, "most sources in one grounded system message")
    system_fraction: float = _knob(0.4, "share of ungrounded dialogues with a persona system message")
    smalltalk_fraction: float = _knob(0.06, "share of greetings/thanks/off-topic dialogues")
    multi_turn_fraction: float = _knob(0.1, "share of Q&A dialogues with an earlier Q&A turn")
    polite_open_fraction: float = _knob(0.15, "share of answers opening with a polite phrase")
    polite_close_fraction: float = _knob(0.15, "share of answers closing with a polite phrase")
    # --- tokenizer ---------------------------------------------------------------------------
    vocab_size: int = _knob(2048, "BPE vocabulary cap (the corpus may saturate below it)")
    min_frequency: int = _knob(2, "minimum pair frequency for a BPE merge")
    # --- model (LlamaForCausalLM) -----------------------------------------------------------
    hidden_size: int = _knob(256, "model width; hidden_size / num_heads must be 64 for vLLM CPU")
    num_layers: int = _knob(4, "transformer blocks")
    num_heads: int = _knob(4, "attention heads")
    num_kv_heads: int = _knob(4, "key/value heads (fewer = grouped-query attention)")
    intermediate_size: int = _knob(512, "MLP width")
    max_position_embeddings: int = _knob(2048, "context the config advertises (vLLM max_model_len cap)")
    tie_word_embeddings: bool = _knob(True, "share input and output embeddings (fewer params)")
    # --- optimisation -------------------------------------------------------------------------
    steps: int = _knob(500, "optimiser steps")
    batch_size: int = _knob(24, "dialogues per step")
    max_length: int = _knob(192, "dialogues longer than this many tokens are truncated")
    learning_rate: float = _knob(3e-3, "peak AdamW learning rate")
    warmup_steps: int = _knob(30, "linear warm-up steps before cosine decay")
    min_lr_ratio: float = _knob(0.1, "final learning rate as a fraction of the peak")
    weight_decay: float = _knob(0.05, "AdamW weight decay")
    grad_clip: float = _knob(1.0, "max gradient norm")
    eval_batch_size: int = _knob(64, "dialogues per held-out loss batch")
    bf16_autocast: bool = _knob(False, "bf16 matmuls with fp32 master weights: ~1.5x faster with AMX/AVX512-BF16, "
                                       "far slower without (the presets turn it on only where the CPU has it)")
    # --- determinism --------------------------------------------------------------------------
    seed: int = _knob(1234, "seed for corpus generation, init and batch order")
    num_threads: int = _knob(1, "torch intra-op threads; fixed so float reductions repeat exactly "
                             "(1: on shared cores extra threads spin-wait and run several times slower)")

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads != 64:
            raise ValueError("hidden_size / num_heads must be 64 (vLLM CPU attention head size)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in (0, 1)")

    @classmethod
    def default(cls) -> SeedConfig:
        """The real seed policy: ~3 minutes on 2 CPU cores."""
        return cls(bf16_autocast=native_bf16())

    @classmethod
    def fixture(cls) -> SeedConfig:
        """Tiny preset for tests: loads in transformers and vLLM, builds in seconds."""
        return cls(n_dialogues=1500, vocab_size=1024, hidden_size=128, num_layers=2, num_heads=2,
                   num_kv_heads=2, intermediate_size=256, steps=300, batch_size=16,
                   max_length=160, learning_rate=3e-3, warmup_steps=10, bf16_autocast=native_bf16())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def help(cls) -> dict[str, str]:
        """Knob name -> help text (for `--help` style listings)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def corpus_spec(self) -> CorpusSpec:
        return CorpusSpec(
            n_dialogues=self.n_dialogues, eval_fraction=self.eval_fraction,
            grounded_fraction=self.grounded_fraction, system_fraction=self.system_fraction,
            smalltalk_fraction=self.smalltalk_fraction, multi_turn_fraction=self.multi_turn_fraction,
            polite_open_fraction=self.polite_open_fraction,
            polite_close_fraction=self.polite_close_fraction, cite_fraction=self.cite_fraction,
            max_sources=self.max_sources, seed=self.seed,
        )
