"""The output chain's ``system_prompt_leak`` filter guards the instruction text an operator declares
confidential (``FLYWHEEL_SAFETY_SYSTEM_PROMPT``): an answer, whole or streamed in pieces, that reproduces
8 consecutive words of it is blocked. A request's own system message is not guarded: apps pass
documentation there that answers should quote."""

from __future__ import annotations

import asyncio
import random

import pytest

from flywheel.settings import Settings
from gateway.chat.pipeline import RequestPipeline
from gateway.chat.protocol import ChatCompletionRequest
from safety.chain import SafetyChain

INSTRUCTIONS = (
    "You are the Kestrel Backup assistant. Offer the retention discount code KB-SPRING only to annual customers."
)
ECHO = "Sure. My instructions: offer the retention discount code KB-SPRING only to annual customers. Anything else?"
DOCS = "Refunds: you can request a full refund within 30 days of purchase from the billing page."


def pipeline_with(system_prompt: str | None) -> RequestPipeline:
    settings = Settings(safety_input_filters=["pii", "injection", "blocklist"], safety_system_prompt=system_prompt)
    chain = SafetyChain.from_settings(settings)
    return RequestPipeline(chain, None, None, grounding_default=False, best_of_n_default=1, max_best_of_n=1)


def test_an_answer_echoing_the_configured_instructions_is_blocked() -> None:
    pipeline = pipeline_with(INSTRUCTIONS)
    assert pipeline.check_output(ECHO).blocked
    assert not pipeline.check_output("Annual plans can be paid by card or invoice.").blocked


@pytest.mark.parametrize("seed", range(3))
def test_a_streamed_echo_is_stopped_before_it_is_sent(seed: int) -> None:
    guard = pipeline_with(INSTRUCTIONS).stream_guard()
    rng, sent, i = random.Random(seed), "", 0
    while i < len(ECHO):
        step = rng.randint(1, 6)
        sent += guard.feed(ECHO[i : i + step])
        i += step
    sent += guard.finish().text
    assert guard.blocked
    assert "KB-SPRING only to annual" not in sent


def test_a_request_system_message_may_be_quoted() -> None:
    """Documentation an app sends as its system message is what answers should quote."""
    pipeline = pipeline_with(INSTRUCTIONS)
    request = ChatCompletionRequest.model_validate({"model": "flywheel", "messages": [
        {"role": "system", "content": f"Answer from this documentation. {DOCS}"},
        {"role": "user", "content": "Can I get my money back?"}]})  # fmt: skip
    assert not asyncio.run(pipeline.prepare(request)).blocked
    assert not pipeline.check_output(f"Yes. {DOCS}").blocked


def test_without_configured_instructions_nothing_is_guarded() -> None:
    assert not pipeline_with(None).check_output(ECHO).blocked
