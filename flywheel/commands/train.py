"""`flywheel train reward|dpo|ppo`: the trainer's command line (the lead registers it as `train`).

Each command builds its config dataclass from the options, prints it, runs the entry function of
trainer/<algorithm>.py and reports what the run measured. Bad input ends with one line on stderr and
exit status 1; a policy version that fails a gate is kept on disk, not registered, each failing gate
is named with its shortfall, and the exit status is 3. Re-running the same command resumes an
interrupted run from its last checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

app = typer.Typer(help="Train reward models and new policy versions (DPO, PPO) from feedback.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

SourceWeight = Annotated[list[str] | None, typer.Option("--source-weight", help="SOURCE=W, e.g. rlaif=0.5 (repeatable)")]
Seed = Annotated[int, typer.Option("--seed", help="random seed")]
RunName = Annotated[str | None, typer.Option("--run-name", help="output name; default derived from data + knobs (re-run resumes)")]
Register = Annotated[bool, typer.Option("--register-canary", help="register the version through the operator API if it passes the gates")]
Weight = Annotated[float, typer.Option("--weight", min=0.0, max=1.0, help="canary share of traffic when registering")]
Url = Annotated[str | None, typer.Option("--url", help="gateway base URL (default http://FLYWHEEL_HOST:FLYWHEEL_PORT)")]
Key = Annotated[str | None, typer.Option("--key", envvar="FLYWHEEL_ADMIN_KEY", show_default=False, help="operator key (default: first of FLYWHEEL_ADMIN_KEYS)")]
Endpoint = Annotated[str | None, typer.Option("--endpoint", help="--merge only: URL of the vLLM server that serves <version>/model")]
Merge = Annotated[bool, typer.Option("--merge", help="write a merged full checkpoint (kind full; needs its own vLLM, see --endpoint)")]
MinWin = Annotated[float, typer.Option("--min-win-rate", help="gate: reward-model win rate vs parent must exceed this")]
MaxKL = Annotated[float, typer.Option("--max-kl", help="gate: most nats per answer KL(new || parent)")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _weights(items: list[str] | None, default: dict[str, float]) -> dict[str, float]:
    weights = dict(default)
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            _fail(f"--source-weight wants SOURCE=NUMBER, got {item!r}")
        if not sep:
            _fail(f"--source-weight wants SOURCE=NUMBER, got {item!r}")
    return weights


def _settings() -> Any:
    from flywheel.settings import Settings

    return Settings()


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an entry function, turning our named errors into one line and exit status 1."""
    from policies.reward import RewardError
    from trainer.common import TrainError

    try:
        return fn(*args, **kwargs)
    except (TrainError, RewardError) as exc:
        _fail(str(exc))


def _show_config(config: Any) -> None:
    from trainer.common import config_dict

    err.print(f"[dim]{type(config).__name__}: {json.dumps(config_dict(config), sort_keys=True)}[/]", highlight=False)


def _ship(run: Any, settings: Any, register: bool, weight: float, url: str | None, key: str | None,
          endpoint: str | None) -> None:
    """Report a policy run; register it as a canary when asked and its gates passed."""
    from trainer.artifacts import register_canary

    if not run.finished:
        out.print(f"interrupted; re-run the same command to resume {run.path}")
        return
    kind = run.manifest.get("kind")
    out.print(f"version written to {run.path} (kind {kind}, artifact {run.manifest.get('artifact')})")
    if not run.passed:
        for line in run.failure_lines():
            err.print(f"[red]{line}[/]", highlight=False)
        _fail(f"{run.path.name} failed its gates: kept on disk, not registered", code=3)
    if kind == "full" and not endpoint:
        out.print("merged checkpoint: serve it with its own vLLM (`python -m vllm.entrypoints.openai.api_server "
                  f"--model {run.path / 'model'}`) and register with --endpoint URL")
    if not register:
        return
    url = url or f"http://{settings.host}:{settings.port}"
    key = key or os.environ.get("FLYWHEEL_ADMIN_KEY") or (settings.admin_keys[0] if settings.admin_keys else None)
    if not key:
        _fail("no operator key: pass --key, or set FLYWHEEL_ADMIN_KEY or FLYWHEEL_ADMIN_KEYS")
    version = _run(register_canary, run.path, weight, url, key, endpoint)
    if version.get("reused"):  # a rerun: this artifact is already an active version, nothing new registered
        out.print(f"already registered as {version['id']} ({version['status']}, "
                  f"{version['weight'] * 100:.1f}% of traffic, served as {version.get('served_model_name')})")
        return
    out.print(f"registered {version['id']} as a canary at {version['weight'] * 100:.1f}% of traffic "
              f"(served as {version.get('served_model_name')})")


