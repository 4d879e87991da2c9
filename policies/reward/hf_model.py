"""Reward scorer #2: any local Hugging Face ``AutoModelForSequenceClassification`` reward model.

The conversation plus the candidate answer is rendered with the model's own chat template (exactly
what TRL's ``RewardTrainer`` trains on) and the single logit of the last real token is the reward.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from policies.reward.base import InvalidRewardModel, Message, normalise_messages


class HFRewardScorer:
    """A sequence-classification model with one label; candidates of one prompt go in one batch."""

    kind = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer, version: str = "unsaved", max_length: int = 1024) -> None:  # type: ignore[no-untyped-def]
        self.model, self.tokenizer, self.version, self.max_length = model.eval(), tokenizer, version, max_length
        self._lock = threading.Lock()  # a fast tokenizer is not safe to share between threads ("Already borrowed")
        if tokenizer.pad_token_id is None:
            raise InvalidRewardModel("the reward model's tokenizer has no pad token")
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # the model finds the last real token by it

    @classmethod
    def load(cls, directory: Path, version: str, max_length: int = 1024) -> HFRewardScorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                directory, local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError) as exc:
            raise InvalidRewardModel(f"{directory}: not a sequence-classification model ({exc})") from exc
        if model.config.num_labels != 1:
            raise InvalidRewardModel(f"{directory}: a reward model has one output, this one has {model.config.num_labels}")
        if not tokenizer.chat_template:
            raise InvalidRewardModel(f"{directory}: the tokenizer has no chat template")
        return cls(model, tokenizer, version, max_length)

    def encode(self, prompt_messages: list[Message], response: str) -> list[int]:
        """Token ids of the whole conversation ending in ``response`` (as the trainer saw them)."""
        messages = [*normalise_messages(prompt_messages), {"role": "assistant", "content": response}]
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)[-self.max_length:]  # keep the answer when a long history overflows

    def score(self, prompt_messages: list[Message], responses: list[str]) -> list[float]:
        if not responses:
            return []
        with self._lock:
            rows = [self.encode(prompt_messages, r) for r in responses]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        return [float(x) for x in logits[:, 0]]
