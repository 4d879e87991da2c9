"""An ``APIRoute`` whose endpoint takes the ``Request`` and returns a ``Response`` itself.

FastAPI's route handler solves dependencies, runs the endpoint and serialises its return value on
every request; for the two hot routes (chat, feedback), which read and validate their own bodies and
build their own responses, that machinery is pure cost (~3-7 % of the main thread under load, py-spy).
``get_route_handler`` is FastAPI's documented hook for a custom route class; the route stays in the
OpenAPI document like any other.

``DirectRoutesFirst`` goes one step further at run time: an ASGI layer, innermost of the app's own
middleware, that hands a request for a DirectRoute (exact path and method) straight to its endpoint,
past Starlette's exception middleware, FastAPI's exit-stack middleware, the router's regex matching and
the two ``request_response`` wrappers. It maps exceptions with the app's own handlers, as Starlette's
``wrap_app_handling_exceptions`` does (hand-written because that helper is private to Starlette), and
leaves everything else, the 500 fallback included, to the layers it sits between.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DirectRoute", "DirectRoutesFirst"]

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]
Handler = Callable[[Request, Exception], Any]  # async, or sync (run in the thread pool) as Starlette allows


class DirectRoute(APIRoute):
    """Calls ``endpoint(request)`` directly; the endpoint must be ``async def f(request) -> Response``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        params = list(inspect.signature(self.endpoint).parameters)
        if len(params) != 1 or not inspect.iscoroutinefunction(self.endpoint) or self.dependencies:
            raise TypeError(f"DirectRoute {self.path}: the endpoint must be `async def f(request) -> Response`")
        return self.endpoint


class DirectRoutesFirst:
    """ASGI middleware: requests for the app's DirectRoutes go straight to their endpoints.

    Add it before any other middleware (``app.add_middleware(DirectRoutesFirst, gateway=app)``) so that
    it is the innermost: the app's own middleware (tracing, size limits, CORS) still runs around it.
    Routes and handlers are read when Starlette builds the stack (first request), once all are added.
    """

    def __init__(self, app: ASGIApp, gateway: FastAPI) -> None:
        self.app = app
        self._endpoints: dict[tuple[str, str], Endpoint] = {
            (method, route.path): route.endpoint
            for route in gateway.routes
            if isinstance(route, DirectRoute) and not route.param_convertors
            for method in route.methods
        }
        # As Starlette's ExceptionMiddleware: by status for HTTPException, else by class; Exception (the
        # 500 handler) stays with ServerErrorMiddleware.
        handlers = gateway.exception_handlers.items()
        self._by_status: Mapping[int, Handler] = {k: h for k, h in handlers if isinstance(k, int)}
        self._by_class: Mapping[type, Handler] = {
            k: h for k, h in handlers if isinstance(k, type) and k is not Exception
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._endpoints.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        request = Request(scope, receive, tracked_send)
        try:
            response = await endpoint(request)
            await response(scope, receive, tracked_send)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None or started:  # unmapped, or too late for another answer: the 500 layer's
                raise
            if inspect.iscoroutinefunction(handler):
                answer = await handler(request, exc)
            else:
                answer = await run_in_threadpool(handler, request, exc)
            exc.__traceback__ = None  # as Starlette: a reused exception instance would pile up tracebacks
            await answer(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Handler | None:
        if isinstance(exc, HTTPException) and exc.status_code in self._by_status:
            return self._by_status[exc.status_code]
        for kind in type(exc).__mro__:
            if kind in self._by_class:
                return self._by_class[kind]
        return None
