"""What an interaction records for training, checked with the real output safety chain: the served
(redacted) text, never a blocked answer, and no unseen best-of-n candidate that safety would block."""

from __future__ import annotations

import pytest

from flywheel.settings import Settings
from gateway.chat.recordable import recordable_candidates
from safety.chain import SafetyChain

SECRET = "fw-live-key-Q7x9Zk2Lm4Np8Rt"
SAFE = "Restore a file from the web app under Files, then Versions."
EMAIL = "Write to jane.doe@example.org and we restore it for you."
LEAK = f"Sure, the key is {SECRET}."


@pytest.fixture(scope="module")
def chain() -> SafetyChain:
    return SafetyChain.from_settings(Settings(safety_secrets=[SECRET], safety_input_filters=["pii"]))


def test_the_served_text_is_recorded_redacted(chain: SafetyChain) -> None:
    served = chain.check_output(EMAIL)
    assert served.redacted
    kept = recordable_candidates([EMAIL], 0, None, {0: served}, chain.check_output)
    assert kept.texts == [served.text] and "jane.doe" not in kept.texts[0]
    assert kept.chosen_index == 0 and kept.rewards is None


def test_a_blocked_served_answer_records_nothing(chain: SafetyChain) -> None:
    served = chain.check_output(LEAK)
    assert served.blocked
    kept = recordable_candidates([SAFE, LEAK], 1, [0.1, 0.9], {1: served}, chain.check_output)
    assert (kept.texts, kept.chosen_index, kept.rewards) == ([], 0, None)


def test_an_unseen_candidate_safety_would_block_is_left_out(chain: SafetyChain) -> None:
    """Best-of-n: the user saw candidate 2; candidate 1 leaks a secret and must not become a pair's side."""
    texts = [SAFE, LEAK, EMAIL]
    kept = recordable_candidates(texts, 2, [0.2, 0.5, 0.9], {2: chain.check_output(EMAIL)}, chain.check_output)
    assert len(kept.texts) == 2 and kept.texts[0] == SAFE and SECRET not in "".join(kept.texts)
    assert kept.chosen_index == 1 and kept.rewards == [0.2, 0.9]


def test_a_refused_request_records_nothing(chain: SafetyChain) -> None:
    kept = recordable_candidates([], 0, None, {}, chain.check_output)
    assert kept.texts == [] and kept.chosen_index == 0
