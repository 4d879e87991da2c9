"""A zero-latency OpenAI-compatible chat backend, run as its own process for `flywheel bench gateway`.

Why not FastAPI or uvicorn: the stub must be so cheap that whatever a proxy in front of it costs shows
up undiluted. It is a bare ``asyncio.Protocol`` on uvloop with the ``httptools`` parser (the same C
parser uvicorn uses), keep-alive, and pre-encoded answers: ~10x the request rate of a minimal ASGI app.
It reads and discards the request body and always returns the same valid ``chat.completion``.

With ``--delay-ms D`` it answers each chat completion D ms after the request (other paths at once),
from a timer rather than a sleeping task, so it still costs next to nothing: a closed-loop client then
runs at the request rate of a real model server (vLLM on the seed policy answers in ~200 ms at 32
connections here), and a proxy in front is measured at that rate without the model server's noise.
Answers on one connection keep their order only without pipelining (wrk and the proxies send one
request per connection at a time).

    python -m flywheel.bench.stub_server --port 9001 [--model stub] [--delay-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable

import httptools

STUB_TEXT = "Hello from the stub backend."
CHAT_PATH = b"/v1/chat/completions"


def chat_completion(model: str) -> dict[str, object]:
    """The one answer: shaped like vLLM's, with usage, so clients and proxies parse it fully."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": STUB_TEXT},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }


def _response(status: bytes, body: dict[str, object]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(payload)).encode() + b"\r\n\r\n"
    )
    return head + payload


def build_routes(model: str) -> dict[tuple[bytes, bytes], bytes]:
    """Pre-encoded answers by (method, path): nothing is built per request."""
    models = {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "stub"}]}
    return {
        (b"POST", CHAT_PATH): _response(b"200 OK", chat_completion(model)),
        (b"GET", b"/health"): _response(b"200 OK", {"status": "ok"}),
        (b"GET", b"/v1/models"): _response(b"200 OK", models),
    }


class StubProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; answers each request when its message is complete."""

    def __init__(self, routes: dict[tuple[bytes, bytes], bytes], not_found: bytes, delay_s: float = 0.0) -> None:
        self.routes = routes
        self.not_found = not_found
        self.delay_s = delay_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(b"400 Bad Request", {"error": "bad request"}))
            self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        answer = self.routes.get((method, path), self.not_found)
        keep_alive = self.parser.should_keep_alive()
        if self.delay_s > 0 and path == CHAT_PATH:
            asyncio.get_running_loop().call_later(self.delay_s, self._answer, answer, keep_alive)
        else:
            self._answer(answer, keep_alive)

    def _answer(self, answer: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        if self.transport.is_closing():  # the client left while a delayed answer waited
            return
        self.transport.write(answer)
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, model: str, delay_s: float = 0.0) -> None:
    routes = build_routes(model)
    not_found = _response(b"404 Not Found", {"error": {"message": "not found", "code": 404}})
    factory: Callable[[], StubProtocol] = lambda: StubProtocol(routes, not_found, delay_s)  # noqa: E731
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="stub")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer chat completions after this many ms")
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    try:
        import uvloop

        run: Callable[..., object] = uvloop.run
    except ImportError:  # plain asyncio still works, just slower
        run = asyncio.run
    try:
        run(serve(args.host, args.port, args.model, args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
