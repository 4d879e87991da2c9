"""`flywheel bench loop`: one round of the closed loop on the default seed policy, timed and judged.

Starts its own stack under ``var/bench/loop`` (broker, vLLM on the default seed model with LoRA slots,
gateway with grounding and safety on, `flywheel consume`), runs `flywheel loop --rounds 1` in process,
and reports: the round's wall time (collect the rated interactions → export → reward model + DPO +
gates → canary live → decision), and the seed's and the new version's thumbs-up and safety-block rates
measured side by side on fresh simulated users (held-out topics, each version pinned, same users and
questions for both). The targets from the issue are printed next to what was measured; nothing here
asserts, and nothing is cached between runs (the work directory is wiped first).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from flywheel.bench import services
from flywheel.bench.report import provenance, write_section
from flywheel.procs import ManagedProcess, free_port
from flywheel.settings import Settings

TARGET_ROUND_S = 600.0
TARGET_GAIN_POINTS = 15.0


def _start_consumer(stack: contextlib.ExitStack, gateway: services.Flywheel, work: Path) -> None:
    env = dict(gateway.process.env or os.environ)
    port = free_port()
    proc = ManagedProcess("consumer", [sys.executable, "-m", "flywheel.cli", "consume", "--metrics-port", str(port)],
                          work / "consumer.log", env=env)  # fmt: skip
    proc.start()
    stack.callback(proc.stop)
    proc.wait_ready(lambda: services._http_ok(f"http://127.0.0.1:{port}/metrics"), timeout_s=60)


def loop_settings(gateway: services.Flywheel, seed_dir: Path) -> Settings:
    """The loop's settings, pointed at the stack this bench started. Set explicitly, not as defaults: a
    FLYWHEEL_* value from .env or the environment (another stack's database, or its gateways' /metrics,
    which the canary controller reads error counts from) must not win over the bench's own."""
    env = gateway.process.env or {}
    return Settings(var_dir=Path(env["FLYWHEEL_VAR_DIR"]), database_url=env["FLYWHEEL_DATABASE_URL"],
                    seed_model_path=seed_dir, canary_gateway_metrics_urls=[f"{gateway.url.rstrip('/')}/metrics"])


def _rate(stats: dict | None, key: str) -> float | None:  # type: ignore[type-arg]
    if not stats:
        return None
    if key == "safety_block_rate":
        return stats["safety_blocks"] / stats["answers"] if stats["answers"] else None
    return stats.get(key)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def run(
    interactions: int = typer.Option(500, min=10, help="rated interactions collected before training"),
    eval_interactions: int = typer.Option(300, min=1, help="per version, fresh users"),
    min_ratings: int = typer.Option(60, min=1, help="canary ratings each rollout step needs"),
    seed: int = typer.Option(0, help="simulation seed"),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="page whose `loop` section is rewritten"),
    write: bool = typer.Option(True, "--write/--no-write", help="write the section to --out"),
) -> None:
    """One loop round on the default seed: round time, thumbs-up gain over the seed, safety-block rates."""
    from flywheel.loop.config import LoopConfig, loop_plan
    from flywheel.loop.report import write_report
    from flywheel.loop.runner import Loop
    from flywheel.simulate.preferences import load_preference, preset_path
    from policies.seed.build import SeedConfig, ensure_seed_model

    console = Console()
    base = Settings()
    work = services._fresh_dir(base.var_dir.resolve() / "bench" / "loop")
    seed_dir = base.seed_model_dir
    with console.status(f"seed model at {seed_dir} (built if missing) …"):
        ensure_seed_model(seed_dir, SeedConfig.default())
    with contextlib.ExitStack() as stack:
        backend = services.start_vllm(stack, work / "vllm", seed_dir, base)
        gateway = services.start_flywheel(stack, work / "gateway", backend, stages=True)
        _start_consumer(stack, gateway, work)
        env = gateway.process.env or {}
        settings = loop_settings(gateway, seed_dir)
        config = LoopConfig(url=gateway.url, chat_key=gateway.api_key, admin_key=env["FLYWHEEL_ADMIN_KEYS"],
                            interactions_per_round=interactions, eval_interactions=eval_interactions, seed=seed,
                            plan=loop_plan(min_ratings), reports_dir=work / "reports")  # fmt: skip
        loop = Loop(config, settings, load_preference(preset_path("default")), console)
        try:
            record = loop.run(work / "loop")
        finally:
            loop.close()
        summary = write_report(record, work / "reports" / loop.stamp)
    r = record.rounds[0]
    seed_eval = record.evaluation.get(record.seed_version)
    new_eval = record.evaluation.get(r.candidate) if r.candidate else None
    seed_up, new_up = _rate(seed_eval, "thumbs_up_rate"), _rate(new_eval, "thumbs_up_rate")
    gain = (new_up - seed_up) * 100 if seed_up is not None and new_up is not None else None
    seed_block, new_block = _rate(seed_eval, "safety_block_rate"), _rate(new_eval, "safety_block_rate")
    round_s = r.seconds.get("total")
    rows = [
        ("round outcome", r.outcome, "promoted"),
        ("round wall time (collect → DPO → canary → decision)", "-" if round_s is None else f"{round_s:.0f} s",
         f"≤ {TARGET_ROUND_S:.0f} s"),
        ("  collect / train+gates / rollout", " / ".join(f"{r.seconds.get(k, 0):.0f} s" for k in ("collect", "train", "rollout")), ""),
        ("pairs (train / held-out) by source", f"{r.pairs} / {r.heldout_pairs} {r.pairs_by_source}", ""),
        ("thumbs-up rate, fresh users: seed → new", f"{_pct(seed_up)} → {_pct(new_up)}", ""),
        ("thumbs-up gain", "-" if gain is None else f"{gain:+.1f} points", f"≥ +{TARGET_GAIN_POINTS:.0f} points"),
        ("safety-block rate: seed → new", f"{_pct(seed_block)} → {_pct(new_block)}", "new ≤ seed"),
    ]  # fmt: skip
    if seed_eval and new_eval:
        for rule in seed_eval["rule_rates"]:
            rows.append((f"  behaviour `{rule}`: seed → new",
                         f"{_pct(seed_eval['rule_rates'][rule])} → {_pct(new_eval['rule_rates'].get(rule))}", ""))
    table = Table(title="flywheel bench loop (one round, default seed, default preference)")
    for column in ("measure", "measured", "target"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"loop report → {summary}")
    if write:
        md = [provenance(), "", "| measure | measured | target |", "|---|---|---|"]
        md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        md += ["", f"Evaluation: {eval_interactions} requests per version from fresh simulated users on held-out "
                   "topics, judged by the default preference (noise and adversaries included), ratings not posted. "
                   "The round's report (plots) was written under var/bench/loop/reports/."]  # fmt: skip
        write_section(out, "loop", "## Loop (`flywheel bench loop`)\n\n" + "\n".join(md))
        console.print(f"wrote the loop section of {out}")
