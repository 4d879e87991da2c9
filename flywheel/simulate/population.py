"""Simulated users: stable ids, who among them rates adversarially, and each one's own RNG.

Ids are stable (``sim-<n>``) and sent as the OpenAI ``user`` field, so the router's sticky split
keeps a user on one version the way it would keep a real one. Every user has an RNG seeded from
(run seed, id): a user's choices do not shift when the population grows or requests finish in
another order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class SimUser:
    """One simulated user."""

    id: str
    adversarial: bool
    rng: random.Random = field(repr=False, compare=False)


def build_population(n_users: int, adversarial_fraction: float, seed: int, prefix: str = "sim") -> list[SimUser]:
    """``n_users`` users of whom ``round(n_users * adversarial_fraction)`` rate the opposite way
    (which ones is drawn by ``seed``; an exact count keeps small populations true to the fraction)."""
    if n_users < 1:
        raise ValueError(f"n_users must be at least 1, got {n_users}")
    if not 0.0 <= adversarial_fraction <= 1.0:
        raise ValueError(f"adversarial_fraction must be in [0, 1], got {adversarial_fraction}")
    n_adversarial = round(n_users * adversarial_fraction)
    adversarial = set(random.Random(f"{seed}:adversarial").sample(range(n_users), n_adversarial))
    return [
        SimUser(id=f"{prefix}-{i}", adversarial=i in adversarial, rng=random.Random(f"{seed}:{prefix}-{i}"))
        for i in range(n_users)
    ]
