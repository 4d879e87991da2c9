"""From a preference score to a thumbs up/down, the way imperfect people rate.

Real raters do not rate every answer, sometimes click the wrong thumb and a few rate against
their own judgement; the loop must learn through that, so the simulation reproduces it. The
random numbers are drawn before the answer arrives (``RatingDraws``), which keeps ``decide`` pure
and a run's ratings independent of the order in which concurrent answers come back.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

Thumb = Literal["up", "down"]


@dataclass(frozen=True)
class RatingPolicy:
    """How scores become ratings.

    threshold: score at or above which the honest judgement is thumbs up.
    temperature: 0 = a hard threshold; > 0 = P(up) = logistic((score - threshold) / temperature).
    noise: probability of flipping the honest judgement (a misclick).
    rating_probability: probability that a user rates an answer at all.
    adversarial_fraction: share of users who always rate the opposite of their judgement.
    """

    threshold: float = 0.6
    temperature: float = 0.0
    noise: float = 0.0
    rating_probability: float = 1.0
    adversarial_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("threshold", "noise", "rating_probability", "adversarial_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class RatingDraws:
    """The three uniform numbers one rating decision consumes, drawn up front."""

    rate: float
    judge: float
    flip: float

    @classmethod
    def sample(cls, rng: random.Random) -> RatingDraws:
        return cls(rng.random(), rng.random(), rng.random())


def p_up(score: float, policy: RatingPolicy) -> float:
    """Probability that an honest, careful user gives thumbs up to an answer with this score."""
    if policy.temperature == 0:
        return 1.0 if score >= policy.threshold else 0.0
    z = (score - policy.threshold) / policy.temperature
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def decide(score: float, policy: RatingPolicy, draws: RatingDraws, adversarial: bool) -> Thumb | None:
    """The rating a user posts, or ``None`` when they do not rate."""
    if draws.rate >= policy.rating_probability:
        return None
    up = draws.judge < p_up(score, policy)
    if draws.flip < policy.noise:
        up = not up
    if adversarial:
        up = not up
    return "up" if up else "down"
