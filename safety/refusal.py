"""OpenAI-shaped refusals: a blocked request or answer is a normal 200 with ``finish_reason: content_filter``.

Never an HTTP error: the official SDK then hands the client a regular completion whose content is
the refusal message, exactly as OpenAI's own content filter does.
"""

from __future__ import annotations

import time
from typing import Any

from safety.verdict import ChainResult


def refusal_completion(
    *,
    completion_id: str,
    model: str,
    message: str,
    result: ChainResult | None = None,
    n: int = 1,
    prompt_tokens: int = 0,
    created: int | None = None,
    flywheel: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full ``chat.completion`` body: ``n`` choices carrying the refusal, ``finish_reason=content_filter``.

    ``flywheel`` is merged into the response's ``flywheel`` object (response id, token, ...); the
    safety verdicts go in ``flywheel.safety``.
    """
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": message, "refusal": message},
            "logprobs": None,
            "finish_reason": "content_filter",
        }
        for i in range(n)
    ]
    extra = dict(flywheel or {})
    if result is not None:
        extra.setdefault("safety", {})
        extra["safety"] = {**extra["safety"], result.stage: result.to_dict()}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": choices,
        "usage": refusal_usage(message, n, prompt_tokens),
        "flywheel": extra,
    }


def refusal_usage(message: str, n: int = 1, prompt_tokens: int = 0) -> dict[str, int]:
    """The ``usage`` of a refusal: the policy generated nothing, so the refusal's words stand in for tokens."""
    completion_tokens = max(1, len(message.split())) * n
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def refusal_chunks(
    *,
    completion_id: str,
    model: str,
    message: str,
    result: ChainResult | None = None,
    index: int = 0,
    created: int | None = None,
    flywheel: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that end a blocked stream.

    One delta with the refusal text (set ``message=""`` to end silently after the released prefix),
    then the final chunk with ``finish_reason=content_filter`` and the ``flywheel`` object.
    """
    stamp = created if created is not None else int(time.time())
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": stamp, "model": model}
    chunks: list[dict[str, Any]] = []
    if message:
        chunks.append(
            {**base, "choices": [{"index": index, "delta": {"content": message}, "logprobs": None, "finish_reason": None}]}
        )
    extra = dict(flywheel or {})
    if result is not None:
        extra["safety"] = {**extra.get("safety", {}), result.stage: result.to_dict()}
    chunks.append(
        {
            **base,
            "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": "content_filter"}],
            "flywheel": extra,
        }
    )
    return chunks
