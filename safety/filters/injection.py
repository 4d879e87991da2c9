"""Prompt-injection and jailbreak patterns, matched on folded text (see :mod:`safety.normalize`).

Patterns catch the well-known phrasings with certainty; the learned classifier
(:mod:`safety.filters.learned`) catches paraphrases. Each pattern needs an attack-specific object
("previous instructions", "system prompt", "developer mode") next to its verb, so support questions
such as "ignore the error and retry?" or "how do I kill a stuck backup" do not match.
"""

from __future__ import annotations

import re

from safety.filters.base import Check, CheckContext
from safety.normalize import fold
from safety.verdict import Verdict

_PUNCT = re.compile(r"[^a-z0-9']+")
_PRIOR = r"(?:previous|prior|above|earlier|preceding|initial|original|system|developer|all(?: of)?(?: the| your)?|your|any|these|those|the previous|the above|the system)"
_RULES = r"(?:instructions?|prompts?|rules|directives?|guidelines|commands|programming|guardrails?|restrictions|constraints|policies|training|context|messages?)"

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "ignore-instructions",
        re.compile(
            rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop|discard|abandon|neglect|erase|delete)\b"
            rf"(?: \w+){{0,3}} {_PRIOR}(?: \w+){{0,2}} {_RULES}\b"
        ),
    ),
    (
        "reveal-system-prompt",
        re.compile(
            r"\b(?:reveal|show|print|repeat|output|display|tell|give|leak|dump|recite|share|spell out|"
            r"what (?:is|are|was|were)|copy|paste|write out|translate)\b(?: \w+){0,5} "
            r"(?:system|initial|hidden|secret|original|developer|internal|pre ?prompt|confidential)"
            r"(?: \w+)? (?:prompt|instructions|message|rules|configuration|directives|guidelines)\b"
        ),
    ),
    (
        "repeat-above",
        re.compile(
            r"\b(?:repeat|print|output|recite|echo|copy|write)\b(?: \w+){0,4} "
            r"(?:everything|all|text|words|lines|content)(?: \w+){0,4} (?:above|before this|before my message)\b"
            r"(?: \w+){0,6} (?:verbatim|word for word|exactly|in full|unchanged|including)\b"
        ),
    ),
    (
        "persona-no-rules",
        re.compile(
            r"\b(?:you are|you're|act as|acting as|pretend(?: to be| you are| that you are)?|roleplay as|"
            r"role ?play as|become|behave like|from now on,? you)\b(?: [\w,]+){0,8} "
            r"(?:no (?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|boundaries)|"
            r"unrestricted|unfiltered|uncensored|unbound|unlimited|amoral|jailbroken|"
            r"without (?:any )?(?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|censorship))\b"
        ),
    ),
    (
        "named-jailbreak",
        re.compile(
            r"\b(?:dan|do anything now|stan|dude|aim|evilbot|betterdan|anti ?gpt|chaosgpt|wormgpt)\b"
            r"(?: \w+){0,6} (?:mode|prompt|persona|jailbreak|can do anything|has no|which stands)\b"
            r"|\bdo anything now\b"
        ),
    ),
    (
        "special-mode",
        re.compile(
            r"\b(?:enable|activate|enter|switch to|turn on|you are (?:now )?in|entering|engage)\b(?: \w+){0,2} "
            r"(?:developer|dev|god|jailbreak|unrestricted|unfiltered|uncensored|evil|debug|sudo|admin|root|dan)"
            r" mode\b"
        ),
    ),
    (
        "disable-safety",
        re.compile(
            r"\b(?:disable|turn off|deactivate|remove|bypass|ignore|circumvent|switch off|lift|suspend|drop)\b"
            r"(?: \w+){0,3} (?:safety|moderation|ethical|ethics|guard ?rails?|censorship|content polic(?:y|ies)|"
            r"alignment|refusals?)(?: (?:filters?|guidelines|rules|protocols|measures|settings|training|checks))?\b"
        ),
    ),
    (
        "no-refusal",
        re.compile(
            r"\b(?:never|do not|don't|must not|cannot|can't|will not|won't)\b (?:ever )?"
            r"(?:refuse|decline|say no|say (?:that )?you can(?:no|')t|apologi[sz]e|add (?:any )?(?:warnings|disclaimers))\b"
            r"(?: \w+){0,6} (?:request|question|anything|answer|prompt|me|this)\b"
        ),
    ),
    (
        "fake-turn-markers",
        re.compile(
            r"<\|?(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|?>|\[/?(?:inst|system)\]|<<\s*sys\s*>>"
            r"|\b(?:system|developer|admin) ?(?:message|prompt|override|note)? ?: ?(?:you are|from now|ignore|new|disregard)"
        ),
    ),
    (
        "new-instructions",
        re.compile(
            r"\b(?:new|updated|real|actual|true|secret|hidden|override|priority) (?:system )?instructions? ?:"
            r"|\b(?:note|message|instruction) to (?:the )?(?:ai|assistant|model|llm|chatbot)\b"
        ),
    ),
]


class InjectionFilter:
    """Blocks a text that matches any prompt-injection / jailbreak pattern after folding."""

    def __init__(self, name: str = "injection", patterns: list[tuple[str, re.Pattern[str]]] | None = None) -> None:
        self.name = name
        self.patterns = patterns if patterns is not None else PATTERNS

    def check(self, text: str, context: CheckContext) -> Check:
        folded = fold(text)
        plain = _PUNCT.sub(" ", folded)  # "ignore, all previous: instructions" reads as words
        for label, pattern in self.patterns:
            if pattern.search(folded) or pattern.search(plain):
                return Check(Verdict(self.name, "block", f"matched {label}", 1.0), text)
        return Check(Verdict(self.name, "allow"), text)
