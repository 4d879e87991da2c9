"""PolicyClient's streaming reader: a stream that ends without ``[DONE]`` is an error, not an answer.

A real HTTP server (aiohttp) plays an upstream that dies mid-answer by ending its response after one
chunk; the same server with ``[DONE]`` is the control.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from flywheel.procs import free_port
from policies.errors import PolicyUnavailable
from policies.vllm_client import PolicyClient

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "seed",
         "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}  # fmt: skip


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(f"data: {json.dumps(CHUNK)}\n\n".encode())
    if (await request.json()).get("model") == "finishes":
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _sse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _collect(client: PolicyClient, model: str) -> list[dict]:  # type: ignore[type-arg]
    return [chunk async for chunk in client.stream_chat_completions({"model": model, "messages": []})]


async def test_a_stream_cut_before_done_raises(upstream: str) -> None:
    client = PolicyClient(upstream)
    try:
        with pytest.raises(PolicyUnavailable, match=r"before \[DONE\]"):
            await _collect(client, "dies")
    finally:
        await client.aclose()


async def test_a_finished_stream_yields_its_chunks(upstream: str) -> None:
    client = PolicyClient(upstream)
    try:
        assert await _collect(client, "finishes") == [CHUNK]
    finally:
        await client.aclose()
