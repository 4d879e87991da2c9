"""The configured input and output filter chains of one deployment.

Input: every non-system message is checked by the pattern filters (a client controls the whole
history, so a forged earlier turn is as dangerous as the last one) and PII in it is redacted; the
learned classifier (tens of ms of CPU) runs on the last user message only. Output: the answer is
checked against the deployment's system prompt, secrets, blocklist and PII. Filters never raise
into the request path: a filter that fails yields a ``block`` verdict naming the error (fail closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safety.filters.base import Check, CheckContext, Filter
from safety.filters.blocklist import BlocklistFilter
from safety.filters.injection import InjectionFilter
from safety.filters.leaks import SecretLeakFilter, SystemPromptLeakFilter
from safety.filters.pii import PiiFilter
from safety.verdict import ChainResult, Verdict

if TYPE_CHECKING:
    from flywheel.settings import Settings
    from safety.classifier import TextEncoder

logger = logging.getLogger("flywheel.safety")

INPUT_FILTERS = ("pii", "injection", "blocklist", "classifier")
OUTPUT_FILTERS = ("secret_leak", "system_prompt_leak", "blocklist", "pii_leak")


class SafetyConfigError(ValueError):
    """The safety configuration names an unknown filter or a missing required artifact."""


@dataclass
class SafetyChain:
    """Ordered input and output filters; ``classifier_filters`` run on the last user message only."""

    input_filters: list[Filter]
    output_filters: list[Filter]
    classifier_filters: list[Filter] = field(default_factory=list)
    system_prompt: str | None = None
    refusal_message: str = "Sorry, I can't help with that request."
    holdback_chars: int = 96

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings, encoder: TextEncoder | None = None, system_prompt: str | None = None) -> SafetyChain:
        """Build the deployment's chain. Pass the process's shared encoder to avoid a second copy.

        With ``classifier`` configured but no trained artifact, the chain runs without it and logs a
        warning, unless ``safety_classifier_required`` is set.
        """
        if not settings.safety_enabled:
            return cls([], [], refusal_message=settings.safety_refusal_message, holdback_chars=0)
        unknown = (set(settings.safety_input_filters) - set(INPUT_FILTERS)) | (
            set(settings.safety_output_filters) - set(OUTPUT_FILTERS)
        )
        if unknown:
            raise SafetyConfigError(f"unknown safety filters: {', '.join(sorted(unknown))}")
        if settings.safety_pii_leak_action not in ("redact", "block"):
            raise SafetyConfigError("safety_pii_leak_action must be 'redact' or 'block'")
        try:
            blocklist = BlocklistFilter(topics=settings.safety_blocked_topics, terms=settings.safety_blocked_terms)
        except ValueError as exc:
            raise SafetyConfigError(str(exc)) from exc
        secrets = [*settings.safety_secrets, *settings.api_keys, *settings.admin_keys]
        by_name: dict[str, Filter] = {
            "pii": PiiFilter("pii"),
            "injection": InjectionFilter(),
            "blocklist": blocklist,
            "secret_leak": SecretLeakFilter(secrets=secrets),
            "system_prompt_leak": SystemPromptLeakFilter(ngram=settings.safety_system_prompt_ngram),
            "pii_leak": PiiFilter(
                "pii_leak",
                kinds=("EMAIL", "IBAN", "CARD", "PHONE", "IP"),  # SECRET: secret_leak blocks the real ones
                allowlist=settings.safety_pii_allowlist,
                on_found=settings.safety_pii_leak_action,  # type: ignore[arg-type]
            ),
        }
        classifier_filters: list[Filter] = []
        if "classifier" in settings.safety_input_filters:
            learned = _load_classifier(settings, encoder)
            if learned is not None:
                classifier_filters.append(learned)
        return cls(
            input_filters=[by_name[n] for n in settings.safety_input_filters if n != "classifier"],
            output_filters=[by_name[n] for n in settings.safety_output_filters],
            classifier_filters=classifier_filters,
            system_prompt=system_prompt if system_prompt is not None else settings.safety_system_prompt,
            refusal_message=settings.safety_refusal_message,
            holdback_chars=settings.safety_holdback_chars,
        )

    # --- checks ------------------------------------------------------------------------------
    def check_input(self, messages: Sequence[dict[str, Any]]) -> ChainResult:
        """Check a chat request's messages; ``result.messages`` is the redacted copy to send on."""
        start = time.perf_counter()
        verdicts: list[Verdict] = []
        out: list[dict[str, Any]] = []
        last_user = ""
        for message in messages:
            role = str(message.get("role", "user"))
            text = message_text(message)
            if role == "system" or not text:
                out.append(dict(message))
                continue
            context = CheckContext(role=role)
            for flt in self.input_filters:
                check = _run(flt, text, context)
                verdicts.append(check.verdict)
                text = check.text
            out.append(_with_text(message, text))
            if role == "user":
                last_user = text
        blocked = any(v.action == "block" for v in verdicts)
        if last_user and not blocked:  # no need to pay for the model once a pattern blocked
            for flt in self.classifier_filters:
                verdicts.append(_run(flt, last_user, CheckContext(role="user")).verdict)
        return ChainResult(
            "input", _merge(verdicts), last_user, messages=out, latency_ms=(time.perf_counter() - start) * 1000
        )

    def check_output(self, text: str, context: CheckContext | None = None) -> ChainResult:
        """Check an answer (or a streaming window of one); ``result.text`` is what may be sent."""
        start = time.perf_counter()
        context = context or CheckContext(system_prompt=self.system_prompt)
        if context.system_prompt is None and self.system_prompt:
            context = replace(context, system_prompt=self.system_prompt)
        verdicts: list[Verdict] = []
        for flt in self.output_filters:
            check = _run(flt, text, context)
            verdicts.append(check.verdict)
            text = check.text
            if check.verdict.action == "block":
                break
        return ChainResult("output", tuple(verdicts), text, latency_ms=(time.perf_counter() - start) * 1000)


