"""An ``APIRoute`` whose endpoint takes the ``Request`` and returns a ``Response`` itself.

FastAPI's route handler solves dependencies, runs the endpoint and serialises its return value on
every request; for the two hot routes (chat, feedback), which read and validate their own bodies and
build their own responses, that machinery is pure cost (~3-7 % of the main thread under load, py-spy).
``get_route_handler`` is FastAPI's documented hook for a custom route class; FastAPI's own
``request_response`` wrapper (exception handlers, exit stacks) still wraps the endpoint, and the route
stays in the OpenAPI document like any other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

__all__ = ["DirectRoute"]


class DirectRoute(APIRoute):
    """Calls ``endpoint(request)`` directly; the endpoint must be ``async def f(request) -> Response``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        params = list(inspect.signature(self.endpoint).parameters)
        if len(params) != 1 or not inspect.iscoroutinefunction(self.endpoint) or self.dependencies:
            raise TypeError(f"DirectRoute {self.path}: the endpoint must be `async def f(request) -> Response`")
        return self.endpoint
