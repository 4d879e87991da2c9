"""The PPO pieces, kept as small pure functions: value head, batched forward, GAE, the clipped losses,
and the adaptive KL controller (Ziegler et al. 2019, as in InstructGPT).

Token t of an answer is an action; the state before it is the prompt plus answer tokens < t. The
per-token reward is ``-kl_coef * (log pi(a_t) - log pi_ref(a_t))``, and the reward model's score of
the whole answer is added on its last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ValueHead(nn.Module):
    """V(s) from the policy's last hidden state (shared trunk, like TRL's former ValueHead)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


@dataclass
class Forward:
    logprobs: torch.Tensor  # [B, T] log pi(a_t)
    values: torch.Tensor | None  # [B, T] V(s_t)
    entropy: torch.Tensor  # [B, T] policy entropy at s_t
    mask: torch.Tensor  # [B, T] 1 on real answer tokens


def forward(model, value_head: ValueHead | None, prompts: list[list[int]], answers: list[list[int]]) -> Forward:  # type: ignore[no-untyped-def]
    """One right-padded pass; outputs aligned to answer tokens (padded to the longest answer)."""
    rows = [p + a for p, a in zip(prompts, answers, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
    out = model(input_ids=ids, attention_mask=attn, output_hidden_states=value_head is not None)
    t_max = max(len(a) for a in answers)
    pos = torch.zeros((len(rows), t_max), dtype=torch.long)  # position whose output predicts answer token t
    mask = torch.zeros((len(rows), t_max))
    target = torch.zeros((len(rows), t_max), dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        pos[i, : len(a)] = torch.arange(len(p) - 1, len(p) - 1 + len(a))
        target[i, : len(a)] = torch.tensor(a)
        mask[i, : len(a)] = 1
    index = pos.unsqueeze(-1)
    logits = torch.gather(out.logits.float(), 1, index.expand(-1, -1, out.logits.shape[-1]))
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = torch.gather(logp_all, 2, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1]
        values = value_head(torch.gather(hidden, 1, index.expand(-1, -1, hidden.shape[-1])).float())
    return Forward(logprobs * mask, None if values is None else values * mask, entropy * mask, mask)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each answer; returns (advantages, returns)."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0])
    zeros = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):  # values/rewards are 0 past each answer's end (masked)
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else zeros
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, float, float]:
    """The clipped surrogate; also returns the clip fraction and approx KL(old || new)."""
    ratio = torch.exp(new_logp - old_logp)
    loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip))
    with torch.no_grad():
        clipped = masked_mean(((ratio - 1).abs() > clip).float(), mask).item()
        approx_kl = masked_mean(0.5 * (new_logp - old_logp) ** 2, mask).item()
    return masked_mean(loss, mask), clipped, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """Clipped value loss (PPO2): the worse of the clipped and unclipped squared errors."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


class KLController:
    """Fixed, or adaptive: nudge the coefficient so the measured KL tracks ``target`` (Ziegler et al.)."""

    def __init__(self, coef: float, target: float | None, horizon: int) -> None:
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.coef *= 1.0 + error * n_steps / self.horizon
