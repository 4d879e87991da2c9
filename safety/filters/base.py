"""The one interface every filter implements, so the chain can run any configured list of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from safety.verdict import Verdict


@dataclass(frozen=True)
class CheckContext:
    """What an output filter may need besides the text: the deployment's system prompt, extra secrets.

    ``system_prompt`` is the operator's instruction text, not retrieved grounding passages: answers
    legitimately quote those.
    """

    system_prompt: str | None = None
    secrets: tuple[str, ...] = field(default_factory=tuple)
    role: str = "user"


@dataclass(frozen=True)
class Check:
    """A filter's verdict and the text after it (changed only when the verdict is ``redact``)."""

    verdict: Verdict
    text: str


class Filter(Protocol):
    """A named check over one text. Must be cheap and side-effect free; it may run per stream chunk."""

    name: str

    def check(self, text: str, context: CheckContext) -> Check: ...
