"""``GET /admin/interactions/{response_id}``: what was stored for one response — the (redacted)
conversation the policy saw, its candidates, safety verdicts, and every rating of it — so an operator
can follow a user's report from the response id (or a rating) to what the feedback loop will train on.

Reads the feedback store the consumer writes (the same database as the registry), off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path

from feedback.store import FeedbackStore
from flywheel.settings import Settings
from gateway.auth import KeyRing, Principal, admin_key_guard
from gateway.errors import NotFound


def build_interactions_router(store: FeedbackStore, settings: Settings) -> APIRouter:
    operator = Depends(admin_key_guard(KeyRing.from_settings(settings)))
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/interactions/{response_id}")
    async def interaction(
        response_id: str = Path(max_length=128), _: Principal = operator
    ) -> dict[str, Any]:
        """The stored interaction (``null`` when only ratings arrived so far) and its ratings, oldest first."""
        found = await asyncio.to_thread(store.get_interaction, response_id)
        if found is None:
            raise NotFound(f"nothing is stored for response {response_id!r} (yet)", param="response_id",
                           code="interaction_not_found")  # fmt: skip
        return found

    return router
