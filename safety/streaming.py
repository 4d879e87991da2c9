"""Output checks for streamed answers: a sliding hold-back window between the policy and the client.

Each delta is appended to a pending buffer; the buffer plus the tail of what was already released
is checked by the output chain, and only text more than ``holdback_chars`` behind the newest
character is released (cut at whitespace, never inside a redacted span). An unsafe span is found
the moment its last character arrives; by then none of its characters has been released as long
as it is at most ``holdback_chars`` long. So no unsafe text reaches the client even when it spans
chunk boundaries, at the price of ``holdback_chars`` of delay. Once blocked, nothing more is released.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safety.chain import SafetyChain, _merge
from safety.filters.base import CheckContext
from safety.verdict import ChainResult, Verdict

_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class StreamEnd:
    """What :meth:`StreamGuard.finish` returns: the last safe text to send and the overall result."""

    text: str
    result: ChainResult

    @property
    def blocked(self) -> bool:
        return self.result.blocked


class StreamGuard:
    """Feed it the policy's deltas; send the client only what it returns."""

    def __init__(
        self,
        chain: SafetyChain,
        holdback_chars: int | None = None,
        context: CheckContext | None = None,
        lookback_chars: int = 256,
        max_pending_factor: int = 4,
    ) -> None:
        self.chain = chain
        self.holdback = chain.holdback_chars if holdback_chars is None else holdback_chars
        self.context = context or CheckContext(system_prompt=chain.system_prompt)
        self.lookback = max(lookback_chars, self.holdback)
        self.max_pending = max(self.holdback * max_pending_factor, self.holdback + 32)
        self._pending = ""
        self._tail = ""
        self._released: list[str] = []
        self._verdicts: list[Verdict] = []
        self._blocked = False
        self._consumed = 0  # characters of the policy's text released so far (before redaction)
        self._last_changed = False

    @property
    def blocked(self) -> bool:
        return self._blocked

    @property
    def released_text(self) -> str:
        return "".join(self._released)

    @property
    def consumed_chars(self) -> int:
        """How many characters of the fed text have been released (counted before redaction): what lets
        a caller tell which of the policy's tokens the released text covers."""
        return self._consumed

    @property
    def last_release_changed(self) -> bool:
        """Whether the latest release differs from the policy's text (a redaction): the tokens behind it
        must not be shown (their logprobs would spell out what was redacted)."""
        return self._last_changed

    def feed(self, delta: str) -> str:
        """Add a delta; return the text that is now safe to send (often empty)."""
        if self._blocked or not delta:
            return ""
        self._pending += delta
        window = self._check(self._tail + self._pending)
        if window.blocked:
            return self._block()
        target = len(self._pending) - self.holdback
        if target <= 0:
            return ""
        cut = self._cut(target, check_redactions=window.redacted)
        if cut <= 0:
            return ""
        return self._release(cut)

    def finish(self) -> StreamEnd:
        """End of the policy's stream: check what is left and release it, or report the block."""
        last = ""  # only what this call releases: with nothing pending (no hold-back) there is nothing new
        if not self._blocked and self._pending:
            window = self._check(self._tail + self._pending)
            if window.blocked:
                self._block()
            else:
                last = self._release(len(self._pending))
        return StreamEnd("" if self._blocked else last, self.result)

    @property
    def result(self) -> ChainResult:
        return ChainResult("output", _merge(self._verdicts), self.released_text)

    # --- internals ---------------------------------------------------------------------------
    def _check(self, text: str) -> ChainResult:
        result = self.chain.check_output(text, self.context)
        self._verdicts.extend(result.verdicts)
        return result

    def _block(self) -> str:
        self._blocked = True
        self._pending = ""
        return ""

    def _cut(self, target: int, *, check_redactions: bool) -> int:
        """The release point: the last whitespace at or before ``target`` that splits no redacted span."""
        candidates = [m.end() for m in _SPACE.finditer(self._pending, 0, target)]
        if not candidates and len(self._pending) >= self.max_pending:
            candidates = [target]  # one endless "word": release anyway, still holdback chars behind
        if not check_redactions:
            return candidates[-1] if candidates else 0
        whole = self.chain.check_output(self._pending, self.context).text
        for cut in reversed(candidates[-8:]):
            left = self.chain.check_output(self._pending[:cut], self.context).text
            right = self.chain.check_output(self._pending[cut:], self.context).text
            if left + right == whole:
                return cut
        return 0

    def _release(self, cut: int) -> str:
        raw = self._pending[:cut]
        checked = self.chain.check_output(raw, self.context)
        if checked.blocked:  # cannot happen when the window passed, but never release a block
            return self._block()
        self._verdicts.extend(checked.verdicts)
        self._pending = self._pending[cut:]
        self._tail = (self._tail + raw)[-self.lookback :]
        self._released.append(checked.text)
        self._consumed += cut
        self._last_changed = checked.text != raw
        return checked.text
