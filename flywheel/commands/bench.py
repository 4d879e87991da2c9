"""`flywheel bench …`: one sub-command per benchmark module under flywheel/bench/."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from flywheel.bench import feedback as feedback_bench
from flywheel.bench import gateway as gateway_bench
from flywheel.bench import loop as loop_bench
from flywheel.bench import pipeline as pipeline_bench
from flywheel.bench import soak as soak_bench
from flywheel.bench import trainer as trainer_bench

app = typer.Typer(help="Benchmarks: measured side by side, written to docs/benchmarks.md.", no_args_is_help=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.callback()
def _stop_children_on_sigterm() -> None:
    """Benchmarks start servers in sessions of their own (vLLM, broker, gateways), which a signal to the
    benchmark does not reach: SIGTERM unwinds like Ctrl-C, so every server is stopped on the way out.
    (SIGINT is left alone: ignored when the benchmark was started in the background, as shells do.)"""
    signal.signal(signal.SIGTERM, _interrupt)
app.command("gateway")(gateway_bench.run)
app.command("pipeline")(pipeline_bench.run)
app.command("feedback")(feedback_bench.run)
app.command("trainer")(trainer_bench.run)
app.command("loop")(loop_bench.run)
app.command("soak")(soak_bench.run)
