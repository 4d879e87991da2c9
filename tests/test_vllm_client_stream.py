"""PolicyClient's streaming reader: a stream that ends without ``[DONE]`` is an error, not an answer,
and a stream the caller abandons is aborted upstream by the id the client sent.

A real HTTP server (aiohttp) plays an upstream that dies mid-answer by ending its response after one
chunk, one that never ends, and the control that ends with ``[DONE]``; it records the abort calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from flywheel.procs import free_port
from policies.errors import PolicyUnavailable
from policies.vllm_client import PolicyClient

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "seed",
         "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}  # fmt: skip


@dataclass
class Upstream:
    url: str = ""
    request_ids: list[str] = field(default_factory=list)  # X-Request-Id of each chat request
    aborted: list[str] = field(default_factory=list)  # ids named in abort calls, as vLLM names them

    async def sse(self, request: web.Request) -> web.StreamResponse:
        self.request_ids.append(request.headers["X-Request-Id"])
        model = (await request.json()).get("model")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f"data: {json.dumps(CHUNK)}\n\n".encode())
        while model == "endless":
            await asyncio.sleep(0.01)
            await resp.write(f"data: {json.dumps(CHUNK)}\n\n".encode())
        if model == "finishes":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def abort(self, request: web.Request) -> web.Response:
        self.aborted += (await request.json())["request_ids"]
        return web.Response()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.sse)
    app.router.add_post("/inference/v1/abort_requests", state.abort)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _collect(client: PolicyClient, model: str) -> list[dict]:  # type: ignore[type-arg]
    return [chunk async for chunk in client.stream_chat_completions({"model": model, "messages": []})]


async def test_a_stream_cut_before_done_raises(upstream: Upstream) -> None:
    client = PolicyClient(upstream.url)
    try:
        with pytest.raises(PolicyUnavailable, match=r"before \[DONE\]"):
            await _collect(client, "dies")
    finally:
        await client.aclose()


async def test_a_finished_stream_yields_its_chunks(upstream: Upstream) -> None:
    client = PolicyClient(upstream.url)
    try:
        assert await _collect(client, "finishes") == [CHUNK]
    finally:
        await client.aclose()
    assert upstream.aborted == []  # nothing to abort: the upstream finished it


async def test_a_stream_closed_early_is_aborted_upstream_by_its_id(upstream: Upstream) -> None:
    client = PolicyClient(upstream.url)
    try:
        stream = client.stream_chat_completions({"model": "endless", "messages": []})
        assert await anext(stream) == CHUNK
        await stream.aclose()
    finally:
        await client.aclose()  # waits for the abort call it started
    [request_id] = upstream.request_ids
    assert upstream.aborted == [f"chatcmpl-{request_id}"]


async def test_each_request_gets_its_own_id(upstream: Upstream) -> None:
    client = PolicyClient(upstream.url)
    try:
        await _collect(client, "finishes")
        await _collect(client, "finishes")
    finally:
        await client.aclose()
    assert len(set(upstream.request_ids)) == 2



class _DroppedConnects:
    """The first ``times`` httpx connects time out, as they do when a loaded host drops the SYN;
    later requests go to the real server (and their paths are recorded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
        self.left = times
        self.sent: list[str] = []
        real = httpx.AsyncHTTPTransport.handle_async_request

        async def handle(transport: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
            if self.left > 0:
                self.left -= 1
                raise httpx.ConnectTimeout("SYN dropped", request=request)
            self.sent.append(request.url.path)
            return await real(transport, request)

        monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle)


async def test_an_abort_whose_connect_times_out_is_tried_again(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped = _DroppedConnects(monkeypatch, times=2)
    async with PolicyClient(upstream.url) as client:
        await client.abort("fw-1")
    assert dropped.sent == ["/inference/v1/abort_requests"]
    assert upstream.aborted == ["chatcmpl-fw-1"]


async def test_an_abort_gives_up_after_its_tries(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    dropped = _DroppedConnects(monkeypatch, times=3)
    async with PolicyClient(upstream.url) as client:
        with pytest.raises(PolicyUnavailable, match="unreachable"):
            await client.abort("fw-1")
    assert dropped.sent == [] and upstream.aborted == []
