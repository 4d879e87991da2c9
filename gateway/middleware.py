"""Pure-ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path): request size limits, CORS for
the public API, and tracing.

The tracing middleware opens the root span of each request and returns its trace id in the
``X-Trace-Id`` header, so a user's bug report can be matched to the trace and the logs.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body

TRACE_HEADER = b"x-trace-id"


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with an OpenAI-shaped 413, declared or streamed, and
    headers over ``max_header_bytes`` (names + values) with a 431."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.max_header_bytes is not None:
            header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
            if header_bytes > self.max_header_bytes:
                message = f"request headers larger than {self.max_header_bytes} bytes"
                await _send_json(send, 431, error_body(message, "invalid_request_error", None, "headers_too_large"))
                return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, error_body("invalid Content-Length", "invalid_request_error"))
                    return
                if declared > self.max_bytes:
                    await _send_json(send, 413, self._too_large())
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(413, f"request body larger than {self.max_bytes} bytes")
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:  # raised where no exception handler ran (a route reading the body itself)
            await _send_json(send, 413, self._too_large())

    def _too_large(self) -> dict[str, Any]:
        return error_body(
            f"request body larger than {self.max_bytes} bytes", "invalid_request_error", None, "payload_too_large"
        )


class BodyTooLarge(HTTPException):
    """A streamed body went over the limit. An HTTPException because FastAPI, reading a route's body,
    turns any other exception into a 400 "error parsing the body"; this one it lets through, to the
    app's handler (the same OpenAI-shaped 413)."""

    code = "payload_too_large"


class ApiCors:
    """CORS for the public API (``/v1/*``) only, for the configured origins; every other path — the
    operator API and the pages — answers no preflight and sends no ``Access-Control-*`` header, so a
    browser keeps it same-origin. Keys travel in ``Authorization``, never in cookies: no credentials mode.
    """

    def __init__(self, app: ASGIApp, allow_origins: list[str], prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix
        self.cors = CORSMiddleware(
            app,
            allow_origins=allow_origins,
            allow_methods=["GET", "POST"],
            # Any request header: the official openai JS SDK sends its own (X-Stainless-*, OpenAI-*) and
            # would fail its preflight on a fixed list; with no credentials mode this widens nothing.
            allow_headers=["*"],
            expose_headers=["X-Trace-Id", "Retry-After", "Idempotent-Replayed"],
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class TracingMiddleware:
    """Root span per HTTP request; trace id echoed in ``X-Trace-Id``."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER) as span:
            trace_id = format(span.get_span_context().trace_id, "032x").encode()
            scope.setdefault("state", {})["trace_id"] = trace_id.decode()

            async def send_with_trace(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (TRACE_HEADER, trace_id)]
                    span.set_attribute("http.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, send_with_trace)
