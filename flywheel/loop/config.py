"""Every knob of `flywheel loop`, in one dataclass (printed into the report, so a report says how it was made).

The loop talks to a running stack (`flywheel up`, or the test fixtures) only through public surfaces:
the chat and feedback API (simulated users), the operator API (registering canaries, the controller's
actions) and the store (export, metrics). Training runs in this process, like `flywheel train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from deploy.canary.plan import MetricCondition, RolloutPlan

Algo = Literal["dpo", "ppo"]


def loop_plan(min_ratings: int = 60) -> RolloutPlan:
    """The loop's default rollout: three steps, judged on ratings rather than on time.

    The stack's default plan waits 10 minutes per step, which suits real users; simulated users rate
    at once, so the loop's steps wait for evidence only. Thumbs-up rate must prove itself; reward,
    errors, safety blocks and latency are guardrails (see deploy/canary/plan.py).
    """
    return RolloutPlan(
        steps=(0.2, 0.5, 1.0), min_ratings_per_step=min_ratings, max_ratings_per_step=min_ratings * 6,
        min_seconds_per_step=0.0,
        conditions=(
            MetricCondition("thumbs_up_rate", margin=0.05, min_samples=min_ratings, required=True),
            MetricCondition("error_rate", margin=0.02, min_samples=min_ratings),
            MetricCondition("safety_block_rate", margin=0.03, min_samples=min_ratings),
            MetricCondition("latency_p99_ms", max_ratio=3.0, min_samples=min_ratings),
        ),
    )  # fmt: skip


@dataclass
class LoopConfig:
    """What one `flywheel loop` run does; defaults are the documented ones."""

    rounds: int = 1
    algo: Algo = "dpo"
    url: str = "http://127.0.0.1:8000"
    chat_key: str = ""
    admin_key: str = ""
    preferences: Path | None = None  # None: the shipped default preference
    interactions_per_round: int = 500  # rated interactions collected from the stable before training
    question_pool: int = 40  # questions asked while collecting (each several times: pairs need repeats)
    rollout_batch: int = 80  # simulated requests between two controller ticks
    max_rollout_interactions: int = 2400  # a canary still undecided after this many is left to an operator
    eval_interactions: int = 200  # per version, fresh users, at the end (0: skip)
    users: int = 200
    concurrency: int = 8
    seed: int = 0
    reports_dir: Path = Path("reports")
    ingest_timeout_s: float = 120.0
    plan: RolloutPlan = field(default_factory=loop_plan)
    # training knobs (the rest are the trainer's defaults)
    # measured on the fixture seed with a round's pairs: 2 epochs at 5e-4 left KL to the parent at
    # 0.004 nats and the canary indistinguishable from stable; 2-4 epochs at 1e-3 with the SFT term
    # weighted 2 moved the sampled answers users like from 4 % to 52-59 %. On the default seed
    # (`flywheel bench loop`'s 440 pairs, answers sampled offline for 300 held-out questions and judged
    # by the default preference without noise) 3 epochs overfit: citing rose 80 → 97 % but the right
    # fact fell 94 → 81 % (liked 79 → 83 %); 2 epochs kept the fact at 91 % (liked 79 → 92 %), and
    # 3 epochs at 5e-4 landed between (90 %)
    dpo_epochs: float = 2.0
    dpo_learning_rate: float = 1e-3
    dpo_sft_weight: float = 2.0
    dpo_beta: float = 0.1
    gate_samples_per_prompt: int = 8
    heldout_fraction: float = 0.2
    lora_r: int = 8
    ppo_iterations: int = 12
    min_win_rate: float = 0.5
    min_human_accuracy: float = 0.5  # the held-out human-pairs gate (trainer.gates.GateConfig)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["chat_key"] = out["admin_key"] = "***"  # keys never reach a report
        out["preferences"] = str(self.preferences) if self.preferences else "default"
        out["reports_dir"] = str(self.reports_dir)
        return out
