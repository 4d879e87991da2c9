"""`flywheel train ppo`: InstructGPT-style RL of the policy against the learned reward model.

TRL 1.16 has no PPOTrainer any more, so this is a small loop of our own on torch, transformers and
PEFT (the maths is in trainer.ppo_core). Each iteration: sample answers to a batch of prompts with the
LoRA policy; score them with the reward model; per-token reward = -kl_coef * (log pi - log pi_ref),
plus the score on the last token, where pi_ref is the frozen base (the adapter switched off); a value
head on the policy's last hidden state; GAE; several epochs of the clipped surrogate + clipped value
loss over minibatches; a fixed or adaptive KL coefficient. Logged per iteration: reward, KL, entropy,
value loss, clip fraction. A checkpoint after every iteration makes a re-run resume where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.artifacts import read_manifest, run_name
from trainer.common import (DataError, ResumeMismatch, check_resume, console, knob, naming_knobs, progress,
                            record_inputs, save_config, seed_everything)
from trainer.data import Message, chat_messages
from trainer.finish import PolicyRun, check_lora, finish_run, resolve_scorer
from trainer.gates import GateConfig
from trainer.policy_ops import LORA_TARGETS, context_length, load_policy, parent_of, prompt_ids, sample
from trainer.ppo_core import KLController, ValueHead, forward, gae, masked_mean, policy_loss, value_loss, whiten

if TYPE_CHECKING:
    from flywheel.settings import Settings
    from policies.reward import RewardScorer


@dataclass
class PPOConfig:
    """Every knob of one PPO run (saved as config.json and in the manifest)."""

    prompts: Path = knob(Path("prompts.jsonl"), "JSONL of {'prompt': [messages]} (preference rows work too)")
    heldout_fraction: float = knob(0.15, "share of prompts kept for the gates")
    policy: Path | None = knob(None, "policy to start from (the stable): a checkpoint or a version dir, LoRA included; unset = the seed")
    parent: str = knob("seed", "registry id of that policy (the new version's parent)")
    reward_model: Path | None = knob(None, "reward model to optimise; unset = the ACTIVE one")
    iterations: int = knob(20, "rollout + update rounds")
    batch_prompts: int = knob(16, "prompts per iteration")
    samples_per_prompt: int = knob(4, "answers sampled per prompt")
    max_new_tokens: int = knob(40, "longest sampled answer")
    temperature: float = knob(1.0, "sampling temperature of rollouts")
    ppo_epochs: int = knob(4, "optimisation passes over each batch")
    minibatch_size: int = knob(16, "answers per gradient step")
    learning_rate: float = knob(5e-4, "AdamW learning rate (LoRA and value head)")
    clip_range: float = knob(0.2, "PPO ratio clip")
    clip_range_value: float = knob(0.2, "value-function clip")
    vf_coef: float = knob(0.5, "value loss weight")
    ent_coef: float = knob(0.0, "entropy bonus weight")
    gamma: float = knob(1.0, "discount")
    lam: float = knob(0.95, "GAE lambda")
    kl_coef: float = knob(0.05, "initial KL penalty coefficient")
    target_kl: float | None = knob(4.0, "adaptive KL target in nats per answer; None = fixed coefficient")
    kl_horizon: int = knob(2000, "adaptive KL horizon (answers)")
    max_grad_norm: float = knob(1.0, "gradient clip")
    lora_r: int = knob(8, "LoRA rank (<= vLLM --max-lora-rank)")
    lora_alpha: int = knob(16, "LoRA scale numerator")
    target_modules: list[str] = knob(list(LORA_TARGETS), "modules that get LoRA")
    seed: int = knob(0, "random seed")
    threads: int | None = knob(None, "torch threads; unset = FLYWHEEL_TRAINER_THREADS")
    merge: bool = knob(False, "write a merged full checkpoint instead of an adapter")
    run_name: str | None = knob(None, "version directory name; unset = derived from prompts + config")
    stop_after: int | None = knob(None, "stop after N iterations keeping the checkpoint")
    quiet: bool = knob(False, "no progress bars")


def read_prompts(path: Path) -> list[list[Message]]:
    """Distinct prompts of a JSONL file (``prompt`` or ``messages`` key, or a bare string)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    seen: dict[str, list[Message]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc})") from exc
        if isinstance(row, (str, list)):
            prompt = row
        elif isinstance(row, dict):
            prompt = row.get("prompt", row.get("messages"))
        else:
            raise DataError(f"{path}:{n}: a row must be an object with a 'prompt', a string or a list of "
                            f"chat messages, not {type(row).__name__}")
        prompt = chat_messages(prompt, f"{path}:{n}")
        seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    if len(seen) < 2:
        raise DataError(f"{path}: {len(seen)} distinct prompts; PPO needs at least 2 (some are held out)")
    return list(seen.values())


