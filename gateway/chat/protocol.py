"""Request schema for ``POST /v1/chat/completions`` — data only.

The fields are OpenAI's (Flywheel's own extensions arrive in the body, where the SDK's ``extra_body``
puts them). Responses are vLLM's JSON passed through with a ``flywheel``
object added, so they need no model here (re-validating them would cost time on the hot path).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat request that a text policy on vLLM can honour."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's sampling extensions, passed through (clients send them with the SDK's extra_body)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    # Flywheel extensions
    best_of_n: int | None = Field(None, ge=1, description="sample k candidates, return the reward model's best")
    grounding: bool | None = Field(None, description="false: answer without retrieved sources")

    def upstream_body(
        self, served_model_name: str, messages: list[dict[str, Any]], *, n: int | None = None, stream: bool | None = None
    ) -> dict[str, Any]:
        """The body vLLM receives: OpenAI fields only, the stage-processed messages, our model name.

        A request that names no output limit is left to vLLM's default, the context left after the prompt
        (bounded by the server's ``--max-model-len``): sending ``max_tokens_cap`` instead would be refused
        by vLLM 0.32 whenever the cap exceeds a server's context length (2048 against our 1024)."""
        body = self.model_dump(
            exclude_none=True,
            exclude={"model", "user", "stream_options", "messages", "best_of_n", "grounding", "stream"},
        )
        body["model"] = served_model_name
        body["messages"] = messages
        if n is not None:
            body["n"] = n
        body["stream"] = self.stream if stream is None else stream
        if body["stream"]:
            # Always ask for usage so the gateway can count tokens; forwarded only if the client asked.
            body["stream_options"] = {"include_usage": True}
        return body
