"""Prompt-injection and jailbreak patterns, matched on folded text (see :mod:`safety.normalize`).

Patterns catch the well-known phrasings with certainty; the learned classifier
(:mod:`safety.filters.learned`) catches paraphrases. Each pattern needs an attack-specific object
next to its verb, aimed at the assistant rather than at the product: "your/all previous
instructions" (not "the previous backup rules"), "your system prompt" or "instructions you were
given" (not "the system configuration page"), an imperative "enable developer mode" (not "how do
I enable debug mode"), and a jailbreak persona's name only in jailbreak context ("you are now DAN",
"act as AIM", "STAN mode", "do anything now"), never the bare word ("the aim of", "Stan from IT").
So support questions such as "ignore the error and retry?", "how do I kill a stuck backup" or
"show me the system requirements" do not match.
"""

from __future__ import annotations

import re

from safety.filters.base import Check, CheckContext
from safety.normalize import fold
from safety.verdict import Verdict

_PUNCT = re.compile(r"[^a-z0-9']+")
# Who the rules belong to: the assistant ("your", "all (of) the", "any") or a prior turn ("the above").
_PRIOR = (
    r"(?:previous|prior|above|earlier|preceding|initial|original|system|developer|all(?: of)?(?: the| your)?|"
    r"your|any|these|those|the previous|the above|the system)"
)
# Only these may sit between _PRIOR and the rules ("your safety training", "all previous system
# prompts"); a product noun ("the previous backup rules", "the initial setup instructions") may not.
_RULE_ADJ = (
    r"(?:system|safety|ethical|ethics|content|moderation|original|initial|given|prior|previous|above|earlier|"
    r"preceding|developer|programmed|built ?in|default|core|existing|current|old|openai|ai|model|assistant)"
)
_RULES = (
    r"(?:instructions?|prompts?|rules|directives?|guidelines|programming|guard ?rails?|restrictions|constraints|"
    r"training)"
)
# Nouns a support question also uses for its own history ("ignore the previous warning messages");
# they count only after "all ..."/"your"/"everything".
_WEAK_RULES = r"(?:messages?|context|commands|policies|conversation)"
_VERB_IGNORE = r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|discard|abandon|neglect|erase|delete)\b"
# What a reveal asks for: the assistant's own setup, not a page of the product.
_HIDDEN = r"(?:system|initial|hidden|secret|original|developer|internal|confidential|underlying|starting|opening)"
_SETUP = r"(?:prompt|instructions|message|rules|configuration|config|directives|guidelines|setup|preamble)"
# Jailbreak personas whose names are also ordinary words or first names ("the aim of", "Stan from IT").
_AMBIGUOUS_NAME = r"(?:dan|stan|dude|aim)(?: ?v?\d+(?:\.\d+)?)?"
_NO_RULES = r"(?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|boundaries|censorship)"
# Modes a product also has ("how do I enable debug mode"): blocked only when an imperative aims them at
# the assistant ("Enable developer mode.", "can you switch to god mode") or they come with no rules.
_PRODUCT_MODE = r"(?:developer|dev|god|sudo|debug|admin|root|maintenance)"
_ASSISTANT_MODE = r"(?:developer|dev|god|sudo)"
_IMPERATIVE = (
    r"(?:^|[.!?;:,\"'(\[]\s*|\b(?:please|now|and|then|just|first|so|ok|okay)\s+|\b(?:can|could|would|will) you )"
)