def _split(prompts: list[list[Message]], fraction: float) -> tuple[list[list[Message]], list[list[Message]]]:
    key = [int(hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:8], 16) for p in prompts]
    held = [p for p, k in zip(prompts, key, strict=True) if k < fraction * 2**32]
    train = [p for p, k in zip(prompts, key, strict=True) if k >= fraction * 2**32]
    if not held or not train:
        n = max(1, round(len(prompts) * fraction))
        held, train = prompts[:n], prompts[n:]
    return train, held


def train_ppo(config: PPOConfig, settings: Settings, gates: GateConfig | None = None,
              scorer: RewardScorer | None = None) -> PolicyRun:
    """Train, gate and package one PPO version; re-running with the same inputs resumes it."""
    from peft import LoraConfig, get_peft_model

    gates = gates or GateConfig()
    config = dataclasses.replace(config, threads=config.threads or settings.trainer_threads)  # recorded in the manifest
    seed_everything(config.seed, config.threads)
    policy_dir = config.policy or settings.seed_model_dir
    check_lora(config.lora_r, config.target_modules, settings, None if config.merge else policy_dir)
    prompts = read_prompts(config.prompts)
    data_sha = hashlib.sha256(Path(config.prompts).read_bytes()).hexdigest()
    out = settings.versions_dir / (config.run_name or run_name("ppo", data_sha, naming_knobs(config)))
    finished = read_manifest(out)
    check_resume(out, config, data_sha, (finished or {}).get("data", {}).get("sha256"))  # before any reuse
    if finished is not None:
        console.print(f"{out.name} is already finished; reusing it (pass --run-name to train another)")
        return PolicyRun(out, True, finished)
    base, tokenizer = load_policy(policy_dir)
    longest = max(len(prompt_ids(tokenizer, p)) for p in prompts)
    if longest + config.max_new_tokens > context_length(policy_dir):
        raise DataError(f"a prompt of {longest} tokens + {config.max_new_tokens} new ones exceeds the context "
                        f"({context_length(policy_dir)})")
    train_prompts, held_prompts = _split(prompts, config.heldout_fraction)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    record_inputs(out, config, data_sha)
    scorer = resolve_scorer(settings, scorer, config.reward_model)
    model = get_peft_model(base, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                            target_modules=list(config.target_modules), task_type="CAUSAL_LM"))
    vhead = ValueHead(base.config.hidden_size)
    params = [p for p in model.parameters() if p.requires_grad] + list(vhead.parameters())
    opt = torch.optim.AdamW(params, lr=config.learning_rate)
    kl_ctl = KLController(config.kl_coef, config.target_kl, config.kl_horizon)
    ckpt, log_path = out / "checkpoints" / "ppo.pt", out / "ppo_log.jsonl"
    start = _load_checkpoint(ckpt, model, vhead, opt, kl_ctl)
    if start:
        console.print(f"resuming from iteration {start}")
    with progress(config.quiet) as bar:
        task = bar.add_task(f"PPO {out.name}", total=config.iterations, completed=start, info="")
        for it in range(start, config.iterations):
            began = time.perf_counter()
            stats = ppo_iteration(model, vhead, opt, kl_ctl, tokenizer, scorer, train_prompts, config, it)
            stats["seconds"] = time.perf_counter() - began
            with log_path.open("a") as fh:
                fh.write(json.dumps({"iteration": it + 1, **stats}) + "\n")
            _save_checkpoint(ckpt, model, vhead, opt, kl_ctl, it + 1)
            bar.update(task, completed=it + 1, info=" ".join(
                f"{k}={stats[k]:.3g}" for k in ("reward", "kl", "entropy", "value_loss", "clip_frac")))
            if config.stop_after is not None and it + 1 >= config.stop_after and it + 1 < config.iterations:
                return PolicyRun(out, False)
    history = [json.loads(line) for line in log_path.read_text().splitlines()]
    metrics = {"iterations": config.iterations, "first": history[0], "last": history[-1],
               "train_prompts": len(train_prompts), "heldout_prompts": len(held_prompts)}
    torch.save(vhead.state_dict(), out / "value_head.pt")
    return finish_run(
        out=out, algorithm="ppo", model=model, tokenizer=tokenizer, config=config, settings=settings, scorer=scorer,
        prompts=held_prompts, heldout=[], gate_config=gates, metrics=metrics, merge=config.merge,
        parent={"id": config.parent, "path": str(Path(policy_dir).resolve())},
        data={"path": str(config.prompts), "sha256": data_sha, "train": len(train_prompts), "heldout": len(held_prompts)},
    )


