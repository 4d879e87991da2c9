"""`flywheel bench soak`: chat + feedback at a steady rate for M minutes; memory, errors and latency drift.

Starts its own stack under ``var/bench/soak`` (wiped first): the embedded broker, real vLLM on the seed
model, a gateway with grounding and safety on, and `flywheel consume`. An open-loop driver
(:mod:`flywheel.bench.soak_driver`) asks varied questions through the ``openai`` SDK and rates a share
of the answers, while RSS of each process (with its children) is sampled every few seconds. After a
warm-up, each process's RSS growth and the chat p99 drift compare the last window with the first one
after warm-up (:mod:`flywheel.bench.soak_analysis`); the targets are printed next to what was
measured, never asserted. Raw samples go to ``var/bench/soak/soak.json``, the plot next to them (and
to ``docs/bench/soak.png`` with the section in docs/benchmarks.md when writing).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from flywheel.bench import services
from flywheel.bench.feedback_load import wait_for
from flywheel.bench.loop import _start_consumer
from flywheel.bench.report import provenance, write_section
from flywheel.bench.soak_analysis import summarise
from flywheel.bench.soak_driver import DriveConfig, Driver, stack_processes
from flywheel.bench.soak_report import markdown, plot, print_tables
from flywheel.settings import Settings

ROLES = ("gateway", "vllm", "broker", "consumer")


class ModelPreset(str, Enum):
    default = "default"
    fixture = "fixture"


def _seed_dir(base: Settings, preset: ModelPreset, model_dir: Path | None, console: Console) -> Path:
    from policies.seed.build import SeedConfig, ensure_seed_model

    if model_dir is not None:
        return model_dir
    if preset is ModelPreset.fixture:
        target, config = base.var_dir.resolve() / "bench" / "soak-seed", SeedConfig.fixture()
    else:
        target, config = base.seed_model_dir, SeedConfig.default()
    with console.status(f"seed model ({preset.value}) at {target} (built if missing) …"):
        return ensure_seed_model(target, config)


def _stored_ratings(database_url: str) -> int:
    from sqlalchemy import text

    from flywheel.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM feedback")).scalar() or 0)
    except Exception:  # noqa: BLE001 - no table yet means nothing stored yet
        return 0
    finally:
        engine.dispose()


def run(
    minutes: float = typer.Option(30.0, help="how long the driver runs"),
    rate: float = typer.Option(4.0, help="chat requests started per second (open loop)"),
    feedback_ratio: float = typer.Option(0.5, help="share of answers that get rated"),
    warmup_minutes: float = typer.Option(None, help="excluded from growth and drift; default 10% of --minutes, ≥ 1"),
    window_s: float = typer.Option(None, help="seconds per window; default --minutes*60/30 within 10-60 s"),
    sample_s: float = typer.Option(5.0, help="seconds between RSS samples"),
    max_tokens: int = typer.Option(32, help="max_tokens per chat request"),
    model_preset: ModelPreset = typer.Option(ModelPreset.default, help="seed model: default, or the tiny fixture"),
    model_dir: Path = typer.Option(None, help="serve this seed model directory instead of a preset"),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="page whose `soak` section is rewritten"),
    plot_out: Path = typer.Option(Path("docs/bench/soak.png"), help="where the plot is copied when writing"),
    write: bool = typer.Option(True, "--write/--no-write", help="write the section and the plot under docs/"),
) -> None:
    """Steady chat + feedback for M minutes: RSS growth per process, errors, and p99 drift after warm-up."""
    console = Console() if sys.stdout.isatty() else Console(width=160)  # a log keeps the window table whole
    warmup_s = 60.0 * (warmup_minutes if warmup_minutes is not None else max(1.0, minutes * 0.1))
    window = window_s if window_s is not None else min(60.0, max(10.0, minutes * 60 / 30))
    base = Settings()
    seed_dir = _seed_dir(base, model_preset, model_dir, console)
    work = services._fresh_dir(base.var_dir.resolve() / "bench" / "soak")
    config = DriveConfig(rate=rate, duration_s=minutes * 60, feedback_ratio=feedback_ratio, max_tokens=max_tokens)
    with contextlib.ExitStack() as stack:
        with console.status("starting vLLM, broker, gateway (grounding + safety on) and consumer …"):
            backend = services.start_vllm(stack, work / "vllm", seed_dir, base)
            gateway = services.start_flywheel(stack, work / "gateway", backend, stages=True)
            _start_consumer(stack, gateway, work)
        processes = stack_processes()
        missing = [r for r in ROLES if r not in processes]
        if missing:
            console.print(f"[yellow]not found among this process's children (not sampled): {', '.join(missing)}")
        console.print(f"[bold]soak[/]: {rate:g} chat/s for {minutes:g} min against {gateway.url}, "
                      f"{feedback_ratio:.0%} rated, warm-up {warmup_s / 60:g} min, windows {window:g} s; "
                      f"processes {', '.join(f'{n}={p.pid}' for n, p in processes.items())}")  # fmt: skip
        driver = Driver(gateway.url, gateway.api_key, config, processes, sample_s)

        def progress(d: Driver) -> None:
            errors = sum(1 for r in d.records if r.error)
            rss = d.samples[-1].rss if d.samples else {}
            mem = "  ".join(f"{n} {v / 2**20:.0f} MiB" for n, v in rss.items())
            console.print(f"  {d.elapsed():6.0f} s  {len(d.records)} done  {errors} errors  {mem}")

        asyncio.run(driver.run(progress))
        database_url = (gateway.process.env or {})["FLYWHEEL_DATABASE_URL"]
        wait_for(lambda: _stored_ratings(database_url) >= driver.accepted_ratings, timeout_s=60)
        stored = f"{_stored_ratings(database_url)} / {driver.accepted_ratings}"
    summary = summarise(driver.records, driver.samples, config.duration_s, window, warmup_s)
    print_tables(summary, console)
    console.print(f"ratings in the store / accepted: {stored}")
    (work / "soak.json").write_text(json.dumps(
        {"config": dataclasses.asdict(config), "window_s": window, "warmup_s": warmup_s,
         "records": [dataclasses.asdict(r) for r in driver.records],
         "samples": [dataclasses.asdict(s) for s in driver.samples]}))  # fmt: skip
    title = f"soak: {rate:g} chat/s, {feedback_ratio:.0%} rated, {minutes:g} min ({model_preset.value} seed)"
    plot(summary, driver.samples, warmup_s, work / "soak.png", title)
    console.print(f"raw samples → {work / 'soak.json'}, plot → {work / 'soak.png'}")
    if write:
        plot_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "soak.png", plot_out)
        setup = (
            f"\nOne machine, everything real: vLLM on the `{model_preset.value}` seed model "
            f"({'given directory' if model_dir else 'preset'}), the embedded broker, one gateway with grounding "
            f"and safety on, `flywheel consume`. An open-loop driver starts {rate:g} chat requests/s (openai SDK, "
            f"max_tokens {max_tokens}, varied questions from the simulation's bank) for {minutes:g} min and rates "
            f"{feedback_ratio:.0%} of the answers; latency counts from each request's scheduled start. RSS is the "
            f"process plus its children, sampled every {sample_s:g} s; windows of {window:g} s, the first "
            f"{warmup_s / 60:g} min are warm-up. Growth and drift compare the last window's median RSS / p99 with "
            "the first window after warm-up."
        )
        link = os.path.relpath(Path(plot_out).resolve(), Path(out).resolve().parent)
        write_section(out, "soak", markdown(summary, provenance(), setup, link, stored))
        console.print(f"wrote the soak section of {out} and {plot_out}")
