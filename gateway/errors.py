"""OpenAI-shaped errors: one small exception hierarchy, one JSON shape, no tracebacks on the wire.

Every error the gateway returns looks like OpenAI's::

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}

so the official SDK raises its matching exception class (``BadRequestError``, ``AuthenticationError``...).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


logger = logging.getLogger("flywheel.gateway")


class APIError(Exception):
    """Base of every error the gateway deliberately returns."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class BadRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(APIError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    status_code = 403
    error_type = "permission_error"


class NotFound(APIError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(APIError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class Unprocessable(APIError):
    status_code = 422
    error_type = "invalid_request_error"


class RateLimited(APIError):
    status_code = 429
    error_type = "rate_limit_error"


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "service_unavailable"


class GatewayTimeout(APIError):
    status_code = 504
    error_type = "timeout_error"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULLABLE_STRING,
                "code": _NULLABLE_STRING,
            },
        }
    },
}
_API_PREFIXES = ("/v1/", "/admin/")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _document_errors(app: FastAPI) -> None:
    """Declare the one error shape on every API operation of the OpenAPI document.

    FastAPI would otherwise promise its own ``422 {"detail": [...]}`` body, which this app never sends.
    """
    generate = app.openapi
    schema = {"$ref": "#/components/schemas/Error"}
    error = {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": schema}}}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            schemas["Error"] = ERROR_SCHEMA
            for path, operations in document.get("paths", {}).items():
                for operation in operations.values() if path.startswith(_API_PREFIXES) else ():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    responses.update({"4XX": error, "5XX": error})
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception path (ours, FastAPI's validation, Starlette's HTTP, anything else) to JSON."""
    _document_errors(app)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid body")
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "server_error")
        code = getattr(exc, "code", None)  # an HTTPException of ours may carry an OpenAI error code
        return JSONResponse(
            error_body(str(exc.detail), kind, None, code), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log, never to the client.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal error", "server_error"), status_code=500)
