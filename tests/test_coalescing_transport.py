"""gateway.coalescing_transport: a response's head and body leave in one write, and nothing is reordered,
lost or held past the end of a loop iteration.

The rule is pure logic over a transport, so most tests drive it on a real event loop with a transport
that records what reaches it; the last ones run uvicorn with the gateway's protocol over real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.coalescing_transport import CoalescingTransport
from gateway.http_protocol import protocol_with_read_timeout
from tests.fixtures.threaded_server import serve_in_thread


class RecordingTransport(asyncio.Transport):
    """Keeps every write that reaches the socket side, and whether it was closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


async def _next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_head_and_body_written_in_one_step_leave_as_one_write() -> None:
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        wrapper = CoalescingTransport(inner, asyncio.get_running_loop())
        wrapper.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        wrapper.write(b"ok")
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]  # at once, not at tick end
        await _next_iteration()
        return inner

    assert len(asyncio.run(scenario()).writes) == 1


def test_a_lone_write_is_sent_at_the_end_of_the_loop_iteration() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        wrapper = CoalescingTransport(inner, asyncio.get_running_loop())
        wrapper.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        assert inner.writes == []
        assert wrapper.get_write_buffer_size() > 0  # held bytes count as buffered for flow control
        await _next_iteration()
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
        wrapper.write(b"5\r\nfirst\r\n")
        await _next_iteration()
        assert inner.writes[1:] == [b"5\r\nfirst\r\n"]

    asyncio.run(scenario())


def test_many_writes_keep_their_order_and_lose_nothing() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        wrapper = CoalescingTransport(inner, asyncio.get_running_loop())
        parts = [b"a", bytearray(b"bb"), memoryview(b"ccc"), b"dddd", b"eeeee"]
        for part in parts:
            wrapper.write(part)
        wrapper.writelines([b"f", b"g"])
        await _next_iteration()
        assert b"".join(inner.writes) == b"abbcccddddeeeeefg"
        assert len(inner.writes) == 3  # pairs, then the odd one out at the end of the iteration

    asyncio.run(scenario())


def test_close_sends_what_is_held_first_and_abort_discards_it() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inner = RecordingTransport()
        wrapper = CoalescingTransport(inner, loop)
        wrapper.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        wrapper.close()
        assert inner.writes == [b"HTTP/1.1 408 Request Timeout\r\n\r\n"] and inner.closed
        await _next_iteration()  # the pending end-of-iteration flush finds nothing and writes nothing
        assert len(inner.writes) == 1

        aborted = RecordingTransport()
        wrapper = CoalescingTransport(aborted, loop)
        wrapper.write(b"half an answer")
        wrapper.abort()
        await _next_iteration()
        assert aborted.writes == [] and aborted.aborted

    asyncio.run(scenario())


def test_nothing_is_written_to_a_transport_that_closed_underneath() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        wrapper = CoalescingTransport(inner, asyncio.get_running_loop())
        wrapper.write(b"too late")
        inner.close()  # the peer went away: uvloop closed the real transport
        await _next_iteration()
        assert inner.writes == []
        assert wrapper.is_closing()

    asyncio.run(scenario())


# --- over real sockets, through uvicorn and the gateway's protocol ---------------------------------

RELEASE_FIRST_CHUNK = threading.Event()  # /stream holds its first chunk until the test sets this
HANG_GUARD_S = 30.0  # /stream sends its chunk anyway after this long, so a failed test leaves nothing waiting


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: ANN401 - raw ASGI
    """``/plain`` answers in one body; ``/stream`` sends its head, then a chunk once the test releases it."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/plain":
        body = b"x" * 3000
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3000")]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    deadline = time.monotonic() + HANG_GUARD_S
    while not RELEASE_FIRST_CHUNK.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serve_in_thread(app, access_log=False, log_config=None, http=protocol_with_read_timeout(10.0)) as bound:
        yield bound


def _request(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    return sock


def test_the_gateway_protocol_writes_through_the_wrapper() -> None:
    async def scenario() -> None:
        config = Config(app=app)
        config.load()
        protocol = protocol_with_read_timeout(1.0)(config=config, server_state=ServerState(), app_state={})
        inner = RecordingTransport()
        protocol.connection_made(inner)
        try:
            assert isinstance(protocol.transport, CoalescingTransport)
        finally:
            protocol.connection_lost(None)

    asyncio.run(scenario())


def test_kept_alive_plain_answers_arrive_whole_and_in_order(port: int) -> None:
    with _request(port, "/plain") as sock:
        for round_ in range(3):
            got = b""
            while not got.endswith(b"x" * 3000):
                got += sock.recv(65536)
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 3000" in head
            assert body == b"x" * 3000, f"round {round_}"
            if round_ < 2:
                sock.sendall(b"GET /plain HTTP/1.1\r\nhost: test\r\n\r\n")


def test_a_streamed_head_is_not_held_until_the_first_chunk(port: int) -> None:
    """The app sends its first chunk only after the test has received the head: a wrapper that held the
    head back until the next write would leave the test waiting for it until the socket timeout."""
    RELEASE_FIRST_CHUNK.clear()
    try:
        with _request(port, "/stream") as sock:
            try:
                first = sock.recv(65536)  # the socket's 10 s timeout is only a hang guard
            except TimeoutError:
                pytest.fail("the head was held back until the first chunk")
            assert first.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in first
            assert b"data: one" not in first
            RELEASE_FIRST_CHUNK.set()
            rest = first
            while not rest.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, f"connection closed before the end of the stream: {rest!r}"
                rest += chunk
    finally:
        RELEASE_FIRST_CHUNK.set()  # never leave the app waiting
    assert b"data: one\n\n" in rest and b"data: [DONE]\n\n" in rest
