"""`flywheel train reward`: Bradley-Terry reward model from preference pairs.

Two kinds, one result format (``var/reward/<id>/`` + manifest, see policies.reward.store):
- ``encoder``: an MLP head on the frozen offline sentence encoder (fast to train and to serve);
- ``hf``: TRL's ``RewardTrainer`` on a sequence-classification copy of a causal LM (default: the seed
  policy, whose tokenizer and chat template it keeps).
Reports held-out pairwise accuracy; ``activate=True`` points ``var/reward/ACTIVE`` at the result.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from policies.reward import activate as activate_version
from policies.reward import load_scorer, read_manifest, write_manifest
from trainer.artifacts import run_name
from trainer.common import (DataError, RichProgressCallback, check_resume, config_dict, console, knob, last_checkpoint,
                            naming_knobs, progress, record_inputs, save_config, seed_everything)
from trainer.data import Pair, PairSplit, check_lengths, check_tokenizer, load_split, resample

if TYPE_CHECKING:
    from flywheel.settings import Settings


@dataclass
class RewardConfig:
    """Every knob of one reward-model run (saved as config.json with it)."""

    data: Path = knob(Path("prefs.jsonl"), "preference pairs (feedback export 'dpo' format)")
    heldout: Path | None = knob(None, "held-out pairs; unset = <data>.heldout.jsonl if present, else a hash split")
    kind: Literal["encoder", "hf"] = knob("encoder", "encoder: head on the frozen MiniLM; hf: RewardTrainer")
    base_model: Path | None = knob(None, "hf kind: causal LM to start from; unset = the seed policy")
    source_weights: dict[str, float] = knob({"rlaif": 0.5}, "per-source weight (pairs labelled by a model count less)")
    heldout_fraction: float = knob(0.1, "share held out when there is no held-out file")
    # encoder head
    hidden: int = knob(32, "encoder kind: hidden units of the head (0 = linear)")
    head_epochs: int = knob(300, "encoder kind: full-batch epochs")
    head_learning_rate: float = knob(1e-2, "encoder kind: AdamW learning rate")
    head_weight_decay: float = knob(1e-3, "encoder kind: AdamW weight decay")
    # hf
    epochs: float = knob(2.0, "hf kind: passes over the training pairs")
    learning_rate: float = knob(5e-4, "hf kind: AdamW learning rate (full fine-tune of a tiny model)")
    batch_size: int = knob(16, "hf kind: pairs per step")
    max_length: int = knob(512, "hf kind: longest conversation in tokens (longer pairs are refused)")
    save_steps: int = knob(20, "hf kind: checkpoint every N steps (resume point)")
    # run
    seed: int = knob(0, "random seed")
    threads: int | None = knob(None, "torch threads; unset = FLYWHEEL_TRAINER_THREADS")
    run_name: str | None = knob(None, "version id; unset = derived from data + config (re-running resumes)")
    stop_after: int | None = knob(None, "stop after N steps/epochs, keeping the checkpoint (tests/interrupts)")
    quiet: bool = knob(False, "no progress bars")


@dataclass
class RewardRun:
    version: str
    path: Path
    metrics: dict[str, Any]
    activated: bool
    finished: bool = True


def train_reward(config: RewardConfig, settings: Settings, activate: bool = False, encoder: Any = None) -> RewardRun:
    """Train (or resume, or reuse) a reward model and optionally make it the gateway's scorer."""
    config = dataclasses.replace(config, threads=config.threads or settings.trainer_threads)  # recorded in the manifest
    seed_everything(config.seed, config.threads)
    split = load_split(config.data, config.heldout, config.heldout_fraction, config.seed)
    version = config.run_name or run_name(f"reward-{config.kind}", split.sha256, naming_knobs(config))
    out = settings.reward_dir / version
    finished = read_manifest(out)
    check_resume(out, config, split.sha256, (finished or {}).get("data_sha256"))  # before any reuse
    if finished is not None:
        console.print(f"reward model {version} already trained at {out}; reusing it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.json")
        record_inputs(out, config, split.sha256)
        train = resample(split.train, config.source_weights, config.seed)
        trainer = _train_encoder if config.kind == "encoder" else _train_hf
        metrics = trainer(config, settings, split, train, out, encoder)
        if metrics is None:
            return RewardRun(version, out, {}, False, finished=False)
        metrics.update(train_pairs=len(split.train), resampled_pairs=len(train), heldout_pairs=len(split.heldout),
                       sources=split.sources(), dropped=split.dropped)
        write_manifest(out, kind=config.kind, data_sha256=split.sha256, data=str(config.data), config=config_dict(config),
                       metrics=metrics, max_length=config.max_length)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # after the manifest: until then it is the resume point
    manifest = read_manifest(out) or {}
    if activate:
        activate_version(settings, version)
    return RewardRun(version, out, manifest.get("metrics", {}), activate)


