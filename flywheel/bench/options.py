"""Parsing of the benchmarks' comma-separated options, so that bad input is a one-line usage error
(``typer.BadParameter``, exit 2 at the CLI's boundary) before any server starts, not a traceback
half-way through a run."""

from __future__ import annotations

import typer


def int_list(text: str, option: str, minimum: int = 1) -> list[int]:
    """``"1,8,32"`` → ``[1, 8, 32]``: at least one item, each a distinct integer ≥ ``minimum``."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise typer.BadParameter(f"expected a comma-separated list of integers, got {text!r}", param_hint=option)
    values: list[int] = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not an integer (in {text!r})", param_hint=option) from None
        if value < minimum:
            raise typer.BadParameter(f"{value} is out of range: each value must be ≥ {minimum}", param_hint=option)
        if value in values:
            raise typer.BadParameter(f"{value} is listed twice (in {text!r})", param_hint=option)
        values.append(value)
    return values