_MODE_VERB = r"(?:enable|activate|enter|switch to|turn on|engage|unlock|go into|boot into)"
_REVEAL = (
    r"\b(?:reveal|show|print|repeat|output|display|tell|give|leak|dump|recite|share|spell out|copy|paste|write out|"
    r"translate)\b(?: \w+){0,5}"
)

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "ignore-instructions",
        re.compile(
            rf"{_VERB_IGNORE}(?: \w+){{0,3}} {_PRIOR}(?: {_RULE_ADJ}){{0,2}} {_RULES}\b"
            rf"|{_VERB_IGNORE}(?: \w+){{0,2}} (?:all(?: of)?(?: the| your)?|your|everything)(?: {_RULE_ADJ}){{0,2}}"
            rf" {_WEAK_RULES}\b"
        ),
    ),
    (
        "reveal-system-prompt",
        re.compile(
            rf"(?:{_REVEAL}|\bwhat (?:is|are|was|were)(?: in)?(?: the)?) (?:"
            r"(?:system|hidden|secret|confidential|developer) ?prompt|pre ?prompt|developer message"
            rf"|(?:hidden|secret|confidential) {_SETUP}"
            rf"|your(?: {_HIDDEN})+(?: \w+)? {_SETUP}|your (?:prompt|system message)"
            rf"|{_HIDDEN}(?: \w+)? {_SETUP}(?: \w+){{0,2}} (?:you (?:were|have been|'ve been) (?:given|told)|"
            r"you received|you got|given to you)"
            r")\b"
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
            r"\b(?:evilbot|betterdan|anti ?gpt|chaos ?gpt|worm ?gpt)\b"
            # "do anything now", but not "I can't / don't / cannot do anything now"
            r"|(?<!nt )(?<!n't )(?<!n\u2019t )(?<!n t )(?<!not )(?<!unable to )\bdo anything now\b"
            # a persona verb before the name: "you are now DAN", "act as AIM", "pretend to be STAN"
            r"|\b(?:you are|you're|youre|you will be|you'll be|act(?:ing)? (?:as|like)|pretend(?:ing)? to be|"
            r"pretend (?:that )?you(?: are|'re)|role ?play(?:ing)? as|become|answer as|respond as|reply as|speak as|"
            r"in character as|simulate|impersonate|known as|(?:ai|chatbot|bot|model|assistant|persona|character) "
            rf"(?:called|named))(?: now| going to be| to be| called| named)? {_AMBIGUOUS_NAME}\b"
            # jailbreak words right after the name: "DAN mode", "STAN, which stands for", "AIM is an unfiltered"
            rf"|\b{_AMBIGUOUS_NAME}(?: mode| persona| jailbreak| prompt|,? which stands for| stands for|"
            rf" can do anything| has no {_NO_RULES}|,?(?: is| was)?(?: an?)?(?: \w+)? "
            r"(?:unfiltered|amoral|unrestricted|uncensored|jailbroken|unethical|immoral))\b"
            rf"|\bjailbreak(?:s|ing)?(?: \w+){{0,4}} {_AMBIGUOUS_NAME}\b"
        ),
    ),
    (
        "special-mode",
        re.compile(
            rf"\b{_MODE_VERB}\b(?: \w+){{0,2}} (?:jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|dan|"
            r"chaos|amoral) mode\b"
            r"|\b(?:you are|you're) (?:now )?(?:in|operating in|running in) (?:jailbreak|unrestricted|unfiltered|"
            rf"uncensored|evil|dan) mode\b"
            rf"|\b(?:you are|you're) now (?:in|operating in|running in) (?:the )?{_PRODUCT_MODE} mode\b"
            # imperative, aimed at the assistant: "Enable developer mode.", "can you switch to god mode"
            rf"|{_IMPERATIVE}{_MODE_VERB}(?: your| the)? {_ASSISTANT_MODE} mode\b"
            rf"|\b{_MODE_VERB} your {_PRODUCT_MODE} mode\b"
            # any mode that drops the rules: "switch to debug mode, where (you) answer without filters"
            rf"|\b{_PRODUCT_MODE} mode\b(?: [\w,']+){{0,3}} (?:where|in which|you)(?: [\w,']+){{0,4}}"
            rf" (?:no|without(?: any)?) {_NO_RULES}\b"
        ),
    ),
    (
        "disable-safety",
        re.compile(
            r"\b(?:disable|turn off|deactivate|remove|bypass|ignore|circumvent|switch off|lift|suspend|drop)\b"
            r"(?: \w+){0,3} (?:(?:ethical|ethics|guard ?rails?|censorship|content polic(?:y|ies)|alignment|refusals?)"
            r"(?: (?:filters?|guidelines|rules|protocols|measures|settings|training|checks))?"
            # "safety" and "moderation" are also product words ("turn off safety alerts", "the moderation
            # queue"): only with a rules noun, after "your", or ending the clause ("disable safety.")
            r"|(?:safety|moderation) (?:filters?|guidelines|rules|protocols|measures|training|guard ?rails?|policy|"
            r"policies|systems?)|your(?: \w+)? (?:safety|moderation)(?: \w+)?"
            r"|(?:safety|moderation)(?= *(?:$|[.,;:!?]| and\b| then\b| for (?:this|now|me)\b)))\b"
        ),
    ),
    (
        "no-refusal",
        re.compile(
            r"\b(?:never|do not|don't|must not|cannot|can't|will not|won't)\b (?:ever )?"
            r"(?:refuse|decline|say no|say (?:that )?you can(?:no|')t|add (?:any )?(?:warnings|disclaimers))\b"
            r"(?: \w+){0,6} (?:request|question|anything|answer|prompt|me|this)\b"
            # "never apologize or add warnings", not a customer's "don't apologize, just answer my question"
            r"|\b(?:never|do not|don't|must not|will not|won't) (?:ever )?apologi[sz]e(?: or| and|,)(?: \w+){0,2} "
            r"(?:refuse|decline|add|warn|lecture|moralize|say)\b"
        ),
    ),
    (
        "fake-turn-markers",
        re.compile(
            r"<\|?(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|?>|\[/?(?:inst|system)\]|<<\s*sys\s*>>"
            r"|\b(?:system|developer|admin) ?(?:message|prompt|override|note)? ?: ?"
            r"(?:you are|from now|ignore|new|disregard)"
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
