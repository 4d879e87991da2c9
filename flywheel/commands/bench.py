"""`flywheel bench …`: one sub-command per benchmark module under flywheel/bench/."""

from __future__ import annotations

import typer

from flywheel.bench import gateway as gateway_bench

app = typer.Typer(help="Benchmarks: measured side by side, written to docs/benchmarks.md.", no_args_is_help=True)
app.command("gateway")(gateway_bench.run)
