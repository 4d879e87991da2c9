"""Record each served interaction off the request path.

The chat service hands over raw facts (``InteractionFacts``) in O(1), after its response is built;
turning them into a ``feedback.events.Interaction`` (whose validators redact PII: for 500 characters
~0.05 ms of prose, 0.18 ms of text full of numbers; 0.12 and 0.58 ms for 2,000) and giving it to the
producer (which never blocks) happens later, in one of two places:

- a small interaction (the common chat turn) on the event loop, as a callback of its own between
  requests: Python that has to hold the GIL wherever it runs, and in a thread it also makes
  the loop wait for the GIL, up to the interpreter's 5 ms switch interval each time (measured with two
  workers at 32 connections over the stub: p99 14-15 ms on the loop against 15-20 ms in the thread);
- a large one in a worker thread, so that no single interaction holds the loop for milliseconds
  (the interpreter takes the GIL back from a thread every 5 ms; a loop callback runs to its end).

If the thread's hand-over queue is ever full, the caller's thread does the work itself: slower, but
nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedback.events import Candidate, Interaction, Message, hash_user

log = logging.getLogger(__name__)

# Characters of conversation and candidates up to which an interaction is recorded on the event loop:
# ~0.6 ms of work at most here (text full of numbers; 0.04-0.09 ms at 100 characters), well under the
# 5 ms a thread may make the loop wait; larger ones go to the worker thread.
LOOP_MAX_CHARS = 2_000


class EventSink(Protocol):
    def log(self, event: Any) -> None: ...


@dataclass
class InteractionFacts:
    response_id: str
    policy_version: str
    messages: list[dict[str, Any]]
    candidates: list[str]
    chosen_index: int = 0
    rewards: list[float] | None = None
    grounding_doc_ids: list[str] = field(default_factory=list)
    safety: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float | None = None
    trace_id: str | None = None
    user: str | None = None
    # Work that must not run on the event loop, done by the recorder's thread before recording: returns the
    # (candidates, chosen_index, rewards) to record instead (best-of-n output checks of unseen candidates).
    screen: Callable[[], tuple[list[str], int, list[float] | None]] | None = None

    def text_chars(self) -> int:
        """How much text recording this interaction redacts."""
        return sum(len(_text(m.get("content"))) for m in self.messages) + sum(map(len, self.candidates))


class InteractionRecorder:
    def __init__(self, sink: EventSink, user_salt: str, max_queue: int = 10_000) -> None:
        self._sink = sink
        self._salt = user_salt
        self._queue: queue.Queue[InteractionFacts | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="interaction-recorder", daemon=True)
        self._thread.start()
        self.recorded = 0

    def submit(self, facts: InteractionFacts) -> None:
        """Record ``facts`` soon, never now: on the caller's event loop if small (and nothing to screen),
        else in the thread."""
        if facts.screen is None and facts.text_chars() <= LOOP_MAX_CHARS:
            try:
                asyncio.get_running_loop().call_soon(self._record, facts)
                return
            except RuntimeError:  # not called from an event loop
                pass
        try:
            self._queue.put_nowait(facts)
        except queue.Full:
            self._record(facts)

    def _run(self) -> None:
        while True:
            facts = self._queue.get()
            if facts is None:
                return
            self._record(facts)

    def _record(self, facts: InteractionFacts) -> None:
        try:
            if facts.screen is not None:
                facts.candidates, facts.chosen_index, facts.rewards = facts.screen()
            rewards = facts.rewards or [None] * len(facts.candidates)  # type: ignore[list-item]
            event = Interaction(
                response_id=facts.response_id,
                policy_version=facts.policy_version,
                user_hash=hash_user(facts.user, self._salt),
                messages=[Message(role=m["role"], content=_text(m.get("content"))) for m in facts.messages],
                candidates=[Candidate(text=t, reward=r) for t, r in zip(facts.candidates, rewards, strict=True)],
                chosen_index=facts.chosen_index,
                grounding_doc_ids=facts.grounding_doc_ids,
                safety=facts.safety,
                latency_ms=facts.latency_ms,
                trace_id=facts.trace_id,
            )
            self._sink.log(event)
            self.recorded += 1
        except Exception:  # noqa: BLE001 - recording must never take the gateway down
            log.exception("could not record interaction %s", facts.response_id)

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued (shutdown), then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout_s)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