def message_text(message: dict[str, Any]) -> str:
    """The text of an OpenAI message: a string, or the text parts of a content list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _with_text(message: dict[str, Any], text: str) -> dict[str, Any]:
    copy = dict(message)
    if isinstance(message.get("content"), list):
        parts = [p for p in message["content"] if not (isinstance(p, dict) and p.get("type") == "text")]
        copy["content"] = [{"type": "text", "text": text}, *parts]
    else:
        copy["content"] = text
    return copy


def _run(flt: Filter, text: str, context: CheckContext) -> Check:
    try:
        return flt.check(text, context)
    except Exception as exc:  # a broken filter must not turn into an HTTP 500, nor let text through
        logger.exception("safety filter %s failed", flt.name)
        return Check(Verdict(flt.name, "block", f"filter error: {type(exc).__name__}", 1.0), text)


def _merge(verdicts: list[Verdict]) -> tuple[Verdict, ...]:
    """One verdict per filter (its most severe, highest score) so multi-message requests stay compact."""
    rank = {"allow": 0, "redact": 1, "block": 2}
    best: dict[str, Verdict] = {}
    for v in verdicts:
        cur = best.get(v.filter)
        if cur is None or (rank[v.action], v.score) > (rank[cur.action], cur.score):
            best[v.filter] = v
    return tuple(best.values())


def _load_classifier(settings: Settings, encoder: TextEncoder | None) -> Filter | None:
    from safety.classifier import ClassifierError, SafetyClassifier
    from safety.filters.learned import ClassifierFilter

    path: Path = settings.safety_classifier_dir
    if not (path / "manifest.json").is_file():
        if settings.safety_classifier_required:
            raise SafetyConfigError(f"{path}: no safety classifier; run `flywheel safety train`")
        logger.warning("safety classifier not found at %s; running pattern filters only", path)
        return None
    if encoder is None:
        from gateway.grounding.encoder import Encoder  # the shared offline MiniLM loader

        encoder = Encoder.from_settings(settings)
    try:
        classifier = SafetyClassifier.load(path, encoder, settings.safety_classifier_threshold)
    except ClassifierError as exc:
        raise SafetyConfigError(str(exc)) from exc
    return ClassifierFilter(classifier)
