"""`flywheel export`: preference pairs from the feedback store, ready for TRL (dpo | reward | jsonl)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from flywheel.settings import Settings


class ExportFormat(str, Enum):
    dpo = "dpo"
    reward = "reward"
    jsonl = "jsonl"


def export(
    format: ExportFormat = typer.Option(ExportFormat.dpo, "--format", "-f", help="dpo | reward | jsonl"),  # noqa: A002
    out: Path = typer.Option(Path("var/datasets/prefs.jsonl"), "--out", "-o", help="train file; held-out and datasheet go beside it"),
    database_url: str = typer.Option(None, help="store URL (default FLYWHEEL_DATABASE_URL or SQLite under var/)"),
    min_reward_margin: float = typer.Option(0.5, help="best-of-n pairs: least reward gap between chosen and rejected"),
    max_pairs_per_user: int = typer.Option(50, help="most pairs any one user may contribute (poisoning bound)"),
    max_pairs_per_prompt: int = typer.Option(20, help="most up-vs-down pairs kept per prompt"),
    heldout_fraction: float = typer.Option(0.1, help="share of prompts (by hash) held out"),
    since: datetime = typer.Option(None, help="only events at or after this time (ISO 8601)"),
    policy_version: str = typer.Option(None, help="only answers served by this policy version"),
) -> None:
    """Write train + held-out preference pairs and a datasheet (counts by source, version, rating, user)."""
    import feedback.store_models  # noqa: F401 - registers the tables on the shared Base
    from feedback.export import export_pairs
    from feedback.pairs import ExportConfig
    from flywheel.db import create_schema, make_engine

    if not 0.0 <= heldout_fraction < 1.0:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--heldout-fraction")
    if max_pairs_per_user < 1 or max_pairs_per_prompt < 1:
        raise typer.BadParameter("caps must be at least 1")
    settings = Settings(**({"database_url": database_url} if database_url else {}))
    cfg = ExportConfig(
        min_reward_margin=min_reward_margin, max_pairs_per_user=max_pairs_per_user,
        max_pairs_per_prompt=max_pairs_per_prompt, heldout_fraction=heldout_fraction,
        since=since, policy_version=policy_version,
    )  # fmt: skip
    engine = make_engine(settings.effective_database_url)
    try:
        create_schema(engine)  # an empty store exports an empty data set rather than failing
        result = export_pairs(engine, format.value, out, cfg, engine.url.render_as_string(hide_password=True))
    finally:
        engine.dispose()
    console = Console()
    by_source = ", ".join(f"{k} {v}" for k, v in sorted(result.pairs.candidates_by_source.items())) or "none"
    console.print(f"{result.train} train pairs → {result.train_path}", highlight=False)
    console.print(f"{result.heldout} held-out pairs → {result.heldout_path}", highlight=False)
    console.print(f"datasheet → {result.datasheet_path} (found by source: {by_source})", highlight=False)
