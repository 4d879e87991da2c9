"""`flywheel simulate`: a population of simulated users that chats with a running gateway through its
public API and rates the answers by a preference file; prints a table per policy version.

Bad input (a missing or malformed preference file, an out-of-range option) is one red line on
stderr and exit status 1; so is a run in which not a single question was answered (the gateway is
down or refuses the key). Errors of single requests are counted in the report, not fatal.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from flywheel.simulate import SimulationConfig, SimulationReport

err = Console(stderr=True)


class QuestionPart(str, Enum):
    all = "all"
    train = "train"
    heldout = "heldout"


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def simulate(
    url: Annotated[str | None, typer.Option("--url", help="gateway base URL (default http://FLYWHEEL_HOST:FLYWHEEL_PORT)")] = None,
    key: Annotated[str | None, typer.Option("--key", envvar="FLYWHEEL_API_KEY", show_default=False,
                                            help="chat key (default: $FLYWHEEL_API_KEY, else the first of FLYWHEEL_API_KEYS)")] = None,
    preferences: Annotated[str, typer.Option("--preferences", "-p", help="preference TOML file, or a shipped one: default | reversed")] = "default",
    users: Annotated[int, typer.Option("--users", min=1, help="simulated users (ids sim-0 … sim-N-1)")] = 20,
    interactions: Annotated[int, typer.Option("--interactions", "-n", min=1, help="chat requests in all")] = 100,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="requests in flight at once")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="seeds users, questions, rating dice and sampling")] = 0,
    model: Annotated[str, typer.Option("--model", help="flywheel (routed) or a version id to evaluate alone")] = "flywheel",
    rating_probability: Annotated[float | None, typer.Option("--rating-probability", min=0.0, max=1.0, help="override: chance a user rates")] = None,
    noise: Annotated[float | None, typer.Option("--noise", min=0.0, max=1.0, help="override: chance a rating is flipped")] = None,
    adversarial: Annotated[float | None, typer.Option("--adversarial", min=0.0, max=1.0, help="override: share of users who rate the opposite way")] = None,
    questions: Annotated[QuestionPart, typer.Option("--questions", help="all | train | heldout (held-out facts, for fresh users)")] = QuestionPart.all,
    user_prefix: Annotated[str, typer.Option("--user-prefix", help="user ids are <prefix>-<n>")] = "sim",
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0, help="sampling temperature")] = 0.8,
    best_of_n: Annotated[int | None, typer.Option("--best-of-n", min=1, help="ask the gateway for best-of-n")] = None,
    grounding: Annotated[bool | None, typer.Option("--grounding/--no-grounding", show_default=False, help="default: the gateway's setting")] = None,
    post_feedback: Annotated[bool, typer.Option("--feedback/--no-feedback", help="post ratings (--no-feedback: judge only)")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
) -> None:
    """Simulated users ask about the product and rate answers by a preference file; prints rates per version."""
    from flywheel.settings import Settings
    from flywheel.simulate import PreferenceError, SimulationConfig

    settings = Settings()
    key = key or (settings.api_keys[0] if settings.api_keys else None)
    try:
        config = SimulationConfig(
            url=url or f"http://{settings.host}:{settings.port}", api_key=key, preferences=preferences, users=users,
            interactions=interactions, concurrency=concurrency, seed=seed, model=model,
            rating_probability=rating_probability, noise=noise, adversarial_fraction=adversarial,
            questions=questions.value, user_prefix=user_prefix, max_tokens=max_tokens, temperature=temperature,
            best_of_n=best_of_n, grounding=grounding, post_feedback=post_feedback,
        )  # fmt: skip
        config.preference()  # a bad file fails here, before any request
    except (PreferenceError, ValueError) as exc:
        _fail(str(exc))
    report = _run_with_progress(config)
    Console().print(report.table())
    if json_path is not None:
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            _fail(f"cannot write {json_path}: {exc.strerror or exc}")
        err.print(f"report → {json_path}", highlight=False)
    if report.totals.answers == 0:
        errors = ", ".join(f"{k} {n}" for k, n in sorted(report.totals.errors.items()))
        _fail(f"no question was answered by {config.url} ({errors})")


def _run_with_progress(config: SimulationConfig) -> SimulationReport:
    from rich.progress import Progress

    from flywheel.simulate import run_simulation

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("simulating", total=config.interactions)
        return run_simulation(config, lambda: progress.advance(task))
