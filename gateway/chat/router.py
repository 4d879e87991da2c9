"""Routes for chat clients — thin: authenticate, parse, hand to ChatService.

The chat route reads the raw body and validates it with ``model_validate_json`` (one pass in
pydantic-core) and calls the key check directly, and is a ``DirectRoute`` (no dependency solving or
response serialisation by FastAPI): on the hot path that machinery cost ~15 % of the gateway's event
loop under load. The
OpenAPI document still describes the body (``openapi_extra``), so clients and fuzzers see the schema.
"""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from gateway.auth import Principal
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.service import ChatService
from gateway.direct_route import DirectRoute

SESSION_HEADER = "x-session-id"
_encode = msgspec.json.encode
_BODY_SCHEMA = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
# Schemas the body refers to; create_app merges them into the OpenAPI document's components.
CHAT_SCHEMA_COMPONENTS: dict = _BODY_SCHEMA.pop("$defs", {})


def _authorize(request: Request) -> Principal:
    return request.app.state.keyring.authorize_chat(request.headers.get("authorization"))


def build_chat_router(service: ChatService) -> APIRouter:
    router = APIRouter()

    async def chat_completions(request: Request) -> Response:
        principal = _authorize(request)
        try:
            body = ChatCompletionRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        service.limit_key(principal.actor)
        sticky_key = body.user or request.headers.get(SESSION_HEADER)
        if body.stream:
            stream = await service.open_stream(body, sticky_key)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return Response(_encode(await service.complete(body, sticky_key)), media_type="application/json")

    router.add_api_route(
        "/v1/chat/completions", chat_completions, methods=["POST"], route_class_override=DirectRoute,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}},
    )  # fmt: skip

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict:
        _authorize(request)
        return {"object": "list", "data": service.models()}

    return router
