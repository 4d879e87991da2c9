"""Reward scorers for best-of-n and for training: ``score(prompt_messages, responses) -> list[float]``.

Two kinds behind one Protocol: an MLP head on the frozen offline encoder (``encoder``) and any local
Hugging Face sequence-classification reward model (``hf``). Versions live under ``var/reward/<id>/``;
``var/reward/ACTIVE`` names the one the gateway loads (``load_active_scorer``).
"""

from policies.reward.base import (
    InvalidRewardModel,
    RewardError,
    RewardModelNotFound,
    RewardScorer,
)
from policies.reward.store import (
    activate,
    active_id,
    ensure_initial_scorer,
    load_active_scorer,
    load_scorer,
    next_version_id,
    read_manifest,
    verify_version,
    write_manifest,
)

__all__ = [
    "InvalidRewardModel", "RewardError", "RewardModelNotFound", "RewardScorer", "activate", "active_id",
    "ensure_initial_scorer", "load_active_scorer", "load_scorer", "next_version_id", "read_manifest",
    "verify_version", "write_manifest",
]
