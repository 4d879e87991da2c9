"""`flywheel train dpo`: TRL ``DPOTrainer`` with a PEFT LoRA adapter on the current stable policy.

The frozen base (the adapter switched off) is the reference, so no second model is held. By default
the loss is ``["sigmoid", "sft"]``: plain sigmoid DPO on a model this small lowers the likelihood of
the chosen answers too (likelihood displacement, measured in docs ENVIRONMENT.md); the SFT term on
the chosen side keeps them rising. Pairs the reward model labelled (source ``rlaif``) count with their
own weight. CPU: no bf16, no gradient checkpointing. The run is judged by what the policy does on
held-out data — chosen log-likelihood vs the parent, reward-model win rate of sampled answers — and
by the gates (trainer.gates) before the version may ship.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.artifacts import read_manifest, run_name
from trainer.common import (RichProgressCallback, StopAfterSteps, check_resume, console, knob, last_checkpoint,
                            naming_knobs, record_inputs, save_config, seed_everything)
from trainer.data import check_lengths, load_split, resample
from trainer.finish import PolicyRun, check_lora, finish_run, heldout_prompts, resolve_scorer
from trainer.gates import GateConfig, preference_metrics
from trainer.policy_ops import LORA_TARGETS, context_length, load_policy

if TYPE_CHECKING:
    from flywheel.settings import Settings
    from policies.reward import RewardScorer


@dataclass
class DPOConfig:
    """Every knob of one DPO run (saved as config.json and in the manifest)."""

    data: Path = knob(Path("prefs.jsonl"), "preference pairs (feedback export 'dpo' format)")
    heldout: Path | None = knob(None, "held-out pairs; unset = <data>.heldout.jsonl if present, else a hash split")
    policy: Path | None = knob(None, "policy to start from (the stable): a checkpoint or a version dir, LoRA included; unset = the seed")
    parent: str = knob("seed", "registry id of that policy (the new version's parent)")
    reward_model: Path | None = knob(None, "reward model for the gates; unset = the ACTIVE one")
    beta: float = knob(0.1, "DPO temperature: how far from the reference the policy may move")
    loss_type: list[str] = knob(["sigmoid", "sft"], "TRL loss terms (sigmoid alone displaces chosen likelihood here)")
    loss_weights: list[float] = knob([1.0, 1.0], "weight of each loss term")
    learning_rate: float = knob(3e-4, "AdamW learning rate (LoRA range 1e-4..5e-4)")
    epochs: float = knob(1.0, "passes over the training pairs")
    batch_size: int = knob(8, "pairs per optimiser step")
    max_length: int = knob(256, "longest prompt + answer in tokens (longer pairs are refused)")
    lora_r: int = knob(8, "LoRA rank (<= vLLM --max-lora-rank)")
    lora_alpha: int = knob(16, "LoRA scale numerator")
    target_modules: list[str] = knob(list(LORA_TARGETS), "modules that get LoRA (Llama names vLLM supports)")
    source_weights: dict[str, float] = knob({"rlaif": 0.5}, "per-source weight: reward-model-labelled pairs count less")
    heldout_fraction: float = knob(0.1, "share held out when there is no held-out file")
    precompute_ref: bool = knob(True, "reference log-probs in one no-grad pass up front (~25% faster on CPU)")
    save_steps: int = knob(25, "checkpoint every N steps (resume point)")
    seed: int = knob(0, "random seed (init, data order)")
    threads: int | None = knob(None, "torch threads; unset = FLYWHEEL_TRAINER_THREADS")
    merge: bool = knob(False, "write a merged full checkpoint (needs its own vLLM) instead of an adapter")
    run_name: str | None = knob(None, "version directory name; unset = derived from data + config (re-running resumes)")
    stop_after: int | None = knob(None, "stop after N steps keeping the checkpoint (simulates an interrupt)")
    quiet: bool = knob(False, "no progress bars")


def train_dpo(config: DPOConfig, settings: Settings, gates: GateConfig | None = None,
              scorer: RewardScorer | None = None, callbacks: list[Any] | None = None) -> PolicyRun:
    """Train, gate and package one DPO version under ``settings.versions_dir``; resumes if interrupted."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    gates = gates or GateConfig()
    config = dataclasses.replace(config, threads=config.threads or settings.trainer_threads)  # recorded in the manifest
    seed_everything(config.seed, config.threads)
    policy_dir = config.policy or settings.seed_model_dir
    check_lora(config.lora_r, config.target_modules, settings, None if config.merge else policy_dir)
    split = load_split(config.data, config.heldout, config.heldout_fraction, config.seed)
    out = settings.versions_dir / (config.run_name or run_name("dpo", split.sha256, naming_knobs(config)))
    finished = read_manifest(out)
    check_resume(out, config, split.sha256, (finished or {}).get("data", {}).get("sha256"))  # before any reuse
    if finished is not None:
        console.print(f"{out.name} is already finished; reusing it (pass --run-name to train another)")
        return PolicyRun(out, True, finished)
    model, tokenizer = load_policy(policy_dir)
    check_lengths(split.train + split.heldout, tokenizer, min(config.max_length, context_length(policy_dir)),
                  "preference data")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    record_inputs(out, config, split.sha256)
    train = resample(split.train, config.source_weights, config.seed)
    args = TRLDPOConfig(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs, learning_rate=config.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
        beta=config.beta, loss_type=list(config.loss_type), loss_weights=list(config.loss_weights),
        max_length=config.max_length, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        report_to=[], logging_steps=5, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        seed=config.seed, data_seed=config.seed, disable_tqdm=True, dataloader_num_workers=0,
        precompute_ref_log_probs=config.precompute_ref, precompute_ref_batch_size=64,
    )
    peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                             target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    bars: list[Any] = [RichProgressCallback(f"DPO {out.name}", config.quiet)]
    if config.stop_after is not None:
        bars.append(StopAfterSteps(config.stop_after))
    began = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=Dataset.from_list([p.to_dpo() for p in train]), callbacks=bars + (callbacks or []))
    trainer.remove_callback(PrinterCallback)
    resume = last_checkpoint(out / "checkpoints")
    if resume is not None:
        console.print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.state.global_step < trainer.state.max_steps:
        console.print(f"stopped at step {trainer.state.global_step}/{trainer.state.max_steps}; re-run to resume")
        return PolicyRun(out, False)
    train_wall_s = time.perf_counter() - began  # includes the reference pass, unlike TRL's train_runtime
    policy = trainer.model.eval()
    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step, "train_pairs": len(split.train), "resampled_pairs": len(train),
        "sources": split.sources(), "heldout": preference_metrics(policy, tokenizer, split.heldout, config.beta),
        "train_wall_s": train_wall_s,
    }
    return finish_run(
        out=out, algorithm="dpo", model=policy, tokenizer=tokenizer, config=config, settings=settings,
        scorer=resolve_scorer(settings, scorer, config.reward_model), prompts=heldout_prompts(split.heldout),
        heldout=split.heldout, gate_config=gates, metrics=metrics, merge=config.merge, beta=config.beta,
        parent={"id": config.parent, "path": str(Path(policy_dir).resolve())},
        data={"path": str(config.data), "sha256": split.sha256, "train": len(split.train), "heldout": len(split.heldout)},
    )
