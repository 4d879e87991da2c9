"""`flywheel loop --rounds N --algo dpo|ppo`: the closed loop against a running stack, with a report.

Needs the stack (`flywheel up`: gateway, broker, consumer) and its settings (database, var/, keys).
The loop ticks the canary controller itself between batches of simulated traffic; stop the stack's
own controller for the duration (`FLYWHEEL_CANARY_CONTROLLER=false flywheel up`), or both will act.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from flywheel.commands.policy import _fail

if TYPE_CHECKING:
    from flywheel.loop.runner import LoopRecord


def loop(
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="train-and-ship rounds")] = 1,
    algo: Annotated[str, typer.Option("--algo", help="dpo | ppo")] = "dpo",
    preferences: Annotated[Path | None, typer.Option("--preferences", help="simulated users' preference file (default: the shipped one)")] = None,
    interactions: Annotated[int, typer.Option("--interactions", min=10, help="rated interactions collected per round")] = 500,
    eval_interactions: Annotated[int, typer.Option("--eval-interactions", min=0, help="per version, fresh users, at the end")] = 200,
    users: Annotated[int, typer.Option("--users", min=1)] = 200,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 8,
    min_ratings: Annotated[int, typer.Option("--min-ratings", min=1, help="canary ratings each rollout step needs")] = 60,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    reports_dir: Annotated[Path, typer.Option("--reports-dir")] = Path("reports"),
    url: Annotated[str | None, typer.Option("--url", help="gateway (default http://FLYWHEEL_HOST:FLYWHEEL_PORT)")] = None,
    chat_key: Annotated[str | None, typer.Option("--chat-key", envvar="FLYWHEEL_API_KEY", show_default=False)] = None,
    admin_key: Annotated[str | None, typer.Option("--admin-key", envvar="FLYWHEEL_ADMIN_KEY", show_default=False)] = None,
) -> None:
    """Simulate → export → train → gate → canary → controller decides, N times; writes reports/<timestamp>/."""
    from flywheel.loop.config import LoopConfig, loop_plan
    from flywheel.loop.observe import LoopError
    from flywheel.loop.report import write_report
    from flywheel.loop.runner import Loop
    from flywheel.settings import Settings
    from flywheel.simulate.preferences import PreferenceError, load_preference, preset_path
    from policies.reward import RewardError
    from trainer.common import TrainError

    if algo not in ("dpo", "ppo"):
        _fail(f"--algo must be dpo or ppo, not {algo!r}")
    settings = Settings()
    chat_key = chat_key or (settings.api_keys[0] if settings.api_keys else None)
    admin_key = admin_key or (settings.admin_keys[0] if settings.admin_keys else None)
    if not chat_key or not admin_key:
        _fail("the loop needs a chat key and an operator key: pass --chat-key/--admin-key or set FLYWHEEL_API_KEYS/FLYWHEEL_ADMIN_KEYS")
    try:
        preference = load_preference(preferences or preset_path("default"))
    except PreferenceError as exc:
        _fail(str(exc))
    config = LoopConfig(
        rounds=rounds, algo=algo, url=url or f"http://{settings.host}:{settings.port}",  # type: ignore[arg-type]
        chat_key=chat_key, admin_key=admin_key, preferences=preferences, interactions_per_round=interactions,
        eval_interactions=eval_interactions, users=users, concurrency=concurrency, seed=seed,
        reports_dir=reports_dir, plan=loop_plan(min_ratings),
    )  # fmt: skip
    console = Console(stderr=True)
    try:
        runner = Loop(config, settings, preference, console)
    except LoopError as exc:
        _fail(str(exc))
    out = reports_dir / runner.stamp
    try:
        record = runner.run(settings.var_dir / "loop" / runner.stamp)
    except BaseException as exc:  # Ctrl-C and bugs too: the rounds so far are reported, the canary is safe
        # the runner has marked the failed round and rolled back its canary when the run got under way
        note = _report_so_far(runner.record, out) if runner.record.error is not None else ""
        if isinstance(exc, (LoopError, TrainError, RewardError)):
            _fail(f"{exc}{note}")  # one line
        if note:
            console.print(note.removeprefix("; "), highlight=False)
        raise  # the CLI's boundary: one line for a known failure, the traceback for a bug
    finally:
        runner.close()
    summary = write_report(record, out)
    Console().print(f"report → {summary}")


def _report_so_far(record: LoopRecord, out: Path) -> str:
    """Write the report of a run that failed; returns where, for the error line. A failure here must not
    hide the one that stopped the run."""
    from flywheel.loop.report import write_report

    try:
        return f"; report of the rounds so far → {write_report(record, out)}"
    except Exception as exc:
        return f"; the report of the rounds so far could not be written to {out}: {exc}"
