"""The barest Python proxy, measured beside Flywheel in `flywheel bench gateway` as a floor.

Why it exists: through vLLM on this 2-core machine, every proxy shares a core with vLLM's API server
and engine core, so the share of direct throughput a proxy keeps depends on what any Python hop costs
there, not only on the proxy's own code. This pass-through shows that cost side by side in the same
run: aiohttp's server and a pooled aiohttp client on uvloop, forwarding ``POST /v1/chat/completions``
bytes unchanged — no auth, no routing, no parsing, no recording, no telemetry. It is not a product
path; nothing outside the bench starts it.

    python -m flywheel.bench.bare_proxy --upstream http://127.0.0.1:8000 --port 9002 [--workers 2]

With ``--workers N`` it runs N processes on one port (``SO_REUSEPORT``), as the other proxies run N.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil
import uvloop
from aiohttp import web

from flywheel.procs import ManagedProcess, free_port

CHAT_PATH = "/v1/chat/completions"
MODULE = "flywheel.bench.bare_proxy"  # not __name__: that is "__main__" when run with -m


def build_app(upstream: str) -> web.Application:
    """One route: the request body goes upstream as is; the answer comes back with its status."""
    target = upstream.rstrip("/") + CHAT_PATH
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[session_key].post(
            target, data=body, headers={"Content-Type": "application/json"}
        ) as upstream_response:
            return web.Response(
                body=await upstream_response.read(),
                status=upstream_response.status,
                content_type="application/json",
            )

    async def session(app: web.Application) -> AsyncIterator[None]:  # aiohttp's cleanup-context shape
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[session_key].close()

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post(CHAT_PATH, forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the backend's base URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1, help="processes on the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    one = [sys.executable, "-m", MODULE, "--upstream", args.upstream, "--port", str(args.port), "--host", args.host]
    # The others start first, so a caller that sees this process answer finds all of them in its tree.
    children = [subprocess.Popen(one) for _ in range(args.workers - 1)]
    try:
        uvloop.install()
        web.run_app(build_app(args.upstream), host=args.host, port=args.port, reuse_port=True,
                    access_log=None, print=None)  # fmt: skip
    finally:
        for child in children:
            child.terminate()
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


def _listening(root: int, port: int) -> set[int]:
    """The processes of ``root``'s tree that listen on ``port``."""
    try:
        tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return set()
    found = set()
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp")):
                found.add(proc.pid)
    return found


@dataclass
class BareProxy:
    url: str
    process: ManagedProcess


def start_bare_proxy(stack: contextlib.ExitStack, work: Path, upstream: str, workers: int = 1) -> BareProxy:
    """Start it on a free port; ready once every process listens and one forwarded a request (any answer)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", MODULE, "--upstream", upstream, "--port", str(port), "--workers", str(workers)]
    proc = ManagedProcess(f"bare-proxy-{port}", argv, work / f"bare-proxy-{port}.log")
    proc.start()
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.pid is None or len(_listening(proc.pid, port)) < workers:
            return False
        try:
            httpx.post(url + CHAT_PATH, json={}, timeout=2)
        except httpx.HTTPError:
            return False
        return True

    proc.wait_ready(ready, timeout_s=30, interval_s=0.1)
    return BareProxy(url, proc)


if __name__ == "__main__":
    main()