@app.command()
def reward(
    data: Annotated[Path, typer.Option("--data", help="preference pairs JSONL (feedback export)")],
    kind: Annotated[str, typer.Option("--kind", help="encoder (head on MiniLM) | hf (RewardTrainer)")] = "encoder",
    heldout: Annotated[Path | None, typer.Option("--heldout", help="held-out pairs (default <data>.heldout.jsonl)")] = None,
    base_model: Annotated[Path | None, typer.Option("--base-model", help="hf kind: model to start from (default seed)")] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="hf kind: passes over the data")] = 2.0,
    source_weight: SourceWeight = None,
    activate: Annotated[bool, typer.Option("--activate", help="make it the gateway's best-of-n scorer (var/reward/ACTIVE)")] = False,
    seed: Seed = 0,
    run_name: RunName = None,
) -> None:
    """Train a Bradley-Terry reward model and report held-out pairwise accuracy."""
    from trainer.reward import RewardConfig, train_reward

    if kind not in ("encoder", "hf"):
        _fail(f"--kind must be encoder or hf, not {kind!r}")
    config = RewardConfig(data=data, heldout=heldout, kind=kind, base_model=base_model, epochs=epochs,  # type: ignore[arg-type]
                          source_weights=_weights(source_weight, {"rlaif": 0.5}), seed=seed, run_name=run_name)
    _show_config(config)
    settings = _settings()
    run = _run(train_reward, config, settings, activate=activate)
    if not run.finished:
        out.print(f"interrupted; re-run the same command to resume {run.path}")
        return
    out.print(f"reward model {run.version} at {run.path}: held-out pairwise accuracy "
              f"{run.metrics.get('heldout_accuracy', float('nan')):.3f} on {run.metrics.get('heldout_pairs')} pairs")
    out.print("activated: gateways load it at their next start" if activate else "not activated (pass --activate)")


