"""PII as a filter: redact it in requests, catch it leaking in answers (wraps :mod:`safety.pii`).

Allow-listed values (the product's own support address and phone number) pass through: the
assistant is meant to give them out.
"""

from __future__ import annotations

from collections.abc import Iterable

from safety import pii
from safety.filters.base import Check, CheckContext
from safety.verdict import Action, Verdict


class PiiFilter:
    """``redact`` (or ``block``) when any of ``kinds`` is found; other kinds are ignored."""

    def __init__(
        self,
        name: str = "pii",
        *,
        kinds: Iterable[str] = pii.KINDS,
        allowlist: Iterable[str] = (),
        on_found: Action = "redact",
    ) -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self.allowlist = tuple(a for a in allowlist if a)
        self.on_found: Action = on_found

    def check(self, text: str, context: CheckContext) -> Check:
        masked, saved = self._mask_allowed(text)
        result = pii.redact(masked)
        found = {k: n for k, n in result.kinds.items() if k in self.kinds}
        if not found:
            return Check(Verdict(self.name, "allow"), text)
        reason = ", ".join(f"{k.lower()} x{n}" for k, n in sorted(found.items()))
        return Check(Verdict(self.name, self.on_found, reason, 1.0), self._unmask(result.text, saved))

    def _mask_allowed(self, text: str) -> tuple[str, list[str]]:
        saved: list[str] = []
        for i, value in enumerate(self.allowlist):
            if value in text:
                text = text.replace(value, f"\u27e6ALLOW{i}\u27e7")
                saved.append(value)
            else:
                saved.append("")
        return text, saved

    @staticmethod
    def _unmask(text: str, saved: list[str]) -> str:
        for i, value in enumerate(saved):
            if value:
                text = text.replace(f"\u27e6ALLOW{i}\u27e7", value)
        return text
