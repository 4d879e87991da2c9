"""`flywheel bench trainer`: wall time and tokens/s of the trainer on this machine's cores.

Measures, on the seed policy (default preset: the real one, built first if missing): reward-model
training (encoder head and TRL RewardTrainer) on N Kestrel preference pairs, DPO (TRL, LoRA,
sigmoid+sft) on N pairs for one epoch, one PPO iteration on 64 prompts, and the reward scorer's
latency for 4 and 8 candidates. Tokens are policy-tokenizer tokens of the text each step processes
(prompt + chosen + rejected for pairs; prompt + sampled answer for PPO rollouts). Target: DPO on
1,000 pairs in <= 3 minutes. Written to the ``trainer`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from flywheel.bench.report import provenance, write_section

DPO_TARGET_S = 180.0


def _pairs(n: int, seed0: int) -> list[dict[str, Any]]:
    from policies.reward.shipped import generate

    rows: list[dict[str, Any]] = []
    seed = seed0
    while len(rows) < n:
        rows += generate(seed=seed)
        seed += 1
    return rows[:n]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pair_tokens(tokenizer, rows: list[dict[str, Any]]) -> int:  # type: ignore[no-untyped-def]
    from trainer.policy_ops import prompt_ids

    total = 0
    for r in rows:
        p = len(prompt_ids(tokenizer, r["prompt"]))
        total += 2 * p + sum(len(tokenizer(r[k][-1]["content"], add_special_tokens=False)["input_ids"]) + 1
                             for k in ("chosen", "rejected"))
    return total


def _seed_dir(settings: Any, preset: str) -> Path:
    from policies.seed.build import SeedConfig, ensure_seed_model

    if preset == "default":
        return ensure_seed_model(settings.seed_model_dir, SeedConfig.default())
    return ensure_seed_model(settings.models_dir / "seed-fixture", SeedConfig.fixture())


def run(
    preset: str = typer.Option("default", help="seed policy preset: default (the real seed) | fixture"),
    pairs: int = typer.Option(1000, help="preference pairs for reward-model training and DPO"),
    ppo_prompts: int = typer.Option(64, help="prompts in the PPO iteration"),
    ppo_samples: int = typer.Option(4, help="answers sampled per prompt in the PPO iteration"),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="page whose `trainer` section is rewritten"),
    write: bool = typer.Option(True, "--write/--no-write", help="write the section to --out"),
) -> None:
    """Reward model, DPO and PPO wall time and tokens/s on the seed policy."""
    from flywheel.settings import Settings
    from gateway.grounding.encoder import Encoder
    from policies.reward import load_scorer
    from trainer.dpo import DPOConfig, train_dpo
    from trainer.gates import GateConfig
    from trainer.policy_ops import load_policy
    from trainer.ppo import PPOConfig, train_ppo
    from trainer.reward import RewardConfig, train_reward

    console = Console()
    base = Settings()
    seed_dir = _seed_dir(base, preset)
    work = base.var_dir.resolve() / "bench" / "trainer"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = base.model_copy(update={"var_dir": work / "var", "seed_model_path": seed_dir})
    rows = _pairs(pairs, seed0=100)
    data = _write(work / "prefs.jsonl", rows)
    _write(work / "prefs.heldout.jsonl", _pairs(100, seed0=10))
    _, tokenizer = load_policy(seed_dir)
    tokens = _pair_tokens(tokenizer, rows)
    encoder = Encoder.from_settings(base)
    results: list[tuple[str, str, float, float | None, float | None, str]] = []

    for kind in ("encoder", "hf"):
        console.print(f"[bold]reward model ({kind})[/] on {pairs} pairs")
        t0 = time.perf_counter()
        reward = train_reward(RewardConfig(data=data, kind=kind, epochs=1.0, quiet=True), settings, encoder=encoder)  # type: ignore[arg-type]
        wall = time.perf_counter() - t0
        results.append((f"reward model ({kind})", f"{pairs} pairs, 1 pass", wall, None, tokens / wall,
                        f"held-out accuracy {reward.metrics['heldout_accuracy']:.3f}"))
        if kind == "encoder":
            scorer = load_scorer(reward.path, encoder)
    latency = _scoring_latency(scorer)

    console.print(f"[bold]DPO[/] on {pairs} pairs")
    gates = GateConfig(n_prompts=16, samples_per_prompt=2)
    t0 = time.perf_counter()
    dpo = train_dpo(DPOConfig(data=data, epochs=1.0, batch_size=8, max_length=256, quiet=True), settings, gates,
                    scorer=scorer)
    wall = time.perf_counter() - t0
    train_s = dpo.manifest["metrics"].get("train_wall_s") or wall
    held = dpo.manifest["metrics"]["heldout"]
    results.append(("DPO (TRL, LoRA r8, sigmoid+sft)", f"{pairs} pairs, 1 epoch, batch 8", wall, train_s,
                    tokens / train_s, f"held-out implicit acc {held['implicit_reward_accuracy']:.3f}, chosen up "
                    f"{held['chosen_logp_up_rate']:.0%}; gates {'pass' if dpo.passed else 'fail'}"))

    console.print(f"[bold]PPO[/] one iteration on {ppo_prompts} prompts x {ppo_samples}")
    prompt_rows = [{"prompt": r["prompt"]} for r in _pairs(max(4 * ppo_prompts, 300), seed0=500)]
    prompts = _write(work / "prompts.jsonl", prompt_rows)
    t0 = time.perf_counter()
    ppo = train_ppo(PPOConfig(prompts=prompts, iterations=1, batch_prompts=ppo_prompts, samples_per_prompt=ppo_samples,
                              quiet=True), settings, GateConfig(n_prompts=8, samples_per_prompt=2), scorer=scorer)
    wall = time.perf_counter() - t0
    it = ppo.manifest["metrics"]["last"]
    results.append(("PPO iteration (rollout + 4 epochs)", f"{ppo_prompts} prompts x {ppo_samples} answers",
                    wall, it["seconds"], it["tokens"] / it["seconds"],
                    f"reward {it['reward']:.2f}, KL {it['kl']:.2f}, clip frac {it['clip_frac']:.2f}"))

    dpo_met = train_s <= DPO_TARGET_S
    lines = [
        "## Trainer", "", provenance(), f"Seed policy: `{preset}` preset ({_params(seed_dir)} parameters), torch threads "
        f"{settings.trainer_threads}. Wall = whole command step (data checks, training, gates, packaging); "
        "train = the optimisation loop alone.", "",
        "| step | work | wall s | train s | tokens/s (train) | result |", "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, what, w, t, tps, res in results:
        lines.append(f"| {name} | {what} | {w:.1f} | {'' if t is None else f'{t:.1f}'} | "
                     f"{'' if tps is None else f'{tps:,.0f}'} | {res} |")
    lines += ["", f"DPO target (1,000 pairs <= {DPO_TARGET_S:.0f} s of training): "
              f"{'met' if dpo_met else 'missed'} ({train_s:.1f} s).", "",
              f"Reward scoring latency (encoder head, one call per request): 4 candidates p50 "
              f"{latency[4]:.1f} ms, 8 candidates p50 {latency[8]:.1f} ms, encoder cache cleared before each call "
              "(the MiniLM forward pass on 1 thread is nearly all of it; the head is ~0.1 ms)."]
    markdown = "\n".join(lines)
    console.print(markdown)
    if write:
        write_section(out, "trainer", markdown)
        console.print(f"wrote the trainer section of {out}")


def _params(model_dir: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as fh:
        total = sum(_prod(fh.get_slice(key).get_shape()) for key in fh.keys())
    return f"{total / 1e6:.1f} M"


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _scoring_latency(scorer: Any) -> dict[int, float]:
    prompt = [{"role": "user", "content": "How much is the Personal plan?"}]
    answers = [f"The Personal plan costs ${i} per month and includes 1 TB of storage for up to 3 devices." for i in range(8)]
    out: dict[int, float] = {}
    clear = getattr(getattr(scorer, "encoder", None), "clear_cache", lambda: None)
    for n in (4, 8):
        scorer.score(prompt, answers[:n])
        times = []
        for _ in range(30):
            clear()  # real candidates are new text every request: measure the encoder cold
            t0 = time.perf_counter()
            scorer.score(prompt, answers[:n])
            times.append(time.perf_counter() - t0)
        out[n] = statistics.median(times) * 1000
    return out
