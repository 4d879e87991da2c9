"""Encoding and the training loop for the seed model.

Loss is taken on assistant tokens only (answers and their <|eos|>): the model must learn to
answer and to stop, not to imitate users. Batches group similar lengths to waste little padding,
and every random choice flows from one seeded generator so two builds match bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from policies.seed.config import SeedConfig
from policies.seed.tokenizer import assistant_spans

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def encode_dialogues(tokenizer: PreTrainedTokenizerFast, dialogues: Sequence[dict[str, Any]],
                     max_length: int) -> list[Example]:
    """Render with the saved chat template and label only the assistant spans."""
    texts = [tokenizer.apply_chat_template(d["messages"], tokenize=False) for d in dialogues]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    examples = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        spans = assistant_spans(text)
        labels = [tok if any(a <= start < b for a, b in spans) else IGNORE
                  for tok, (start, _end) in zip(ids, offsets, strict=True)]
        examples.append(Example(ids[:max_length], labels[:max_length]))
    return [e for e in examples if any(label != IGNORE for label in e.labels[1:])]


def _collate(batch: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad; causal attention never lets real tokens see right padding, so no mask needed."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return ids, labels


def batch_schedule(examples: Sequence[Example], batch_size: int, steps: int,
                   generator: torch.Generator) -> list[list[int]]:
    """Epochs of shuffled, length-bucketed batches until `steps` batches exist."""
    batches: list[list[int]] = []
    chunk = batch_size * 32
    while len(batches) < steps:
        order = torch.randperm(len(examples), generator=generator).tolist()
        epoch: list[list[int]] = []
        for i in range(0, len(order), chunk):
            part = sorted(order[i : i + chunk], key=lambda j: len(examples[j].input_ids))
            epoch += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
        perm = torch.randperm(len(epoch), generator=generator).tolist()
        batches += [epoch[p] for p in perm]
    return batches[:steps]


def lr_at(step: int, config: SeedConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_lr_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, examples: Sequence[Example], config: SeedConfig, pad_id: int,
          on_step: Callable[[int, float], None] | None = None) -> float:
    """Run the optimiser for config.steps; returns the mean loss of the last 50 steps."""
    generator = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(0.9, 0.95), foreach=False,
    )
    model.train()
    recent: list[float] = []
    for step, batch in enumerate(batch_schedule(examples, config.batch_size, config.steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        ids, labels = _collate([examples[i] for i in batch], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16_autocast):
            loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=False)
        optimizer.step()
        recent = (recent + [loss.item()])[-50:]
        if on_step is not None:
            on_step(step, recent[-1])
    model.eval()
    return sum(recent) / max(1, len(recent))


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, examples: Sequence[Example], batch_size: int, pad_id: int) -> dict[str, float]:
    """Token-weighted loss and perplexity on held-out dialogues (assistant tokens only)."""
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    for i in range(0, len(ordered), batch_size):
        ids, labels = _collate(ordered[i : i + batch_size], pad_id)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
        total += loss.item()
        count += int((target != IGNORE).sum())
    mean = total / max(1, count)
    return {"eval_loss": round(mean, 6), "eval_perplexity": round(math.exp(mean), 4), "eval_tokens": count}
