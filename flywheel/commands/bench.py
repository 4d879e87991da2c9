"""`flywheel bench …`: one sub-command per benchmark module under flywheel/bench/."""

from __future__ import annotations

import typer

from flywheel.bench import feedback as feedback_bench
from flywheel.bench import gateway as gateway_bench
from flywheel.bench import loop as loop_bench
from flywheel.bench import pipeline as pipeline_bench
from flywheel.bench import soak as soak_bench
from flywheel.bench import trainer as trainer_bench

app = typer.Typer(help="Benchmarks: measured side by side, written to docs/benchmarks.md.", no_args_is_help=True)
app.command("gateway")(gateway_bench.run)
app.command("pipeline")(pipeline_bench.run)
app.command("feedback")(feedback_bench.run)
app.command("trainer")(trainer_bench.run)
app.command("loop")(loop_bench.run)
app.command("soak")(soak_bench.run)
