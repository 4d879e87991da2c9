"""Reward scorer #1: a small head on the frozen offline sentence encoder (MiniLM), trained Bradley-Terry.

Why this shape: the gateway already holds the encoder for retrieval, so scoring n candidates costs one
encoder pass over n+1 short texts plus a tiny MLP — milliseconds, no second language model in memory.
The features are the response embedding, its element-wise product with the question embedding
(relevance), and a handful of explicit scalars the sentence encoder is known to blur: whether the
prompt carries numbered sources, whether the answer cites one as "[n]", and the answer's length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from policies.reward.base import CITATION, InvalidRewardModel, Message, has_sources, last_user_text

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
FEATURE_VERSION = 1
N_SCALARS = 6


class TextEncoder(Protocol):
    """What the head needs from an encoder (gateway.grounding.encoder.Encoder satisfies it)."""

    name: str
    dim: int

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def _scalars(sources: bool, response: str) -> list[float]:
    cites = CITATION.search(response) is not None
    words = len(response.split())
    return [float(sources), float(cites), float(sources and cites), float(cites and not sources),
            math.log1p(words) / 4.0, float(words > 60)]


def assemble(question_vec: np.ndarray, response_vecs: np.ndarray, sources: bool, responses: Sequence[str]) -> torch.Tensor:
    """Feature rows for responses to one prompt: [r, r * q, scalars]."""
    scal = np.asarray([_scalars(sources, r) for r in responses], dtype=np.float32).reshape(len(responses), N_SCALARS)
    rows = np.concatenate([response_vecs, response_vecs * question_vec[None, :], scal], axis=1)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


class Head(nn.Module):
    """Linear (hidden=0) or one-hidden-layer MLP from features to a scalar reward."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.net = nn.Linear(in_dim, 1) if hidden <= 0 else nn.Sequential(
            nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class EncoderHeadScorer:
    """Frozen encoder + trained head. ``score`` encodes the question and the n answers in one batch."""

    kind = "encoder"

    def __init__(self, encoder: TextEncoder, head: Head, version: str = "unsaved") -> None:
        self.encoder, self.head, self.version = encoder, head.eval(), version

    def features(self, prompt_messages: list[Message], responses: Sequence[str]) -> torch.Tensor:
        vecs = self.encoder.encode([last_user_text(prompt_messages) or " ", *responses])
        return assemble(vecs[0], vecs[1:], has_sources(prompt_messages), responses)

    def score(self, prompt_messages: list[Message], responses: list[str]) -> list[float]:
        if not responses:
            return []
        with torch.inference_mode():
            return [float(x) for x in self.head(self.features(prompt_messages, responses))]

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(directory / HEAD_WEIGHTS))
        meta = {"in_dim": self.head.in_dim, "hidden": self.head.hidden, "encoder": self.encoder.name,
                "encoder_dim": self.encoder.dim, "feature_version": FEATURE_VERSION}
        (directory / HEAD_CONFIG).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path, encoder: TextEncoder, version: str) -> EncoderHeadScorer:
        from safetensors.torch import load_file

        try:
            meta = json.loads((directory / HEAD_CONFIG).read_text())
            state = load_file(str(directory / HEAD_WEIGHTS))
        except (OSError, ValueError) as exc:
            raise InvalidRewardModel(f"{directory}: cannot read the encoder head ({exc})") from exc
        if meta.get("feature_version") != FEATURE_VERSION or meta.get("encoder_dim") != encoder.dim:
            raise InvalidRewardModel(
                f"{directory}: head was trained on {meta.get('encoder')} (dim {meta.get('encoder_dim')}, "
                f"features v{meta.get('feature_version')}); this encoder is {encoder.name} (dim {encoder.dim})"
            )
        head = Head(int(meta["in_dim"]), int(meta["hidden"]))
        head.load_state_dict(state)
        return cls(encoder, head, version)


def pair_features(
    encoder: TextEncoder, prompts: Sequence[list[Message]], chosen: Sequence[str], rejected: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature matrices for the chosen and the rejected side of many pairs; each text encoded once."""
    questions = [last_user_text(p) or " " for p in prompts]
    unique = list(dict.fromkeys([*questions, *chosen, *rejected]))
    vecs = encoder.encode(unique)
    index = {text: i for i, text in enumerate(unique)}
    rows_c, rows_r = [], []
    for q, p, c, r in zip(questions, prompts, chosen, rejected, strict=True):
        src = has_sources(p)
        qv = vecs[index[q]]
        rows_c.append(assemble(qv, vecs[[index[c]]], src, [c]))
        rows_r.append(assemble(qv, vecs[[index[r]]], src, [r]))
    return torch.cat(rows_c), torch.cat(rows_r)


def bradley_terry_loss(head: Head, xc: torch.Tensor, xr: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """-log sigma(r_c - r_r), weighted per pair: the pairwise preference likelihood."""
    return (w * -nn.functional.logsigmoid(head(xc) - head(xr))).sum() / w.sum().clamp_min(1e-9)


def pairwise_accuracy(head: Head, xc: torch.Tensor, xr: torch.Tensor) -> float:
    """Share of pairs the head ranks the right way round (ties count as half)."""
    if len(xc) == 0:
        return float("nan")
    with torch.inference_mode():
        diff = head(xc) - head(xr)
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())
