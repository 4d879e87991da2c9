"""Measuring a policy: load it, sample answers, and score answers' log-likelihood under it.

Shared by DPO (held-out likelihood vs the parent), PPO (rollouts, per-token log-probs) and the gates
(win rate, KL, safety, on-topic). A LoRA policy's parent is the same model with the adapter disabled,
so "parent" numbers come from ``with model.disable_adapter():`` — no second copy in memory.

A LoRA version can be a parent too: it is loaded as its base with the adapter merged in (exactly the
parent policy), a new adapter trains on top, and ``trainer.artifacts`` folds the two adapters into one
adapter on the original base, so the shared vLLM can still serve the child.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.common import TrainError
from trainer.data import Message, check_tokenizer

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_policy(path: Path):  # type: ignore[no-untyped-def]
    """A policy as one causal LM and its tokenizer, fp32, eval mode.

    ``path`` is a full checkpoint (the seed, a merged version) or a LoRA version (``<version>`` or its
    ``adapter/``): then its base is loaded and the adapter merged in, so the model *is* the parent.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = lora_adapter(path)
    base = policy_dir(path)
    if not (base / "config.json").is_file():
        raise TrainError(f"{path}: no model checkpoint (config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    check_tokenizer(tokenizer, model.config)
    model.config.use_cache = True
    return model.eval(), tokenizer


def lora_adapter(path: Path) -> Path | None:
    """The adapter directory when ``path`` is a LoRA version (the version or its ``adapter/``), else None."""
    path = Path(path)
    return next((d for d in (path, path / "adapter") if (d / "adapter_config.json").is_file()), None)


def adapter_rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text())["r"])


def adapter_base(adapter: Path) -> Path:
    """The full checkpoint an adapter was trained on (PEFT records it in ``adapter_config.json``)."""
    base = Path(json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or "")
    if not (base / "config.json").is_file():
        raise TrainError(f"{adapter}: its base model {str(base)!r} is not on this machine")
    return base


def policy_dir(path: Path) -> Path:
    """The full checkpoint behind a policy: itself, ``<version>/model`` (merged), or a LoRA version's base."""
    path = Path(path)
    adapter = lora_adapter(path)
    if adapter is not None:
        return adapter_base(adapter)
    # A merged version keeps its checkpoint in model/; its own config.json is the run's, not a model's.
    return path / "model" if (path / "model" / "config.json").is_file() else path


def context_length(path: Path) -> int:
    config = json.loads((policy_dir(path) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def prompt_ids(tokenizer, prompt: list[Message]) -> list[int]:  # type: ignore[no-untyped-def]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def answer_ids(tokenizer, answer: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The answer's tokens plus eos, exactly as the chat template renders an assistant turn."""
    return list(tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


@contextlib.contextmanager
def parent_of(model) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Inside: the model behaves as its parent (a PEFT model with its adapter switched off)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def token_logprobs(model, prompts: list[list[int]], answers: list[list[int]], batch_size: int = 16) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Per-token log p(answer_t | prompt, answer_<t) for each (prompt, answer) pair (no grad)."""
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            p, a = prompts[start:start + batch_size], answers[start:start + batch_size]
            logits, ids, mask = forward_batch(model, p, a)
            out += [row[m] for row, m in zip(gather_logprobs(logits, ids), mask, strict=True)]
    return out


def forward_batch(model, prompts: list[list[int]], answers: list[list[int]]):  # type: ignore[no-untyped-def]
    """Right-padded forward pass; returns logits, input ids and the mask of answer positions (shifted)."""
    rows = [pr + an for pr, an in zip(prompts, answers, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    answer_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (pr, an) in enumerate(zip(prompts, answers, strict=True)):
        ids[i, : len(pr) + len(an)] = torch.tensor(pr + an)
        attn[i, : len(pr) + len(an)] = 1
        answer_mask[i, len(pr) - 1: len(pr) + len(an) - 1] = True
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    return logits, ids, answer_mask


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log-softmax of the next token actually taken, position by position."""
    return torch.gather(F.log_softmax(logits, dim=-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


@dataclass
class Samples:
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]  # generated tokens incl. the final eos when the model stopped
    texts: list[str]


def sample(model, tokenizer, prompts: list[list[Message]], *, n: int = 1, max_new_tokens: int = 48,  # type: ignore[no-untyped-def]
           temperature: float = 1.0, seed: int = 0, batch_size: int = 32) -> Samples:
    """``n`` sampled answers per prompt (prompt-major order), reproducible for a given seed."""
    torch.manual_seed(seed)
    expanded = [p for p in prompts for _ in range(n)]
    p_ids = [prompt_ids(tokenizer, p) for p in expanded]
    answers: list[list[int]] = []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(p_ids), batch_size):
            chunk = p_ids[start:start + batch_size]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, c in enumerate(chunk):  # left padding, so every row continues at the same column
                ids[i, width - len(c):] = torch.tensor(c)
                attn[i, width - len(c):] = 1
            gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            for row in gen[:, width:].tolist():
                answers.append(row[: row.index(eos) + 1] if eos in row else row)
    texts = [tokenizer.decode([t for t in a if t != eos], skip_special_tokens=True).strip() for a in answers]
    return Samples(p_ids, answers, texts)


def sequence_kl(model, samples: Samples, batch_size: int = 16) -> list[float]:  # type: ignore[no-untyped-def]
    """Monte-Carlo KL(policy || parent) per sampled answer: sum_t log pi(a_t) - log pi_parent(a_t), in nats."""
    new = token_logprobs(model, samples.prompt_ids, samples.answer_ids, batch_size)
    with parent_of(model):
        old = token_logprobs(model, samples.prompt_ids, samples.answer_ids, batch_size)
    return [float((a - b).sum()) for a, b in zip(new, old, strict=True)]
