"""Where an interaction is recorded: small ones on the event loop after the caller returns, large ones
(and any submitted outside a loop) in the recorder's thread; redaction applies on both paths."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from gateway.interactions import LOOP_MAX_CHARS, InteractionFacts, InteractionRecorder


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def log(self, event: Any) -> None:  # noqa: ANN401 - any event
        self.events.append((threading.current_thread().name, event))


def facts(content: str, response_id: str = "resp-1") -> InteractionFacts:
    return InteractionFacts(response_id=response_id, policy_version="seed",
                            messages=[{"role": "user", "content": content}], candidates=["Sure."])  # fmt: skip


def wait_for(sink: Sink, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(sink.events) < n:
        assert time.monotonic() < deadline, f"{len(sink.events)} of {n} events recorded"
        time.sleep(0.01)


def test_a_small_interaction_is_recorded_on_the_loop_after_the_caller_returns() -> None:
    sink = Sink()
    recorder = InteractionRecorder(sink, user_salt="salt")

    async def serve() -> int:
        recorder.submit(facts("Mail me at jane.doe@example.com"))
        recorded_before_returning = len(sink.events)
        await asyncio.sleep(0)  # one loop iteration: the callback runs
        return recorded_before_returning

    assert asyncio.run(serve()) == 0
    ((thread, event),) = sink.events
    assert thread == "MainThread"
    assert "jane.doe@example.com" not in event.messages[0].content  # redacted all the same
    recorder.close()


def test_a_large_interaction_goes_to_the_recorder_thread() -> None:
    sink = Sink()
    recorder = InteractionRecorder(sink, user_salt="salt")
    big = "word " * (LOOP_MAX_CHARS // 5) + "jane.doe@example.com"

    async def serve() -> None:
        recorder.submit(facts(big))

    asyncio.run(serve())
    wait_for(sink, 1)
    ((thread, event),) = sink.events
    assert thread == "interaction-recorder"
    assert "jane.doe@example.com" not in event.messages[0].content
    recorder.close()


def test_outside_an_event_loop_the_thread_records_it() -> None:
    sink = Sink()
    recorder = InteractionRecorder(sink, user_salt="salt")
    recorder.submit(facts("hello"))
    wait_for(sink, 1)
    assert sink.events[0][0] == "interaction-recorder"
    recorder.close()


def test_text_chars_counts_messages_parts_and_candidates() -> None:
    parts = InteractionFacts(response_id="r", policy_version="seed", candidates=["abc", "de"], messages=[
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "!"}]},
        {"role": "assistant", "content": None},
    ])  # fmt: skip
    assert parts.text_chars() == 6 + 5


def test_screening_work_runs_in_the_recorder_thread_and_decides_what_is_recorded() -> None:
    """Best-of-n candidates the user did not see are checked off the event loop, before recording."""
    sink = Sink()
    recorder = InteractionRecorder(sink, user_salt="salt")
    screened_on: list[str] = []

    def screen() -> tuple[list[str], int, list[float] | None]:
        screened_on.append(threading.current_thread().name)
        return ["Kept answer."], 0, [0.9]

    small = InteractionFacts(response_id="resp-s", policy_version="seed", messages=[{"role": "user", "content": "Hi"}],
                             candidates=["Kept answer.", "Leaky answer."], chosen_index=0, rewards=[0.9, 0.1],
                             screen=screen)  # fmt: skip

    async def serve() -> None:
        recorder.submit(small)
        await asyncio.sleep(0)

    asyncio.run(serve())
    wait_for(sink, 1)
    ((thread, event),) = sink.events
    assert thread == screened_on[0] == "interaction-recorder"
    assert [c.text for c in event.candidates] == ["Kept answer."] and event.candidates[0].reward == 0.9
    recorder.close()
