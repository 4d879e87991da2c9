"""What every reward scorer promises, plus the prompt helpers the scorers share.

The gateway scores the n candidates of one request at once, so the interface is batched per prompt:
``score(prompt_messages, responses) -> list[float]``, one float per response, higher is better, the
same inputs always giving the same numbers.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]

CITATION = re.compile(r"\[\d+\]")
SOURCE_LINE = re.compile(r"^\[\d+\]\s", re.M)


class RewardError(RuntimeError):
    """Base of the errors the reward package raises on purpose."""


class RewardModelNotFound(RewardError):
    """No reward model at that path, or no ACTIVE pointer and nothing to build one from."""


class InvalidRewardModel(RewardError):
    """The directory has no readable manifest, an unknown kind, or files that fail their checksum."""


@runtime_checkable
class RewardScorer(Protocol):
    """A learned preference model: higher score = the answer people (or the labeller) prefer."""

    kind: str
    version: str

    def score(self, prompt_messages: list[Message], responses: list[str]) -> list[float]:
        """One score per response to the same conversation; deterministic; batched."""
        ...


def content_text(message: Message) -> str:
    """The text of an OpenAI message (plain string or the text parts of a content list)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(prompt_messages: list[Message]) -> str:
    """The question being answered: the last user turn (empty if there is none)."""
    for message in reversed(prompt_messages):
        if message.get("role") == "user":
            return content_text(message)
    return ""


def has_sources(prompt_messages: list[Message]) -> bool:
    """True when grounding put numbered sources ("[1] ...") into a system message."""
    return any(
        message.get("role") == "system" and SOURCE_LINE.search(content_text(message)) is not None
        for message in prompt_messages
    )


def normalise_messages(prompt_messages: list[Message]) -> list[Message]:
    """Role + plain-text content only, so chat templates never see tool calls or content parts."""
    return [{"role": str(m.get("role", "user")), "content": content_text(m)} for m in prompt_messages]
