"""uvicorn's httptools protocol with a request-read deadline (slowloris and slow-body defence).

uvicorn bounds idle keep-alive connections but not a request that arrives slowly: a client that sends
its headers (or its body) a byte at a time holds a connection, and a slot under the connection cap,
for as long as it likes, and a connection that never sends a byte is never closed at all. Ingresses
have this setting (nginx ``client_header_timeout`` / ``client_body_timeout``); a gateway run on its
own needs it too. uvicorn has no option for it, so this subclass adds one timer per connection —
hand-written because there is nothing to configure; it touches only uvicorn's documented protocol
hooks (``connection_made``, the parser's ``on_message_begin`` and ``on_message_complete``).

The rule: from the moment a connection opens, or the first byte of a later request arrives on a
kept-alive one, that request's headers *and* body must arrive within ``read_timeout_s``. Otherwise the
gateway answers a plain ``408`` (no app code has run, so it cannot be OpenAI-shaped; the same as
uvicorn's own 400 and 503) and closes the connection. A request that has been read in full is never
cut off, however long the app then takes: upstream time is bounded by ``FLYWHEEL_UPSTREAM_TIMEOUT_S``.

A kept-alive connection waiting for its next request is uvicorn's keep-alive timeout's business
(``FLYWHEEL_KEEP_ALIVE_S``), not this deadline's: that timeout is set above the 5 s after which httpx
(the ``openai`` SDK's transport) drops an idle connection, so such a client never sends a request on a
connection the gateway is closing at that moment (a race that fails the request with "server
disconnected"). A deadline started at the previous response would cut those connections first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.coalescing_transport import CoalescingTransport

_BODY = b"the request was not received in time"


class ReadDeadlineHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose requests must arrive in full within ``read_timeout_s`` seconds."""

    read_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - uvicorn's own signature
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # One send() per answer instead of uvicorn's two (head, then body): see coalescing_transport.
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        if self._read_deadline is None:
            self._arm()  # a later request on a kept-alive connection: its clock starts at its first byte
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._disarm()  # the whole request is in: from here the app's own time limits apply
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        receiving = cycle is None or cycle.response_complete or cycle.more_body
        if not receiving:
            self._arm()  # the request before a partly-read pipelined one is being served: look again later
            return
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
            )
        self.transport.close()


def protocol_with_read_timeout(read_timeout_s: float) -> type[ReadDeadlineHttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` with this deadline (uvicorn takes a class, not
    an instance, so the setting travels as a class attribute of a fresh subclass)."""
    return type("ReadDeadlineHttpToolsProtocol", (ReadDeadlineHttpToolsProtocol,), {"read_timeout_s": read_timeout_s})

