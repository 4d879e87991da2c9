"""The `flywheel` command line: one Typer app assembled from the command modules.

The root group is also the CLI's one error boundary: a known, user-caused failure (a bad setting, a
missing file, an unreachable database, a refused configuration) ends as one ``error: ...`` line on
stderr and exit status 1, whichever command raised it. Anything else (a real bug) still surfaces with
its traceback. A usage error (a bad option value, a missing argument) is click's message on one line,
exit status 2; typer's own exits and Ctrl-C pass through untouched.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer._click.exceptions import UsageError  # typer 0.29 vendors click: this is the class its parser raises
from typer.core import TyperGroup

from flywheel.commands import bench, canary, consume, export, kb, loop, policy, safety, seed, simulate, stack, train

# Project exceptions that describe bad input or a bad environment, not a bug: (module, class name). They are
# matched only when their module is already imported, so the boundary imports nothing heavy itself.
_USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("policies.seed.build", "SeedBuildError"),
    ("policies.registry_errors", "ArtifactChanged"),
    ("deploy.broker", "BrokerBinaryMissingError"),
    ("deploy.launcher", "StackError"),
    ("deploy.canary.plan", "PlanError"),
    ("flywheel.procs", "PortInUseError"),
    ("safety.chain", "SafetyConfigError"),
    ("safety.classifier", "ClassifierError"),
    ("gateway.grounding.encoder", "EncoderError"),
    ("feedback.topics", "BrokerUnavailableError"),
)
# Settings fields whose values are never echoed back in an error line.
_SECRET_HINTS = ("key", "secret", "salt", "password", "token", "url", "bootstrap")


def _one_line(text: str) -> str:
    """Collapse a multi-line message: the boundary promises exactly one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "(no message)"


def _validation_message(exc: Any) -> str:
    """Name each bad setting with its environment variable, say what is wrong and (if harmless) what was given."""
    from flywheel.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    is_settings = exc.title == Settings.__name__
    noun = "setting" if is_settings else str(exc.title)
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc:  # a model-level check (several settings together)
            parts.append(f"invalid {noun}s: {msg}")
            continue
        field = loc[0]
        where = f"{field} ({prefix}{field.upper()})" if is_settings else ".".join(loc)
        given = err.get("input")
        shown = ""
        if isinstance(given, (str, int, float)) and not any(h in field for h in _SECRET_HINTS):
            text = repr(given)
            shown = f" (got {text if len(text) <= 60 else text[:57] + '...'})"
        parts.append(f"invalid {noun} {where}: {msg}{shown}")
    return "; ".join(parts) or f"invalid {noun}"


def user_error_message(exc: BaseException) -> str | None:
    """The one line to show for a user-facing failure, or None when ``exc`` is not one (let it surface)."""
    if isinstance(exc, (typer.Exit, typer.Abort, KeyboardInterrupt)):
        return None  # typer/click control flow, never an error of ours to report
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        return _one_line(_validation_message(exc))
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return _one_line(f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename else str(exc))
    if "sqlalchemy" in sys.modules:
        from sqlalchemy import exc as sa_exc

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return f"database unreachable: {first}"
        # Other DBAPIErrors (IntegrityError, ProgrammingError…) are usually bugs: their traceback stays.
        if isinstance(exc, sa_exc.ArgumentError):  # a malformed URL or an unknown dialect
            return f"bad database URL: {first}"
    for module_name, class_name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return _one_line(str(exc))
    return None


class ErrorBoundaryGroup(TyperGroup):
    """Root group whose ``invoke`` turns known user-facing failures into ``error: <one line>`` and exit 1.

    Hooked in at the click level (not ``Typer.__call__``) so ``CliRunner().invoke(app, ...)`` sees what
    a user sees; every subcommand and sub-app runs inside this ``invoke``.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:  # a bad option or argument: click's message, on one line, exit 2
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.echo(f"{typer.style('error:', fg='red')} {_one_line(exc.format_message())}{where}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            message = user_error_message(exc)
            if message is None:
                raise
            typer.echo(f"{typer.style('error:', fg='red')} {message}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="flywheel",
    help="Flywheel: an LLM serving gateway with an online feedback loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ErrorBoundaryGroup,
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
