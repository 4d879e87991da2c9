"""Record each served interaction off the request path.

The chat service hands over raw facts (``InteractionFacts``) in O(1); a worker thread turns them into
an ``feedback.events.Interaction`` (whose validators redact PII — ~0.4 ms per 500 characters, too much
to pay before responding) and gives it to the producer, which never blocks either. If the hand-over
queue is ever full, the caller's thread does the work itself: slower, but nothing is dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedback.events import Candidate, Interaction, Message, hash_user

log = logging.getLogger(__name__)


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


class InteractionRecorder:
    def __init__(self, sink: EventSink, user_salt: str, max_queue: int = 10_000) -> None:
        self._sink = sink
        self._salt = user_salt
        self._queue: queue.Queue[InteractionFacts | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="interaction-recorder", daemon=True)
        self._thread.start()
        self.recorded = 0

    def submit(self, facts: InteractionFacts) -> None:
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
