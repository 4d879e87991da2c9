"""Evaluation gates a new policy version must pass before it may be registered.

All measured on held-out prompts against the parent (the same model with the adapter switched off):
- ``reward_win_rate``: sampled answers of new vs parent, judged by the reward model (ties count half);
- ``human_pairs``: on held-out *human* pairs, how often the new version moved towards the chosen answer
  more than towards the rejected one (DPO's implicit-reward accuracy against the parent);
- ``kl``: Monte-Carlo KL(new || parent) per sampled answer, in nats;
- ``safety``: output block rate of sampled answers through ``safety``'s output chain, new vs parent;
- ``on_topic``: no collapse into one repeated reply (distinct-answer ratio) and sane mean length.
A gate that cannot run (no human pairs, no safety package) is skipped with its reason, never faked.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.common import DataError, knob
from trainer.data import Message, Pair
from trainer.policy_ops import Samples, answer_ids, parent_of, prompt_ids, sample, sequence_kl, token_logprobs

if TYPE_CHECKING:
    from flywheel.settings import Settings
    from policies.reward import RewardScorer

logger = logging.getLogger("flywheel.trainer.gates")


@dataclass
class GateConfig:
    """Thresholds and sampling budget of the gates."""

    min_reward_win_rate: float = knob(0.5, "new must beat parent on more than this share of sampled answers")
    min_human_accuracy: float = knob(0.5, "share of held-out human pairs the update must move the right way")
    max_kl: float = knob(20.0, "most nats per answer KL(new || parent) on sampled answers")
    max_block_rate_increase: float = knob(0.02, "safety block rate may rise by at most this much")
    min_distinct_ratio: float = knob(0.3, "distinct answers / answers, against collapse")
    min_mean_words: float = knob(2.0, "shortest acceptable mean answer length, in words")
    max_mean_words: float = knob(150.0, "longest acceptable mean answer length, in words")
    n_prompts: int = knob(48, "held-out prompts sampled for the gates")
    samples_per_prompt: int = knob(2, "answers sampled per prompt and policy")
    max_new_tokens: int = knob(48, "longest sampled answer, in tokens")
    temperature: float = knob(1.0, "sampling temperature for the gate samples")
    seed: int = knob(1234, "sampling seed (the same for new and parent)")


@dataclass
class GateResult:
    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.detail})"
        return f"{self.name}: {'pass' if self.passed else 'FAIL'} ({self.detail})"


@dataclass
class GateReport:
    results: list[GateResult] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    new_texts: list[str] = field(default_factory=list)  # every gate sample, for callers; not in the manifest
    parent_texts: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed or r.skipped for r in self.results)

    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not (r.passed or r.skipped)]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) for r in self.results], "metrics": self.metrics}


def _at_least(name: str, value: float, threshold: float, strict: bool = False) -> GateResult:
    ok = value > threshold if strict else value >= threshold
    sign = ">" if strict else ">="
    detail = f"{value:.3f} {sign} {threshold:.3f}" if ok else f"{value:.3f}, needs {sign} {threshold:.3f}: short by {threshold - value:.3f}"
    return GateResult(name, ok, value, threshold, detail)


def _at_most(name: str, value: float, threshold: float) -> GateResult:
    ok = value <= threshold
    detail = f"{value:.3f} <= {threshold:.3f}" if ok else f"{value:.3f} > {threshold:.3f}: over by {value - threshold:.3f}"
    return GateResult(name, ok, value, threshold, detail)


def preference_metrics(model, tokenizer, pairs: list[Pair], beta: float = 0.1) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Held-out pairs, new vs parent: implicit-reward accuracy/margin and chosen log-likelihood change."""
    if not pairs:
        return {}
    prompts = [prompt_ids(tokenizer, p.prompt) for p in pairs]
    chosen = [answer_ids(tokenizer, p.chosen) for p in pairs]
    rejected = [answer_ids(tokenizer, p.rejected) for p in pairs]
    new_c = [float(x.sum()) for x in token_logprobs(model, prompts, chosen)]
    new_r = [float(x.sum()) for x in token_logprobs(model, prompts, rejected)]
    with parent_of(model):
        old_c = [float(x.sum()) for x in token_logprobs(model, prompts, chosen)]
        old_r = [float(x.sum()) for x in token_logprobs(model, prompts, rejected)]
    margins = [beta * ((nc - oc) - (nr - orj)) for nc, oc, nr, orj in zip(new_c, old_c, new_r, old_r, strict=True)]
    n = len(pairs)
    return {
        "pairs": n,
        "implicit_reward_accuracy": sum(m > 0 for m in margins) / n,
        "implicit_reward_margin": sum(margins) / n,
        "chosen_logp_up_rate": sum(nc > oc for nc, oc in zip(new_c, old_c, strict=True)) / n,
        "chosen_logp_delta": sum(nc - oc for nc, oc in zip(new_c, old_c, strict=True)) / n,
        "rejected_logp_delta": sum(nr - orj for nr, orj in zip(new_r, old_r, strict=True)) / n,
    }


