"""The learned classifier as a filter: blocks when P(jailbreak or toxic) reaches the threshold."""

from __future__ import annotations

from safety.classifier import SafetyClassifier
from safety.filters.base import Check, CheckContext
from safety.verdict import Verdict


class ClassifierFilter:
    """Runs the embedding head on one text; the score in the verdict is the attack probability."""

    def __init__(self, classifier: SafetyClassifier, name: str = "classifier") -> None:
        self.name = name
        self.classifier = classifier

    def check(self, text: str, context: CheckContext) -> Check:
        if not text.strip():
            return Check(Verdict(self.name, "allow"), text)
        p_attack, label = self.classifier.score(text)
        if p_attack >= self.classifier.threshold:
            top = label if label != "benign" else "attack"
            return Check(Verdict(self.name, "block", f"{top} (p={p_attack:.2f})", p_attack), text)
        return Check(Verdict(self.name, "allow", f"p_attack={p_attack:.2f}", p_attack), text)
