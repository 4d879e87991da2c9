"""Routes for feedback widgets — thin: authenticate, read the capped body, hand to FeedbackService."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.auth import Principal, require_chat_key
from gateway.feedback.body import read_json_model
from gateway.feedback.protocol import FeedbackAccepted, FeedbackRequest
from gateway.feedback.service import FeedbackService

SESSION_HEADER = "x-session-id"
REPLAYED_HEADER = "Idempotent-Replayed"


def build_feedback_router(service: FeedbackService, max_body_bytes: int) -> APIRouter:
    router = APIRouter()
    schema = FeedbackRequest.model_json_schema()

    @router.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
    )
    async def post_feedback(request: Request, principal: Principal = Depends(require_chat_key)) -> JSONResponse:
        body = await read_json_model(request, FeedbackRequest, max_body_bytes)
        result = await service.submit(body, principal, request.headers.get(SESSION_HEADER))
        headers = {REPLAYED_HEADER: "true"} if result.replayed else None
        return JSONResponse(result.body.model_dump(), status_code=202, headers=headers)

    return router
