"""Routes for chat clients — thin: parse, authenticate, hand to ChatService."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.auth import require_chat_key
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.service import ChatService

SESSION_HEADER = "x-session-id"


def build_chat_router(service: ChatService) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_chat_key)])

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):  # type: ignore[no-untyped-def]
        sticky_key = body.user or request.headers.get(SESSION_HEADER)
        if body.stream:
            stream = await service.open_stream(body, sticky_key)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return JSONResponse(await service.complete(body, sticky_key))

    @router.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": service.models()}

    return router
