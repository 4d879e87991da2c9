"""`flywheel canary ...`: the live canary analysis and the operator's controls (operator API), and
`watch`, the controller loop itself (reads metrics from the database, acts through the operator API)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flywheel.commands.policy import Key, Reason, Url, _call, _fail, _pct

app = typer.Typer(help="Canary rollouts: live analysis, pause, resume, promote, abort, and the controller.",
                  no_args_is_help=True)  # fmt: skip

_FMT = {"thumbs_up_rate": "{:.1%}", "mean_reward": "{:.3f}", "error_rate": "{:.2%}",
        "safety_block_rate": "{:.2%}", "latency_p99_ms": "{:.0f} ms"}  # fmt: skip
_STYLE = {"success": "green", "failure": "red", "inconclusive": "yellow", "skipped": "dim"}


def _positive(value: float | None) -> float | None:
    """Refuse 0 (it used to mean "the default" silently) and negatives (a busy loop) at parse time."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0 seconds, got {value:g}")
    return value


def _num(metric: str, value: float | None) -> str:
    return "-" if value is None else _FMT[metric].format(value)


def _report_table(report: dict[str, Any]) -> Table:
    steps = " → ".join(_pct(w) for w in report["steps"])
    title = (f"{report['version_id']} vs {report['stable_id']}: step {report['step']} "
             f"({_pct(report['weight'])}; plan {steps}) — {report['decision']}: {report['why']}")  # fmt: skip
    table = Table(title=title, title_justify="left")
    for column in ("metric", "canary", "stable", "n canary", "n stable", "P(not worse)", "outcome", "why"):
        table.add_column(column, overflow="fold")
    for name, m in report["metrics"].items():
        p = m["p_not_worse"]
        table.add_row(name, _num(name, m["canary"]), _num(name, m["stable"]), str(m["n_canary"]),
                      str(m["n_stable"]), "-" if p is None else f"{p:.3f}",
                      f"[{_STYLE[m['outcome']]}]{m['outcome']}[/]", m["why"])  # fmt: skip
    return table


@app.command()
def status(url: Url = None, key: Key = None) -> None:
    """The live analysis of every canary: metrics vs stable, posterior probabilities, decision and why."""
    body = _call(url, key, "GET", "/admin/canary")
    console = Console()
    if not body["data"]:
        console.print("no canaries")
    for report in body["data"]:
        flags = " [bold yellow]PAUSED[/]" if report["paused"] else ""
        flags += " [bold red]NEEDS AN OPERATOR[/]" if report["needs_operator"] else ""
        console.print(_report_table(report))
        console.print(f"failures {report['failures']} of limit {report['failure_limit']}, "
                      f"step running {report['elapsed_s']:.0f}s{flags}")  # fmt: skip


def _action(action: str, done: str) -> Any:
    def command(version_id: Annotated[str, typer.Argument(metavar="ID")], reason: Reason = None,
                url: Url = None, key: Key = None) -> None:  # fmt: skip
        out = _call(url, key, "POST", f"/admin/canary/{version_id}/{action}", {"reason": reason} if reason else None)
        Console().print(f"{out['id']} {done} (status {out['status']}, weight {_pct(out['weight'])})")

    return command


app.command("pause", help="Hold canary ID where it is: the controller changes nothing until resumed.")(
    _action("pause", "paused"))
app.command("resume", help="Let the controller analyse and act on canary ID again.")(_action("resume", "resumed"))
app.command("promote", help="Promote canary ID now, whatever the analysis says.")(_action("promote", "promoted"))
app.command("rollback", help="Roll canary ID back now (the design card's name; `abort` is the same).")(
    _action("abort", "rolled back"))
app.command("abort", help="Roll canary ID back now.")(_action("abort", "rolled back"))


@app.command()
def watch(
    url: Url = None,
    key: Key = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help="default: FLYWHEEL_DATABASE_URL")] = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", callback=_positive, help="seconds between ticks, > 0 (default: settings)"),
    ] = None,
) -> None:
    """Run the canary controller until SIGINT or SIGTERM.

    An unreachable database or a bad setting ends as one ``error:`` line (the CLI's error boundary, flywheel/cli.py).
    """
    from deploy.canary.admin_client import AdminClient
    from deploy.canary.controller import CanaryController
    from deploy.canary.live import CanaryAnalyzer
    from deploy.canary.metrics import GatewayCounters, StoreMetrics
    from deploy.canary.plan import RolloutPlan
    from flywheel.cpus import pin_this_process
    from flywheel.db import create_schema, make_engine
    from flywheel.settings import Settings
    from policies.registry import PolicyRegistry

    settings = Settings()
    if settings.cpu_set:  # first thing: threads started from here on inherit it
        pin_this_process(settings.cpu_set)
    key = key or (settings.admin_keys[0] if settings.admin_keys else None)
    if not key:
        _fail("no operator key: pass --key, or set FLYWHEEL_ADMIN_KEY or FLYWHEEL_ADMIN_KEYS")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = make_engine(database_url or settings.effective_database_url)
    try:
        create_schema(engine)  # OperationalError when the database is unreachable: one line, via the boundary
    except Exception:
        engine.dispose()
        raise
    plan = RolloutPlan.from_settings(settings)
    analyzer = CanaryAnalyzer(PolicyRegistry(engine), StoreMetrics(engine),
                              GatewayCounters(settings.canary_gateway_metrics_urls), plan)  # fmt: skip
    admin = AdminClient(url or f"http://{settings.host}:{settings.port}", key)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    every = settings.canary_interval_s if interval is None else interval
    Console(stderr=True).print(f"canary controller: plan {plan.steps}, every {every}s")
    try:
        CanaryController(analyzer, admin).run(stop, every)
    finally:
        admin.close()
        engine.dispose()
