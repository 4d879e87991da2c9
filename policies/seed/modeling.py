"""The seed model's architecture, saving, and a quick greedy sample for the build report.

A stock LlamaForCausalLM so that vLLM serves it with no custom code; head_dim is 64 because
vLLM's CPU attention kernels only support standard head sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from policies.seed.config import SeedConfig


def model_config(config: SeedConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def new_model(config: SeedConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Freshly initialised model; the caller seeds torch first so init is reproducible."""
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config(config, tokenizer))
    model.config.use_cache = True
    return model.to(torch.float32)


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """vLLM and transformers read eos_token_id from here to stop at the end of the answer."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=128,
    )


def save_checkpoint(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """HF layout, safetensors, chat template inside tokenizer_config.json (no separate .jinja)."""
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory, save_jinja_files=False)


@torch.no_grad()
def sample_answers(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast,
                   dialogues: list[dict[str, Any]], limit: int = 6, max_new_tokens: int = 64) -> list[dict[str, str]]:
    """Greedy answers to the first user question of a few held-out dialogues (for the report)."""
    model.eval()
    samples = []
    for dialogue in dialogues[:limit]:
        messages = [m for m in dialogue["messages"] if m["role"] != "assistant"][:2]
        if messages[-1]["role"] != "user":
            continue
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        samples.append({"question": messages[-1]["content"], "answer": answer,
                        "system": messages[0]["content"] if messages[0]["role"] == "system" else ""})
    return samples
