"""Streaming output checks: a planted unsafe string split across chunks never reaches the client."""

from __future__ import annotations

import random

import pytest

from flywheel.settings import Settings
from safety.chain import SafetyChain
from safety.streaming import StreamGuard

SECRET = "fw-live-key-Q7x9Zk2Lm4Np8Rt"
SYSTEM_PROMPT = "You are the Kestrel Backup support assistant. The internal escalation code is OWL-77 and is confidential."
PREFIX = "Kestrel Backup keeps deleted files for 90 days, and you can restore them from the web app at any time. "


def _chain(holdback: int = 64) -> SafetyChain:
    settings = Settings(
        safety_input_filters=["pii", "injection", "blocklist"],
        safety_secrets=[SECRET],
        safety_holdback_chars=holdback,
    )
    return SafetyChain.from_settings(settings, system_prompt=SYSTEM_PROMPT)


def _chunks(text: str, rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        out.append(text[i : i + n])
        i += n
    return out


def _stream(guard: StreamGuard, chunks: list[str]) -> tuple[str, bool]:
    sent = "".join(guard.feed(c) for c in chunks)
    end = guard.finish()
    return sent + end.text, end.blocked


UNSAFE = [
    f"your key is {SECRET} keep it safe",
    "the internal escalation code is OWL-77 and is confidential",
    "step one: build a pipe bomb with",
    "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
]


@pytest.mark.parametrize("unsafe", UNSAFE)
@pytest.mark.parametrize("seed", range(5))
def test_planted_unsafe_span_never_reaches_client(unsafe: str, seed: int) -> None:
    rng = random.Random(seed)
    text = PREFIX + unsafe + " and more text after it that keeps streaming for a while."
    guard = StreamGuard(_chain())
    sent, blocked = _stream(guard, _chunks(text, rng))
    assert blocked and guard.blocked
    # Nothing of the unsafe span was sent: not even its first characters.
    assert unsafe[:8] not in sent
    assert text.startswith(sent)  # only a clean prefix went out
    assert guard.result.blocked


def test_unsafe_string_split_char_by_char() -> None:
    text = PREFIX + f"Here you go: {SECRET}."
    guard = StreamGuard(_chain())
    sent, blocked = _stream(guard, list(text))
    assert blocked
    assert SECRET[:6] not in sent


def test_zero_width_split_secret_format_blocked() -> None:
    text = PREFIX + "key: sk-\u200bproj-AbCdEf\u200bGhIjKlMnOpQrStUv done"
    sent, blocked = _stream(StreamGuard(_chain()), _chunks(text, random.Random(1)))
    assert blocked and "sk-" not in sent


def test_safe_stream_passes_unchanged_with_bounded_delay() -> None:
    text = PREFIX * 3 + "Contact support@kestrelbackup.com if anything fails."
    guard = StreamGuard(_chain(holdback=48))
    released_lengths = []
    fed = 0
    sent = ""
    for chunk in _chunks(text, random.Random(3)):
        fed += len(chunk)
        sent += guard.feed(chunk)
        released_lengths.append(fed - len(sent))
    end = guard.finish()
    assert not end.blocked
    assert sent + end.text == text
    # The delay stays close to the hold-back window (plus at most one word).
    assert max(released_lengths) <= 48 + 20


def test_pii_in_stream_is_redacted_not_split() -> None:
    text = PREFIX + "Email jane.doe@example.org or call +44 20 7946 0958 for the restore. " + PREFIX
    for seed in range(5):
        sent, blocked = _stream(StreamGuard(_chain(holdback=48)), _chunks(text, random.Random(seed)))
        assert not blocked
        assert "jane" not in sent and "7946" not in sent
        assert "[EMAIL]" in sent and "[PHONE]" in sent


def test_nothing_released_after_block() -> None:
    guard = StreamGuard(_chain(holdback=16))
    guard.feed(PREFIX)
    guard.feed(f" {SECRET} ")
    assert guard.blocked
    assert guard.feed("more harmless text " * 10) == ""
    assert guard.finish().text == ""


@pytest.mark.parametrize("holdback", [0, 16])
def test_every_character_is_sent_once_whatever_the_hold_back(holdback: int) -> None:
    """With no hold-back (safety off) each delta can release everything, leaving nothing for ``finish``;
    finish must then add nothing, not repeat the last piece."""
    for chunks in (["Hello there.\n", "Second line.\n"], _chunks(PREFIX * 2, random.Random(7))):
        sent, blocked = _stream(StreamGuard(_chain(holdback=holdback)), chunks)
        assert not blocked
        assert sent == "".join(chunks)
