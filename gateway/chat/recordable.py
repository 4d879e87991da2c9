"""Which answers of a request may enter the training data, and as what text.

Ratings train the policy on the answer the user rated, so an interaction records what the user was
served — the redacted text, not the raw one — and never an answer output safety blocked: a thumbs-up on
a refusal must not make the blocked text a "chosen" example (a way to poison the preference data). The
best-of-n candidates the user did not see were never checked on the request path; they are checked here,
and a blocked one is left out, so that no pair can prefer it either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from safety.verdict import ChainResult


class Recordable(NamedTuple):
    """Candidates to record, the index of the served one among them, and their rewards (if scored)."""

    texts: list[str]
    chosen_index: int
    rewards: list[float] | None


NOTHING = Recordable([], 0, None)


def recordable_candidates(
    texts: list[str],
    chosen_index: int,
    rewards: list[float] | None,
    served: Mapping[int, ChainResult],
    check: Callable[[str], ChainResult],
) -> Recordable:
    """``served`` maps a candidate's index to the output check of what the user got for it; the other
    candidates are checked with ``check``. Any served answer blocked: nothing is recorded (as for a
    refused request)."""
    if any(result.blocked for result in served.values()):
        return NOTHING
    kept: list[int] = []
    out: list[str] = []
    for i, text in enumerate(texts):
        result = served.get(i)
        if result is None:
            result = check(text)
            if result.blocked:
                continue
        kept.append(i)
        out.append(result.text)
    if chosen_index not in kept:
        return NOTHING
    return Recordable(out, kept.index(chosen_index), [rewards[i] for i in kept] if rewards else None)
