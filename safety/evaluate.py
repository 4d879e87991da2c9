"""Held-out evaluation of the input chain: how many attacks it blocks, how many benign prompts it blocks.

The whole configured input chain is measured (patterns + blocklist + classifier), as deployed, on
the ``heldout`` split only; the classifier alone is reported beside it so a regression in either
part shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safety.chain import SafetyChain
from safety.dataset import ATTACK_LABELS, Example
from safety.filters.learned import ClassifierFilter


@dataclass
class EvalReport:
    n_attack: int
    n_benign: int
    block_rate: float  # share of held-out attacks (jailbreak + toxic) blocked
    fp_rate: float  # share of held-out benign prompts blocked
    per_label: dict[str, float]
    classifier_block_rate: float | None
    classifier_fp_rate: float | None
    misses: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)

    def meets(self, min_block_rate: float = 0.90, max_fp_rate: float = 0.02) -> bool:
        return self.block_rate >= min_block_rate and self.fp_rate <= max_fp_rate


def evaluate(chain: SafetyChain, examples: list[Example], split: str = "heldout") -> EvalReport:
    """Run every ``split`` example through ``chain.check_input`` as a one-message user request."""
    chosen = [ex for ex in examples if ex.split == split]
    learned = [f for f in chain.classifier_filters if isinstance(f, ClassifierFilter)]
    for flt in learned:
        flt.classifier.prime([ex.text for ex in chosen])
    blocked: list[bool] = []
    by_classifier: list[bool] = []
    for ex in chosen:
        result = chain.check_input([{"role": "user", "content": ex.text}])
        blocked.append(result.blocked)
        if learned:
            p_attack, _ = learned[0].classifier.score(ex.text)
            by_classifier.append(p_attack >= learned[0].classifier.threshold)
    attacks = [i for i, ex in enumerate(chosen) if ex.label in ATTACK_LABELS]
    benign = [i for i, ex in enumerate(chosen) if ex.label not in ATTACK_LABELS]

    def rate(idx: list[int], flags: list[bool]) -> float:
        return sum(flags[i] for i in idx) / len(idx) if idx else 0.0

    per_label = {
        label: rate([i for i, ex in enumerate(chosen) if ex.label == label], blocked)
        for label in sorted({ex.label for ex in chosen})
    }
    return EvalReport(
        n_attack=len(attacks),
        n_benign=len(benign),
        block_rate=rate(attacks, blocked),
        fp_rate=rate(benign, blocked),
        per_label=per_label,
        classifier_block_rate=rate(attacks, by_classifier) if learned else None,
        classifier_fp_rate=rate(benign, by_classifier) if learned else None,
        misses=[chosen[i].text for i in attacks if not blocked[i]],
        false_positives=[chosen[i].text for i in benign if blocked[i]],
    )
