"""Token logprobs on a guarded stream: they follow the released text, in order, and never show what the
output checks redacted or refused (gateway/chat/streaming.py, ``HeldLogprobs``).

``relay`` is fed vLLM-shaped chunks built here (one logprob entry per token), so each test knows exactly
which tokens exist and can check every one the client would receive.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flywheel.settings import Settings
from gateway.chat.streaming import StreamState, relay
from safety.chain import SafetyChain
from safety.streaming import StreamGuard
from tests.test_safety_stream import _chunks as _tokens  # random 1-7 character pieces

SECRET = "fw-live-key-Q7x9Zk2Lm4Np8Rt"
EMAIL = "jane.doe@example.org"
CLEAN = ("Kestrel Backup keeps deleted files for 90 days, and you can restore them from the web app at any time. "
         "Open Settings, pick the folder, and choose a date before the files went missing. ") * 2  # fmt: skip


def _chain() -> SafetyChain:
    settings = Settings(safety_input_filters=["pii", "injection", "blocklist"], safety_secrets=[SECRET],
                        safety_holdback_chars=48)  # fmt: skip
    return SafetyChain.from_settings(settings, system_prompt="")


def _entry(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


async def _upstream(tokens: list[str], rng: random.Random) -> AsyncIterator[dict[str, Any]]:
    """vLLM's stream: a role chunk, then deltas of 1-3 tokens with their entries, a finish, usage."""
    yield {"created": 1, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}]}
    i = 0
    while i < len(tokens):
        group = tokens[i : i + rng.randint(1, 3)]
        i += len(group)
        yield {"created": 1, "choices": [{"index": 0, "delta": {"content": "".join(group)},
                                          "logprobs": {"content": [_entry(t) for t in group]},
                                          "finish_reason": "stop" if i >= len(tokens) else None}]}  # fmt: skip
    yield {"created": 1, "choices": [], "usage": {"completion_tokens": len(tokens)}}


async def _relay(text: str, seed: int) -> tuple[str, list[str], list[tuple[str, list[str]]]]:
    """Run ``relay``; return the text sent, every token whose entry was sent, and (text so far, tokens so
    far) after each chunk."""
    rng = random.Random(seed)
    upstream = _upstream(_tokens(text, rng), rng)
    first = await anext(upstream)
    state = StreamState("chatcmpl-test", "flywheel", include_usage=False)
    sent, tokens, steps = "", [], []
    async for chunk in relay(upstream, first, state, lambda: StreamGuard(_chain()), "refused", n=1):
        for choice in chunk["choices"]:
            sent += choice["delta"].get("content") or ""
            tokens += [e["token"] for e in (choice["logprobs"] or {}).get("content") or []]
        steps.append((sent, list(tokens)))
    return sent, tokens, steps


@pytest.mark.parametrize("seed", range(6))
async def test_every_entry_is_sent_in_order_and_never_ahead_of_its_text(seed: int) -> None:
    sent, tokens, steps = await _relay(CLEAN, seed)
    assert sent == CLEAN
    assert "".join(tokens) == CLEAN  # all of vLLM's entries, in order
    for text_so_far, tokens_so_far in steps:
        assert text_so_far.startswith("".join(tokens_so_far))  # a token's entry never precedes its text


@pytest.mark.parametrize("seed", range(6))
async def test_tokens_of_a_redacted_span_are_never_sent(seed: int) -> None:
    text = CLEAN[:120] + f"Write to {EMAIL} for a refund. " + CLEAN[120:]
    sent, tokens, _ = await _relay(text, seed)
    assert EMAIL not in sent and "[EMAIL" in sent  # the text itself was redacted
    joined = "".join(tokens)
    for part in ("jane", "doe@", "example.org"):
        assert part not in joined, f"a token of the redacted address was sent: {part!r}"
    assert joined.startswith(CLEAN[:60]) and joined.endswith(CLEAN[-60:])  # the rest still has its entries


@pytest.mark.parametrize("seed", range(6))
async def test_tokens_of_a_refused_answer_are_never_sent(seed: int) -> None:
    text = CLEAN[:150] + f"Your key is {SECRET} keep it. " + CLEAN[150:]
    sent, tokens, _ = await _relay(text, seed)
    assert SECRET[:8] not in sent
    assert SECRET[:8] not in "".join(tokens) and text.startswith("".join(tokens))
