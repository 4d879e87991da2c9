"""The request-read deadline (gateway.http_protocol) on a real uvicorn server over real sockets.

A tiny ASGI app stands in for the gateway: what is under test is the protocol layer beneath any app.
Silent connections, headers or a body dribbled a byte at a time get a 408 and are closed; a request
that arrived in full is served however long the app takes; a kept-alive connection gets the deadline
afresh for each request, counted from its first byte, and between requests only keep-alive applies.
(`test_security_surface` checks that `flywheel serve` uses this protocol.)
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.http_protocol import protocol_with_read_timeout
from tests.fixtures.threaded_server import serve_in_thread

DEADLINE_S = 0.8
# The kept-alive test pauses between requests for a fraction of the deadline: a longer deadline there leaves
# each pause seconds of margin however loaded the machine (the pauses' sum, which must pass one deadline,
# can only grow under load).
LONG_DEADLINE_S = 3.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: ANN401 - raw ASGI
    """Echoes the body's length; ``/slow`` answers only after 2.5 deadlines."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(2.5 * DEADLINE_S)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with serve_in_thread(app, access_log=False, log_config=None, timeout_keep_alive=30,
                         http=protocol_with_read_timeout(DEADLINE_S)) as port:  # fmt: skip
        yield ("127.0.0.1", port)


@pytest.fixture(scope="module")
def long_deadline_address() -> Iterator[tuple[str, int]]:
    with serve_in_thread(app, access_log=False, log_config=None, timeout_keep_alive=30,
                         http=protocol_with_read_timeout(LONG_DEADLINE_S)) as port:  # fmt: skip
        yield ("127.0.0.1", port)


def _read_until_closed(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took. ``limit_s`` is a hang guard:
    a connection the server never closes fails the test with a TimeoutError."""
    began, got = time.monotonic(), b""
    sock.settimeout(limit_s)
    while chunk := sock.recv(65536):
        got += chunk
    return got, time.monotonic() - began


def _dribble(sock: socket.socket, data: bytes, every_s: float = 0.1) -> tuple[bytes, float]:
    """Send ``data`` a byte at a time until the server answers or hangs up; what it said, and when."""
    began, got = time.monotonic(), b""
    sock.settimeout(every_s)
    for i in range(len(data)):
        try:
            sock.sendall(data[i : i + 1])
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        got += chunk
        if not chunk or got.endswith(b"not received in time"):
            break
    return got, time.monotonic() - began


def test_a_silent_connection_gets_a_408_and_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        got, took = _read_until_closed(sock)
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]
    assert DEADLINE_S * 0.9 <= took  # never before the deadline (later only under load: not asserted)


def test_headers_dribbled_a_byte_at_a_time_are_cut_off(address: tuple[str, int]) -> None:
    request = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(address) as sock:
        got, _ = _dribble(sock, request)  # ~20 s of dribbling: were it not cut off, the answer would be a 200
    assert got.startswith(b"HTTP/1.1 408 "), f"a byte every 0.1 s must not keep the connection alive: {got[:80]!r}"


def test_a_body_dribbled_a_byte_at_a_time_is_cut_off(address: tuple[str, int]) -> None:
    head = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 200\r\n\r\n"
    with socket.create_connection(address) as sock:
        sock.sendall(head)
        got, _ = _dribble(sock, b"b" * 200)  # ~20 s of dribbling: were it not cut off, the answer would be a 200
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]


def test_a_request_read_in_time_is_served_however_long_the_app_takes(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        got, took = _read_until_closed(sock)
    assert got.startswith(b"HTTP/1.1 200 "), got[:80]
    assert got.endswith(b"\r\n\r\n5")
    assert took >= 2.5 * DEADLINE_S * 0.9


def test_each_request_on_a_kept_alive_connection_gets_the_deadline_afresh(
    long_deadline_address: tuple[str, int],
) -> None:
    with socket.create_connection(long_deadline_address, timeout=10) as sock:
        for _ in range(5):  # together longer than one deadline, each well inside it
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(LONG_DEADLINE_S / 4)
        # Then half a request and silence: the deadline, not keep-alive (30 s), ends it (the 10 s read
        # limit is a hang guard).
        sock.sendall(b"GET / HTTP/1.1\r\nHost: te")
        got, _ = _read_until_closed(sock)
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]


def test_an_idle_kept_alive_connection_is_left_to_keep_alive(address: tuple[str, int]) -> None:
    """Between requests the keep-alive timeout (30 s here) applies, not the read deadline: a client may
    reuse a connection it left idle for longer than the deadline (httpx keeps one for 5 s)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(2.5 * DEADLINE_S)  # the old rule (a deadline from the response) cut the connection here
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