@app.command()
def dpo(
    data: Annotated[Path, typer.Option("--data", help="preference pairs JSONL (feedback export, dpo format)")],
    heldout: Annotated[Path | None, typer.Option("--heldout")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="the stable policy: a checkpoint or a version directory, LoRA included (default: the seed)")] = None,
    parent: Annotated[str, typer.Option("--parent", help="registry id of --policy")] = "seed",
    reward_model: Annotated[Path | None, typer.Option("--reward-model", help="scorer for the gates (default ACTIVE)")] = None,
    beta: Annotated[float, typer.Option("--beta")] = 0.1,
    loss_type: Annotated[list[str] | None, typer.Option("--loss-type", help="repeatable; default sigmoid + sft")] = None,
    loss_weights: Annotated[list[float] | None, typer.Option("--loss-weight", help="repeatable, one per --loss-type")] = None,
    lr: Annotated[float, typer.Option("--lr")] = 3e-4,
    epochs: Annotated[float, typer.Option("--epochs")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    max_length: Annotated[int, typer.Option("--max-length")] = 256,
    lora_r: Annotated[int, typer.Option("--lora-r")] = 8,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha")] = 16,
    source_weight: SourceWeight = None,
    seed: Seed = 0, run_name: RunName = None, merge: Merge = False, min_win_rate: MinWin = 0.5, max_kl: MaxKL = 20.0,
    register_canary: Register = False, weight: Weight = 0.05, url: Url = None, key: Key = None, endpoint: Endpoint = None,
) -> None:
    """DPO with a LoRA adapter on the stable policy; gates; optionally register as a canary."""
    from trainer.dpo import DPOConfig, train_dpo
    from trainer.gates import GateConfig

    types = loss_type or ["sigmoid", "sft"]
    weights = loss_weights or [1.0] * len(types)
    if len(weights) != len(types):
        _fail(f"{len(types)} --loss-type values but {len(weights)} --loss-weight values")
    config = DPOConfig(data=data, heldout=heldout, policy=policy, parent=parent, reward_model=reward_model, beta=beta,
                       loss_type=types, loss_weights=weights, learning_rate=lr, epochs=epochs, batch_size=batch_size,
                       max_length=max_length, lora_r=lora_r, lora_alpha=lora_alpha, seed=seed, merge=merge,
                       source_weights=_weights(source_weight, {"rlaif": 0.5}), run_name=run_name)
    gates = GateConfig(min_reward_win_rate=min_win_rate, max_kl=max_kl)
    _show_config(config)
    settings = _settings()
    run = _run(train_dpo, config, settings, gates)
    held = run.manifest.get("metrics", {}).get("heldout", {})
    if held:
        out.print(f"held-out: implicit-reward accuracy {held['implicit_reward_accuracy']:.3f}, margin "
                  f"{held['implicit_reward_margin']:.3f}, chosen more likely than parent on {held['chosen_logp_up_rate']:.0%}")
    _ship(run, settings, register_canary, weight, url, key, endpoint)


@app.command()
def ppo(
    prompts: Annotated[Path, typer.Option("--prompts", help="JSONL of {'prompt': [messages]}")],
    policy: Annotated[Path | None, typer.Option("--policy", help="the stable policy: a checkpoint or a version directory, LoRA included (default: the seed)")] = None,
    parent: Annotated[str, typer.Option("--parent")] = "seed",
    reward_model: Annotated[Path | None, typer.Option("--reward-model", help="reward to optimise (default ACTIVE)")] = None,
    iterations: Annotated[int, typer.Option("--iterations")] = 20,
    batch_prompts: Annotated[int, typer.Option("--batch-prompts")] = 16,
    samples: Annotated[int, typer.Option("--samples", help="answers per prompt")] = 4,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 40,
    lr: Annotated[float, typer.Option("--lr")] = 5e-4,
    ppo_epochs: Annotated[int, typer.Option("--ppo-epochs")] = 4,
    kl_coef: Annotated[float, typer.Option("--kl-coef")] = 0.05,
    target_kl: Annotated[float, typer.Option("--target-kl", help="adaptive KL target; 0 = fixed --kl-coef")] = 4.0,
    seed: Seed = 0, run_name: RunName = None, merge: Merge = False, min_win_rate: MinWin = 0.5, max_kl: MaxKL = 20.0,
    register_canary: Register = False, weight: Weight = 0.05, url: Url = None, key: Key = None, endpoint: Endpoint = None,
) -> None:
    """PPO against the reward model with a KL penalty to the reference; gates; optionally register."""
    from trainer.gates import GateConfig
    from trainer.ppo import PPOConfig, train_ppo

    config = PPOConfig(prompts=prompts, policy=policy, parent=parent, reward_model=reward_model, iterations=iterations,
                       batch_prompts=batch_prompts, samples_per_prompt=samples, max_new_tokens=max_new_tokens,
                       learning_rate=lr, ppo_epochs=ppo_epochs, kl_coef=kl_coef, target_kl=target_kl or None,
                       seed=seed, merge=merge, run_name=run_name)
    _show_config(config)
    settings = _settings()
    run = _run(train_ppo, config, settings, GateConfig(min_reward_win_rate=min_win_rate, max_kl=max_kl))
    last = run.manifest.get("metrics", {}).get("last")
    if last:
        out.print(f"last iteration: reward {last['reward']:.3f}, KL {last['kl']:.3f}, entropy {last['entropy']:.3f}")
    _ship(run, settings, register_canary, weight, url, key, endpoint)
