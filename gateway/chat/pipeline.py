"""The stages between the client and the policy: input safety, grounding, best-of-n choice, output safety.

Each stage lives in its owning package (``safety/``, ``gateway/grounding/``, ``policies/reward``); this
module only runs them in order and keeps what the response and the interaction event need. The CPU-bound
stages (encoder for the classifier and retrieval, reward scoring) run in a worker thread so the event
loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.chat.protocol import ChatCompletionRequest
from gateway.grounding.stage import Citation, GroundingStage
from safety.chain import SafetyChain
from safety.streaming import StreamGuard
from safety.verdict import ChainResult


class Scorer(Protocol):
    def score(self, prompt: list[dict[str, Any]], responses: list[str]) -> list[float]: ...


@dataclass
class Prepared:
    """A request after the input stages: what to send upstream and what to report."""

    messages: list[dict[str, Any]]
    citations: list[Citation] = field(default_factory=list)
    input_safety: ChainResult | None = None

    @property
    def blocked(self) -> bool:
        return self.input_safety is not None and self.input_safety.blocked

    @property
    def doc_ids(self) -> list[str]:
        return list(dict.fromkeys(c.doc_id for c in self.citations))


@dataclass
class Choice:
    index: int
    rewards: list[float] | None


class RequestPipeline:
    def __init__(
        self,
        safety: SafetyChain,
        grounding: GroundingStage | None,
        scorer: Scorer | None,
        *,
        grounding_default: bool,
        best_of_n_default: int,
        max_best_of_n: int,
    ) -> None:
        self.safety = safety
        self.grounding = grounding
        self.scorer = scorer
        self.grounding_default = grounding_default
        self.best_of_n_default = best_of_n_default
        self.max_best_of_n = max_best_of_n

    # --- before the policy ------------------------------------------------------------------
    def best_of_n(self, req: ChatCompletionRequest, version_default: int | None = None) -> int:
        """How many candidates to sample (1 = plain generation): the request's ``best_of_n``, else the
        version's default, else the gateway's. A default applies only where best-of-n can: one answer
        (n=1) sampled with temperature > 0; an explicit value is validated instead (check_limits)."""
        if self.scorer is None:
            return 1
        if req.best_of_n is not None:
            return req.best_of_n
        if req.n > 1 or req.temperature == 0:
            return 1
        return min(version_default or self.best_of_n_default, self.max_best_of_n)

    def wants_grounding(self, req: ChatCompletionRequest) -> bool:
        return self.grounding is not None and (req.grounding if req.grounding is not None else self.grounding_default)

    async def prepare(self, req: ChatCompletionRequest) -> Prepared:
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        ground = self.wants_grounding(req)
        if not ground and not self.safety.classifier_filters:
            return self._prepare(messages, ground)  # patterns only: cheaper than a thread hop
        return await asyncio.to_thread(self._prepare, messages, ground)

    def _prepare(self, messages: list[dict[str, Any]], ground: bool) -> Prepared:
        checked = self.safety.check_input(messages)
        if checked.blocked:
            return Prepared(messages, input_safety=checked)
        outgoing = checked.messages if checked.messages is not None else messages
        if not ground:
            return Prepared(outgoing, input_safety=checked)
        grounded = self.grounding.ground(outgoing)  # type: ignore[union-attr]
        return Prepared(grounded.messages, grounded.citations, checked)

    # --- after the policy -------------------------------------------------------------------
    async def choose(self, prompt: list[dict[str, Any]], candidates: list[str]) -> Choice:
        """The best candidate under the reward model (ties: the first)."""
        if self.scorer is None or len(candidates) < 2:
            return Choice(0, None)
        rewards = await asyncio.to_thread(self.scorer.score, prompt, candidates)
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        return Choice(best, [float(r) for r in rewards])

    def check_output(self, text: str) -> ChainResult:
        return self.safety.check_output(text)

    def stream_guard(self) -> StreamGuard:
        return StreamGuard(self.safety)


def safety_report(prepared: Prepared, outputs: list[ChainResult]) -> dict[str, Any]:
    """The ``flywheel.safety`` object: verdicts only, never the text they judged."""
    report: dict[str, Any] = {}
    if prepared.input_safety is not None:
        report["input"] = prepared.input_safety.to_dict()
    if outputs:
        report["output"] = outputs[0].to_dict() if len(outputs) == 1 else [o.to_dict() for o in outputs]
    return report
