"""`flywheel up` (everything on one machine) and `flywheel serve` (the gateway process alone)."""

from __future__ import annotations

import typer
from rich.console import Console

from flywheel.settings import Settings


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def up(
    port: int = typer.Option(None, min=1, max=65535, help="gateway port (default FLYWHEEL_PORT or 8000)"),
    host: str = typer.Option(None, help="gateway host (default FLYWHEEL_HOST or 127.0.0.1)"),
) -> None:
    """Start broker, vLLM, gateway, consumer and canary controller; print URLs and keys; Ctrl-C stops all.

    A bad setting, a seed build that fails, a missing broker binary, a refused safety configuration: those
    end as one ``error:`` line through the CLI's error boundary (flywheel/cli.py), after run_stack has
    stopped whatever it had started.
    """
    from deploy.launcher import StackError, run_stack
    from flywheel.procs import PortInUseError, ProcessStartError

    overrides = {k: v for k, v in {"port": port, "host": host}.items() if v is not None}
    settings = Settings(**overrides)
    try:
        code = run_stack(settings, Console())
    except (PortInUseError, StackError) as exc:
        _fail(str(exc))
    except ProcessStartError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


def serve(
    port: int = typer.Option(None, min=1, max=65535, help="port (default FLYWHEEL_PORT or 8000)"),
    host: str = typer.Option(None, help="host (default FLYWHEEL_HOST or 127.0.0.1)"),
    workers: int = typer.Option(None, help="gateway processes serving the port (default FLYWHEEL_WORKERS or 1)"),
) -> None:
    """Run the gateway alone, against FLYWHEEL_VLLM_URL and FLYWHEEL_DATABASE_URL."""
    import os

    import uvicorn

    from flywheel.cpus import pin_this_process
    from flywheel.procs import PortInUseError, ensure_port_free
    from gateway.http_protocol import protocol_with_read_timeout
    from gateway.telemetry import configure_json_logging
    from gateway.workers import prepare_supervisor, warn_stranded_spools

    overrides = {k: v for k, v in {"port": port, "host": host, "workers": workers}.items() if v is not None}
    settings = Settings(**overrides)  # a bad value: one line from the CLI's error boundary (flywheel/cli.py)
    if settings.cpu_set:  # first thing: threads (and worker processes) started from here on inherit it
        pin_this_process(settings.cpu_set)
    try:
        ensure_port_free(settings.host, settings.port, "the gateway")
    except PortInUseError as exc:
        _fail(str(exc))
    # The connection cap is uvicorn's own (it counts connections and running requests and answers a plain
    # 503 before any app code runs); it sits above FLYWHEEL_MAX_IN_FLIGHT so that chat clients meet the
    # OpenAI-shaped 429 first and only a flood of connections meets the 503. A request that arrives too
    # slowly (slowloris) meets a 408 (gateway.http_protocol). Nothing reads the client's address (limits
    # go by key and user), so uvicorn's X-Forwarded-For rewriting would cost every request for nothing.
    common = {
        "host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
        "proxy_headers": False, "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s,
    }  # fmt: skip
    configure_json_logging(settings.log_level)
    if settings.workers == 1:
        from gateway.wiring import build_gateway  # the supervisor of several workers never builds an app

        warn_stranded_spools(settings)
        uvicorn.run(build_gateway(settings), http=protocol_with_read_timeout(settings.request_read_timeout_s), **common)
        return
    # The workers read their settings from the environment they inherit: pass the command line's on.
    os.environ.update({"FLYWHEEL_PORT": str(settings.port), "FLYWHEEL_HOST": settings.host,
                       "FLYWHEEL_WORKERS": str(settings.workers)})  # fmt: skip
    prepare_supervisor(settings)
    uvicorn.run("gateway.workers:create_worker_app", factory=True, workers=settings.workers,
                http="gateway.workers:WorkerHttpProtocol", **common)  # fmt: skip