def ppo_iteration(model, vhead: ValueHead, opt: torch.optim.Optimizer, kl_ctl: KLController, tokenizer,  # type: ignore[no-untyped-def]
                  scorer: RewardScorer, prompts: list[list[Message]], config: PPOConfig, it: int) -> dict[str, float]:
    """One rollout + update round; returns the logged statistics."""
    rng = random.Random(config.seed * 100_003 + it)
    batch = rng.sample(prompts, min(config.batch_prompts, len(prompts)))
    model.eval()
    s = sample(model, tokenizer, batch, n=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
               temperature=config.temperature, seed=config.seed * 100_003 + it)
    k = config.samples_per_prompt
    scores = torch.tensor([x for i, p in enumerate(batch) for x in scorer.score(p, s.texts[i * k:(i + 1) * k])])
    with torch.no_grad():
        old = forward(model, vhead, s.prompt_ids, s.answer_ids)
        with parent_of(model):
            ref = forward(model, None, s.prompt_ids, s.answer_ids)
    mask = old.mask
    kl_tok = (old.logprobs - ref.logprobs) * mask
    rewards = -kl_ctl.coef * kl_tok
    last = (mask.sum(1) - 1).long()
    rewards[torch.arange(len(last)), last] += scores
    adv, returns = gae(rewards, old.values, mask, config.gamma, config.lam)  # type: ignore[arg-type]
    adv = whiten(adv, mask)
    model.train()
    stats: dict[str, list[float]] = {"pg_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": [], "entropy": []}
    order = torch.Generator().manual_seed(config.seed * 7 + it)
    for _ in range(config.ppo_epochs):
        for idx in torch.randperm(len(s.texts), generator=order).split(config.minibatch_size):
            ids = idx.tolist()
            cur = forward(model, vhead, [s.prompt_ids[i] for i in ids], [s.answer_ids[i] for i in ids])
            width = cur.mask.shape[1]
            m = mask[idx][:, :width]
            pg, clip_frac, approx_kl = policy_loss(cur.logprobs, old.logprobs[idx][:, :width], adv[idx][:, :width], m,
                                                   config.clip_range)
            vl = value_loss(cur.values, old.values[idx][:, :width], returns[idx][:, :width], m, config.clip_range_value)  # type: ignore[arg-type, index]
            ent = masked_mean(cur.entropy, m)
            loss = pg + config.vf_coef * vl - config.ent_coef * ent
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.max_grad_norm)
            opt.step()
            for key, value in (("pg_loss", pg.item()), ("value_loss", vl.item()), ("clip_frac", clip_frac),
                               ("approx_kl", approx_kl), ("entropy", ent.item())):
                stats[key].append(value)
    kl_seq = float(kl_tok.sum(1).mean())
    kl_ctl.update(kl_seq, len(s.texts))
    means = {key: sum(v) / len(v) for key, v in stats.items()}
    return {"reward": float(scores.mean()), "kl": kl_seq, "kl_coef": kl_ctl.coef, "answers": len(s.texts),
            "answer_tokens": float(mask.sum(1).mean()),
            "tokens": float(sum(len(p) + len(a) for p, a in zip(s.prompt_ids, s.answer_ids, strict=True))), **means}


def _save_checkpoint(path: Path, model, vhead: ValueHead, opt: torch.optim.Optimizer, kl: KLController, it: int) -> None:  # type: ignore[no-untyped-def]
    from peft import get_peft_model_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"adapter": get_peft_model_state_dict(model), "value_head": vhead.state_dict(),
                "optimizer": opt.state_dict(), "kl_coef": kl.coef, "iteration": it}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, model, vhead: ValueHead, opt: torch.optim.Optimizer, kl: KLController) -> int:  # type: ignore[no-untyped-def]
    from peft import set_peft_model_state_dict

    if not path.is_file():
        return 0
    try:
        state = torch.load(path, weights_only=True)
        set_peft_model_state_dict(model, state["adapter"])
        vhead.load_state_dict(state["value_head"])
        opt.load_state_dict(state["optimizer"])
        kl.coef = float(state["kl_coef"])
        return int(state["iteration"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # a checkpoint of another shape, or damaged
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ResumeMismatch(f"{path} does not fit this run ({first}); pass another --run-name") from exc
