"""`flywheel seed-model`: build (or reuse) the local seed policy under settings.seed_model_dir."""

from __future__ import annotations

import typer
from rich.console import Console

from flywheel.settings import Settings


def seed_model(
    force: bool = typer.Option(False, "--force", help="rebuild even if a valid seed model exists"),
    fixture: bool = typer.Option(
        False, "--fixture", help="build the tiny test preset instead (seconds; low answer quality)"
    ),
) -> None:
    """Build the Kestrel Backup seed chat model and tokenizer offline; reuse it when still valid."""
    from policies.seed.build import SeedBuildError, SeedConfig, ensure_seed_model

    settings = Settings()
    console = Console()
    config = SeedConfig.fixture() if fixture or settings.seed_preset == "fixture" else SeedConfig.default()
    try:
        path = ensure_seed_model(settings.seed_model_dir, config, force=force, console=console)
    except SeedBuildError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"seed model ready: {path.resolve()}")
