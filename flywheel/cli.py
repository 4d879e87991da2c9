"""The `flywheel` command line: one Typer app assembled from the command modules."""

from __future__ import annotations

import typer

from flywheel.commands import bench, canary, consume, export, kb, loop, policy, safety, seed, simulate, stack, train

app = typer.Typer(
    name="flywheel",
    help="Flywheel: an LLM serving gateway with an online feedback loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command("seed-model")(seed.seed_model)
app.command("up")(stack.up)
app.command("serve")(stack.serve)
app.command("consume")(consume.consume)
app.add_typer(policy.app, name="policy")
app.add_typer(canary.app, name="canary")
app.add_typer(bench.app, name="bench")
app.add_typer(kb.app, name="kb")
app.add_typer(safety.app, name="safety")
app.add_typer(train.app, name="train")
app.command("export")(export.export)
app.command("simulate")(simulate.simulate)
app.command("loop")(loop.loop)

if __name__ == "__main__":
    app()
