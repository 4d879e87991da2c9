"""Bradley-Terry fitting of the encoder head: full-batch Adam over cached features.

Lives next to the scorer (not in trainer/) because the gateway's first start trains the initial head
from the shipped preference examples, and the serving side must not import the trainer. The features
are computed once (the encoder is frozen), so an epoch is a few matrix products: seconds on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from policies.reward.encoder_head import Head, bradley_terry_loss


@dataclass(frozen=True)
class HeadFitConfig:
    """Knobs of one head fit (the trainer's RewardConfig carries the same names)."""

    hidden: int = 32
    epochs: int = 300
    learning_rate: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 50


def fit_head(
    xc: torch.Tensor,
    xr: torch.Tensor,
    weights: torch.Tensor,
    config: HeadFitConfig,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    stop_after: int | None = None,
) -> Head:
    """Train a head so that head(xc) > head(xr); resumes from ``checkpoint`` when one exists.

    ``stop_after`` ends the loop early after that many epochs (to simulate an interrupted run).
    """
    torch.manual_seed(config.seed)
    head = Head(xc.shape[1], config.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    head.train()
    for epoch in range(start, config.epochs):
        opt.zero_grad()
        loss = bradley_terry_loss(head, xc, xr, weights)
        loss.backward()
        opt.step()
        done = epoch + 1
        if on_epoch is not None:
            on_epoch(done, loss.item())
        if checkpoint is not None and (done % config.checkpoint_every == 0 or done == config.epochs):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "epoch": done}, tmp)
            tmp.replace(checkpoint)
        if stop_after is not None and done >= stop_after:
            break
    return head.eval()
