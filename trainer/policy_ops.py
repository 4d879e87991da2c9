"""Measuring a policy: load it, sample answers, and score answers' log-likelihood under it.

Shared by DPO (held-out likelihood vs the parent), PPO (rollouts, per-token log-probs) and the gates
(win rate, KL, safety, on-topic). A LoRA policy's parent is the same model with the adapter disabled,
so "parent" numbers come from ``with model.disable_adapter():`` — no second copy in memory.
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
    """A full causal-LM checkpoint (the seed, or a merged version) and its tokenizer, fp32, eval mode.

    A LoRA version cannot be a parent yet: its adapter is relative to *its* base, so a new adapter on
    top would not load into the shared vLLM; merge it (``--merge``) or train on the stable base.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = policy_dir(path)
    if (path / "adapter_config.json").is_file() or (path / "adapter" / "adapter_config.json").is_file():
        raise TrainError(f"{path} is a LoRA adapter; train on a full checkpoint (the seed or a --merge version)")
    if not (path / "config.json").is_file():
        raise TrainError(f"{path}: no model checkpoint (config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    check_tokenizer(tokenizer, model.config)
    model.config.use_cache = True
    return model.eval(), tokenizer


def policy_dir(path: Path) -> Path:
    """A model directory, or a merged version directory (``<version>/model``)."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file() else path


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