def _train_encoder(config: RewardConfig, settings: Settings, split: PairSplit, train: list[Pair], out: Path,
                   encoder: Any) -> dict[str, Any] | None:
    from gateway.grounding.encoder import Encoder
    from policies.reward.encoder_head import EncoderHeadScorer, pair_features, pairwise_accuracy
    from policies.reward.fit import HeadFitConfig, fit_head

    encoder = encoder or Encoder.from_settings(settings)
    console.print(f"encoding {len(train)} training and {len(split.heldout)} held-out pairs with {encoder.name}")
    xc, xr = pair_features(encoder, [p.prompt for p in train], [p.chosen for p in train], [p.rejected for p in train])
    fit = HeadFitConfig(hidden=config.hidden, epochs=config.head_epochs, learning_rate=config.head_learning_rate,
                        weight_decay=config.head_weight_decay, seed=config.seed)
    with progress(config.quiet) as bar:
        task = bar.add_task("reward head", total=fit.epochs, info="")
        head = fit_head(xc, xr, torch.ones(len(train)), fit, out / "checkpoints" / "head.pt",
                        on_epoch=lambda e, loss: bar.update(task, completed=e, info=f"loss={loss:.3f}"),
                        stop_after=config.stop_after)
    if config.stop_after is not None and config.stop_after < fit.epochs:
        return None
    hc, hr = pair_features(encoder, [p.prompt for p in split.heldout], [p.chosen for p in split.heldout],
                           [p.rejected for p in split.heldout])
    EncoderHeadScorer(encoder, head, out.name).save(out)
    return {"train_accuracy": pairwise_accuracy(head, xc, xr), "heldout_accuracy": pairwise_accuracy(head, hc, hr),
            "encoder": encoder.name}


def _train_hf(config: RewardConfig, settings: Settings, split: PairSplit, train: list[Pair], out: Path,
              encoder: Any) -> dict[str, Any] | None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    from transformers.trainer_callback import PrinterCallback

    from trainer.common import StopAfterSteps

    base = config.base_model or settings.seed_model_dir
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, local_files_only=True,
                                                               dtype=torch.float32)
    check_tokenizer(tokenizer, model.config)
    model.config.pad_token_id = tokenizer.pad_token_id
    check_lengths(train + split.heldout, tokenizer, config.max_length, "reward data")
    args = TRLRewardConfig(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs, learning_rate=config.learning_rate, lr_scheduler_type="linear",
        warmup_steps=0, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
        logging_steps=5, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2, seed=config.seed,
        data_seed=config.seed, disable_tqdm=True, max_length=config.max_length, dataloader_num_workers=0,
    )
    callbacks: list[Any] = [RichProgressCallback("reward model (hf)", config.quiet)]
    if config.stop_after is not None:
        callbacks.append(StopAfterSteps(config.stop_after))
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list([p.to_dpo() for p in train]), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # our rich bar shows progress; no raw dicts on stdout
    resume = last_checkpoint(out / "checkpoints")
    if resume is not None:
        console.print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if config.stop_after is not None and trainer.state.global_step < trainer.state.max_steps:
        return None
    trainer.model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")  # checkpoints stay until train_reward has written the manifest
    scorer = load_scorer(out / "model")
    return {"heldout_accuracy": scorer_accuracy(scorer, split.heldout), "steps": trainer.state.global_step,
            "train_loss": trainer.state.log_history[-1].get("train_loss") if trainer.state.log_history else None}


def scorer_accuracy(scorer: Any, pairs: list[Pair]) -> float:
    """Share of pairs where the scorer ranks chosen above rejected (ties count half)."""
    if not pairs:
        raise DataError("no held-out pairs to measure accuracy on")
    total = 0.0
    for pair in pairs:
        c, r = scorer.score(pair.prompt, [pair.chosen, pair.rejected])
        total += 1.0 if c > r else 0.5 if c == r else 0.0
    return total / len(pairs)

