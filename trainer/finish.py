"""The end of every policy run (DPO, PPO): gates on held-out prompts, then the version directory.

Shared so both algorithms ship the same way: the version is always written to disk (a failed gate is
evidence worth keeping), but only a version whose manifest says ``gates.passed`` can be registered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.artifacts import save_policy, write_manifest
from trainer.common import TrainError, config_dict, console
from trainer.data import Message, Pair
from trainer.gates import GateConfig, GateReport, evaluate_gates
from trainer.policy_ops import adapter_rank, lora_adapter

if TYPE_CHECKING:
    from flywheel.settings import Settings
    from policies.reward import RewardScorer

SUPPORTED_LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@dataclass
class PolicyRun:
    """What a policy command returns: where the version is, what it measured, whether it may ship."""

    path: Path
    finished: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    gates: GateReport | None = None

    @property
    def passed(self) -> bool:
        return bool(self.manifest.get("gates", {}).get("passed"))

    def failure_lines(self) -> list[str]:
        results = self.manifest.get("gates", {}).get("results", [])
        return [f"gate {r['name']} failed: {r['detail']}" for r in results if not (r["passed"] or r["skipped"])]


def check_lora(rank: int, targets: list[str], settings: Settings, policy: Path | None = None) -> None:
    """Only adapters the shared vLLM can load: rank <= its max LoRA rank (counting the rank of a LoRA
    parent, which the child's adapter absorbs), Llama target modules."""
    parent = lora_adapter(policy) if policy is not None else None
    total = rank + (adapter_rank(parent) if parent is not None else 0)
    if total > settings.vllm_max_lora_rank:
        on_parent = f" (rank {rank} on a rank-{total - rank} LoRA parent)" if parent is not None else ""
        raise TrainError(f"LoRA rank {total}{on_parent} > vLLM's --max-lora-rank {settings.vllm_max_lora_rank}; "
                         "the adapter could not be served (lower --lora-r, raise FLYWHEEL_VLLM_MAX_LORA_RANK or --merge)")
    unknown = set(targets) - SUPPORTED_LORA_TARGETS
    if unknown:
        raise TrainError(f"vLLM cannot serve LoRA on {sorted(unknown)}; use {sorted(SUPPORTED_LORA_TARGETS)}")


def heldout_prompts(pairs: list[Pair]) -> list[list[Message]]:
    """Distinct prompts of the held-out pairs, in file order."""
    seen: dict[str, list[Message]] = {}
    for pair in pairs:
        seen.setdefault(json.dumps(pair.prompt, sort_keys=True), pair.prompt)
    return list(seen.values())


def resolve_scorer(settings: Settings, scorer: RewardScorer | None, reward_path: Path | None) -> RewardScorer:
    from policies.reward import load_active_scorer, load_scorer

    if scorer is not None:
        return scorer
    return load_scorer(reward_path) if reward_path else load_active_scorer(settings)


def finish_run(*, out: Path, algorithm: str, model, tokenizer, config: Any, settings: Settings,  # type: ignore[no-untyped-def]
               scorer: RewardScorer, prompts: list[list[Message]], heldout: list[Pair], gate_config: GateConfig,
               metrics: dict[str, Any], parent: dict[str, Any], data: dict[str, Any], merge: bool,
               beta: float = 0.1) -> PolicyRun:
    """Gate the trained model against its parent, write the version and its manifest."""
    model.eval()
    console.print(f"gates: sampling {min(len(prompts), gate_config.n_prompts)} held-out prompts x "
                  f"{gate_config.samples_per_prompt} for new and parent")
    report = evaluate_gates(model, tokenizer, prompts, scorer, heldout, gate_config, settings, beta)
    kind, artifact = save_policy(model, tokenizer, out, merge, stacked_on=lora_adapter(parent["path"]))
    (out / "metrics.json").write_text(json.dumps({**metrics, "gates": report.metrics}, indent=2, default=str))
    manifest = write_manifest(
        out, algorithm=algorithm, kind=kind, artifact=artifact.relative_to(out).as_posix(), parent=parent,
        data=data, config=config_dict(config), gate_config=config_dict(gate_config),
        reward_model=getattr(scorer, "version", None), metrics=metrics, gates=report.to_dict(),
        served_by="the shared vLLM (runtime LoRA)" if kind == "lora" else "its own vLLM server (register with --endpoint)",
    )
    for result in report.results:
        console.print(("  [green]" if result.passed else "  [yellow]" if result.skipped else "  [red]") + result.line(),
                      highlight=False)
    return PolicyRun(out, True, manifest, report)
