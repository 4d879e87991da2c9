"""Server-sent events for chat: relaying vLLM's stream through the output guard, and replaying a finished
answer (best-of-n, refusals) as a stream.

Output safety on a stream works over a hold-back window (``safety.streaming.StreamGuard``): text is sent
only once the window after it has been checked, so an unsafe string split across chunks never reaches
the client; the cost is up to ``safety_holdback_chars`` of delay. Token logprobs follow the text they
belong to (:class:`HeldLogprobs`).

The ``flywheel`` object rides on the stream's last chunk, which is the chunk OpenAI would end with: the
usage chunk (empty ``choices``) when the client asked for usage, otherwise the last choice's
``finish_reason`` chunk. So a client that did not ask for usage never gets a chunk with empty
``choices`` (``chunk.choices[0]``, as the ``openai`` SDK's own examples read a stream, keeps working),
and one that did gets usage on the last chunk, as OpenAI sends it. The bodies below yield chunk objects;
the service holds back each chunk that may be the last (:func:`may_end_stream`) until the next one
comes, and adds the ``flywheel`` object to whichever was last.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from safety.refusal import refusal_chunks
from safety.streaming import StreamGuard
from safety.verdict import ChainResult

_encode = msgspec.json.encode
DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def may_end_stream(chunk: dict[str, Any]) -> bool:
    """A chunk the stream may end with: a choice's ``finish_reason`` chunk, or the usage chunk."""
    choices = chunk["choices"]
    return not choices or any(choice.get("finish_reason") for choice in choices)


@dataclass
class StreamState:
    """What a stream produced, for metrics and the interaction event."""

    response_id: str
    model: str
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))
    texts: dict[int, list[str]] = field(default_factory=dict)
    outputs: dict[int, ChainResult] = field(default_factory=dict)
    completion_tokens: int = 0
    status: str = "200"
    best: Any = None  # (Choice, candidate texts, target) when best-of-n picked the streamed answer

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.response_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": choices, **extra}  # fmt: skip

    def joined(self) -> list[str]:
        return ["".join(self.texts[i]) for i in sorted(self.texts)]


def _delta(
    index: int, content: str | None = None, finish: str | None = None, role: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict:  # fmt: skip
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content:
        delta["content"] = content
    return {"index": index, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
            "finish_reason": finish}  # fmt: skip


@dataclass
class HeldLogprobs:
    """One choice's token logprobs, held until the guard has released the text they belong to.

    The guard releases text at whitespace, not at vLLM's chunk boundaries, so each upstream delta's
    entries wait until all of that delta's characters are out (``StreamGuard.consumed_chars``), then go
    with the next chunk sent: the entries a client collects over the stream are vLLM's, in order. Where a
    release was redacted, the entries of every delta that overlaps it are dropped, never sent: their
    tokens would spell out (part of) what the redaction removed.
    """

    fed: int = 0  # characters fed to the guard so far
    waiting: deque[tuple[int, int, list[dict[str, Any]]]] = field(default_factory=deque)  # (start, end, entries)

    def add(self, text: str, choice: dict[str, Any]) -> None:
        start, self.fed = self.fed, self.fed + len(text)
        entries = (choice.get("logprobs") or {}).get("content")
        if entries:
            self.waiting.append((start, self.fed, entries))

    def take(self, guard: StreamGuard) -> list[dict[str, Any]]:
        """The entries whose text the guard has released, less those behind a redacted release."""
        consumed = guard.consumed_chars
        if guard.last_release_changed:
            while self.waiting and self.waiting[0][0] < consumed:
                self.waiting.popleft()
        out: list[dict[str, Any]] = []
        while self.waiting and self.waiting[0][1] <= consumed:
            out.extend(self.waiting.popleft()[2])
        return out


async def relay(
    upstream: AsyncIterator[dict[str, Any]],
    first: dict[str, Any] | None,
    state: StreamState,
    new_guard: Callable[[], StreamGuard],
    refusal_message: str,
    n: int,
) -> AsyncIterator[dict[str, Any]]:
    """Forward vLLM's chunks, each choice's text through its own guard; stop a choice that turns unsafe."""
    guards: dict[int, StreamGuard] = {}
    held: dict[int, HeldLogprobs] = {}
    blocked: set[int] = set()
    chunk = first
    while chunk is not None:
        state.created = chunk.get("created", state.created)
        usage = chunk.get("usage")
        if usage and not chunk.get("choices"):
            state.completion_tokens = usage.get("completion_tokens", 0)
            if state.include_usage:
                yield state.chunk([], usage=usage)
            chunk = await anext(upstream, None)
            continue
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            if index in blocked:
                continue
            guard = guards.get(index) or guards.setdefault(index, new_guard())
            logprobs = held.get(index) or held.setdefault(index, HeldLogprobs())
            delta = choice.get("delta") or {}
            content = delta.get("content") or ""
            released = guard.feed(content)
            logprobs.add(content, choice)
            finish = choice.get("finish_reason")
            if guard.blocked:
                blocked.add(index)
                state.outputs[index] = guard.result
                for refusal in refusal_chunks(completion_id=state.response_id, model=state.model,
                                              message=refusal_message, index=index, created=state.created):
                    refusal.pop("flywheel", None)
                    yield refusal
                continue  # fmt: skip
            if released or delta.get("role"):
                state.texts.setdefault(index, []).append(released)
                yield state.chunk([_delta(index, released, role=delta.get("role"), logprobs=logprobs.take(guard))])
            if finish:
                end = guard.finish()
                state.outputs[index] = end.result
                if end.blocked:
                    blocked.add(index)
                    for refusal in refusal_chunks(completion_id=state.response_id, model=state.model,
                                                  message=refusal_message, index=index, created=state.created):
                        refusal.pop("flywheel", None)
                        yield refusal
                    continue  # fmt: skip
                if end.text:
                    state.texts.setdefault(index, []).append(end.text)
                yield state.chunk([_delta(index, end.text, finish=finish, logprobs=logprobs.take(guard))])
        if len(blocked) >= n:
            return  # every choice is refused: stop reading, so vLLM stops generating
        chunk = await anext(upstream, None)


async def replay(
    state: StreamState, texts: list[str], finishes: list[str], logprobs: list[list[dict[str, Any]] | None]
) -> AsyncIterator[dict[str, Any]]:
    """Send finished answers as a stream (best-of-n picks after generating, so it cannot stream live);
    each answer's token logprobs, if any, go with its finish chunk."""
    for index, (text, finish, entries) in enumerate(zip(texts, finishes, logprobs, strict=True)):
        yield state.chunk([_delta(index, role="assistant")])
        words = text.split(" ")
        for i in range(0, len(words), 4):
            piece = " ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "")
            yield state.chunk([_delta(index, piece)])
            await asyncio.sleep(0)
        yield state.chunk([_delta(index, finish=finish, logprobs=entries)])