def sample_both(model, tokenizer, prompts: list[list[Message]], config: GateConfig) -> tuple[Samples, Samples]:  # type: ignore[no-untyped-def]
    kw = {"n": config.samples_per_prompt, "max_new_tokens": config.max_new_tokens,
          "temperature": config.temperature, "seed": config.seed}
    new = sample(model, tokenizer, prompts, **kw)
    with parent_of(model):
        old = sample(model, tokenizer, prompts, **kw)
    return new, old


def reward_win_rate(scorer: RewardScorer, prompts: list[list[Message]], new: list[str], old: list[str], k: int) -> tuple[float, float, float]:
    """(win rate, mean new reward, mean parent reward) with ``k`` answers per prompt on each side."""
    wins, new_total, old_total = 0.0, 0.0, 0.0
    for i, prompt in enumerate(prompts):
        a, b = new[i * k:(i + 1) * k], old[i * k:(i + 1) * k]
        scores = scorer.score(prompt, a + b)
        for sa, sb in zip(scores[:k], scores[k:], strict=True):
            wins += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
        new_total, old_total = new_total + sum(scores[:k]), old_total + sum(scores[k:])
    n = len(prompts) * k
    return wins / n, new_total / n, old_total / n


def _safety(settings: Settings | None, new: list[str], old: list[str]) -> tuple[GateResult | None, dict[str, float]]:
    """(a skipped result, {}) when there is no output check; else (None, block rates)."""
    try:
        from safety.chain import SafetyChain
    except ImportError as exc:
        reason = f"safety output check not available ({exc})"
        logger.warning("gate safety skipped: %s", reason)
        return GateResult("safety", False, detail=reason, skipped=True), {}
    if settings is None:
        from flywheel.settings import Settings

        settings = Settings()
    if not settings.safety_enabled:
        return GateResult("safety", False, detail="safety is disabled in the settings", skipped=True), {}
    chain = SafetyChain.from_settings(settings.model_copy(update={"safety_input_filters": []}))
    new_rate = sum(chain.check_output(t).blocked for t in new) / max(1, len(new))
    old_rate = sum(chain.check_output(t).blocked for t in old) / max(1, len(old))
    return None, {"block_rate": new_rate, "parent_block_rate": old_rate}


def evaluate_gates(model, tokenizer, prompts: list[list[Message]], scorer: RewardScorer | None,  # type: ignore[no-untyped-def]
                   heldout: list[Pair], config: GateConfig, settings: Settings | None = None,
                   beta: float = 0.1) -> GateReport:
    """Run every gate on ``prompts`` (held-out) and the held-out pairs; see the module docstring."""
    report = GateReport()
    prompts = prompts[: config.n_prompts]
    if not prompts or config.samples_per_prompt < 1:  # every rate below divides by the number of samples
        raise DataError("no held-out prompts to run the gates on (or samples_per_prompt < 1); "
                        "a version cannot be judged without them")
    new, old = sample_both(model, tokenizer, prompts, config)
    k = config.samples_per_prompt
    if scorer is None:
        report.results.append(GateResult("reward_win_rate", False, detail="no reward model loaded", skipped=True))
    else:
        win, mean_new, mean_old = reward_win_rate(scorer, prompts, new.texts, old.texts, k)
        report.metrics.update(reward_win_rate=win, reward_mean=mean_new, parent_reward_mean=mean_old)
        report.results.append(_at_least("reward_win_rate", win, config.min_reward_win_rate, strict=True))
    human = [p for p in heldout if p.source == "human"]
    if human:
        pm = preference_metrics(model, tokenizer, human, beta)
        report.metrics["human_pairs"] = pm
        report.results.append(_at_least("human_pairs", pm["implicit_reward_accuracy"], config.min_human_accuracy, strict=True))
    else:
        report.results.append(GateResult("human_pairs", False, detail="no held-out human pairs", skipped=True))
    kls = sequence_kl(model, new)
    report.metrics["kl"] = sum(kls) / len(kls)
    report.results.append(_at_most("kl", report.metrics["kl"], config.max_kl))
    skipped, rates = _safety(settings, new.texts, old.texts)
    if skipped is not None:
        report.results.append(skipped)
    else:
        report.metrics.update(rates)
        rise = rates["block_rate"] - rates["parent_block_rate"]
        report.results.append(_at_most("safety", rise, config.max_block_rate_increase))
    distinct = len(set(new.texts)) / max(1, len(new.texts))
    words = sum(len(t.split()) for t in new.texts) / max(1, len(new.texts))
    report.metrics.update(distinct_ratio=distinct, mean_words=words,
                          parent_mean_words=sum(len(t.split()) for t in old.texts) / max(1, len(old.texts)))
    on_topic = _at_least("on_topic", distinct, config.min_distinct_ratio)
    if not config.min_mean_words <= words <= config.max_mean_words:
        on_topic = GateResult("on_topic", False, words, config.max_mean_words,
                              f"mean length {words:.1f} words outside [{config.min_mean_words}, {config.max_mean_words}]")
    else:
        on_topic.detail = f"distinct ratio {on_topic.detail}; mean {words:.1f} words"
    report.results.append(on_topic)
    report.metrics["samples"] = {"new": new.texts[:8], "parent": old.texts[:8]}
    report.new_texts, report.parent_texts = new.texts, old.texts
    return report
