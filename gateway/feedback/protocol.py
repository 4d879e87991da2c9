"""Request and response schemas for ``POST /v1/feedback`` — data only.

The rating is checked here (up/down, a score in [-1, 1], or 1-5 stars, per ``feedback.events``'s
one normaliser), so a bad rating is a 422 before anything touches the token or the broker.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationInfo, field_validator

from feedback.events import normalise_rating

Scale = Literal["auto", "score", "stars"]
RATING_HELP = "rating must be 'up', 'down', a score in [-1, 1] or 1-5 stars"


class FeedbackRequest(BaseModel):
    """What a widget posts. ``user`` (like chat's) names the rater for rate limits and export caps."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    response_id: str = Field(min_length=1, max_length=128)
    feedback_token: str = Field(min_length=1, max_length=512)
    scale: Scale = "auto"  # declared before ``rating`` so that the rating check can read it
    rating: StrictStr | StrictInt | StrictFloat = Field(union_mode="left_to_right")
    comment: str | None = Field(None, max_length=4000)
    idempotency_key: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    user: str | None = Field(None, max_length=256)

    @field_validator("rating", mode="before")
    @classmethod
    def _rating_type(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(RATING_HELP)  # JSON true/false must not pass as 1/0
        return value

    @field_validator("rating")
    @classmethod
    def _rating_in_range(cls, value: str | int | float, info: ValidationInfo) -> str | int | float:
        normalise_rating(value, info.data.get("scale", "auto"))  # ValueError -> 422 with the reason
        return value

    @property
    def normalised(self) -> float:
        return normalise_rating(self.rating, self.scale)


class FeedbackAccepted(BaseModel):
    """202 body: the event id is stable for a repeated idempotency key (see service.py)."""

    event_id: str
    status: Literal["accepted"] = "accepted"
    response_id: str
