"""A small learned head (multinomial logistic regression) over frozen sentence embeddings.

Patterns only catch known phrasings; this catches paraphrases. The encoder is the shared offline
MiniLM (any object with ``encode(list[str]) -> ndarray``), frozen; only the head is trained, with
scikit-learn, and saved as plain numpy arrays plus a JSON manifest (no pickle: loading an artifact
never runs code). Serving needs numpy only. The blocking threshold is picked on out-of-fold
training scores (grouped by template family) for a target false-positive rate, never on held-out data.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from safety.dataset import ATTACK_LABELS, LABELS, Example

WEIGHTS_FILE = "head.npz"
MANIFEST_FILE = "manifest.json"


class TextEncoder(Protocol):
    """What the head needs from an encoder (``gateway.grounding.encoder.Encoder`` fits)."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class ClassifierError(RuntimeError):
    """The classifier artifact is missing, unreadable or was built for another encoder."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; saved in the manifest."""

    c: float = 4.0  # inverse L2 strength
    max_iter: int = 3000
    target_fp_rate: float = 0.01  # on out-of-fold benign training prompts
    min_threshold: float = 0.35
    max_threshold: float = 0.9
    folds: int = 5
    seed: int = 0


class SafetyClassifier:
    """Scores a prompt's probability of being an attack (jailbreak or toxic)."""

    def __init__(
        self,
        encoder: TextEncoder,
        coef: np.ndarray,
        intercept: np.ndarray,
        labels: tuple[str, ...],
        threshold: float,
        cache_size: int = 2048,
    ) -> None:
        self.encoder = encoder
        self.coef = coef.astype(np.float32)
        self.intercept = intercept.astype(np.float32)
        self.labels = labels
        self.threshold = threshold
        self._attack_idx = [i for i, label in enumerate(labels) if label in ATTACK_LABELS]
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = embeddings @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def embed(self, text: str) -> np.ndarray:
        """One prompt's embedding, memoised (retries and repeated prompts cost nothing)."""
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        vec = np.asarray(self.encoder.encode([text]), dtype=np.float32)[0]
        self._cache[text] = vec
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return vec

    def prime(self, texts: list[str]) -> None:
        """Embed many prompts in one batch into the memo (evaluation: far faster than one by one)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if not todo:
            return
        self._cache_size = max(self._cache_size, len(self._cache) + len(todo))
        for text, vec in zip(todo, np.asarray(self.encoder.encode(todo), dtype=np.float32), strict=True):
            self._cache[text] = vec

    def score(self, text: str) -> tuple[float, str]:
        """(probability of attack, most likely label)."""
        probs = self.probabilities(self.embed(text)[None, :])[0]
        return float(probs[self._attack_idx].sum()), self.labels[int(probs.argmax())]

    def attack_scores(self, texts: list[str]) -> np.ndarray:
        probs = self.probabilities(np.asarray(self.encoder.encode(texts), dtype=np.float32))
        return probs[:, self._attack_idx].sum(axis=1)

    # --- persistence -----------------------------------------------------------------------
    def save(self, out_dir: Path, manifest: dict[str, Any]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(out_dir / WEIGHTS_FILE, coef=self.coef, intercept=self.intercept)
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, out_dir: Path, encoder: TextEncoder, threshold: float | None = None) -> SafetyClassifier:
        """Load an artifact written by :func:`train`; refuse one built on a different encoder."""
        try:
            manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
            arrays = np.load(out_dir / WEIGHTS_FILE)
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"{out_dir}: no usable safety classifier ({exc}); run `flywheel safety train`") from exc
        if manifest.get("encoder") != encoder.name:
            raise ClassifierError(f"{out_dir}: trained on encoder {manifest.get('encoder')!r}, not {encoder.name!r}")
        return cls(
            encoder,
            arrays["coef"],
            arrays["intercept"],
            tuple(manifest["labels"]),
            manifest["threshold"] if threshold is None else threshold,
        )


def _fit(x: np.ndarray, y: np.ndarray, config: TrainConfig) -> Any:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=config.c, max_iter=config.max_iter, class_weight="balanced", random_state=config.seed)
    return model.fit(x, y)


def _pick_threshold(x: np.ndarray, y: np.ndarray, groups: list[str], config: TrainConfig) -> tuple[float, dict[str, float]]:
    """Out-of-fold attack scores, grouped by family, then the lowest threshold meeting the FP target."""
    from sklearn.model_selection import GroupKFold

    oof = np.zeros(len(y), dtype=np.float64)
    benign = LABELS.index("benign")
    for train_idx, test_idx in GroupKFold(n_splits=config.folds).split(x, y, groups):
        model = _fit(x[train_idx], y[train_idx], config)
        probs = model.predict_proba(x[test_idx])
        col = list(model.classes_).index(benign)
        oof[test_idx] = 1.0 - probs[:, col]
    is_attack = y != benign
    benign_scores = np.sort(oof[~is_attack])
    allowed = int(np.floor(config.target_fp_rate * len(benign_scores)))
    quantile = benign_scores[len(benign_scores) - allowed - 1] if len(benign_scores) else 0.5
    threshold = float(np.clip(quantile + 1e-6, config.min_threshold, config.max_threshold))
    cv = {
        "oof_block_rate": float((oof[is_attack] >= threshold).mean()),
        "oof_fp_rate": float((oof[~is_attack] >= threshold).mean()),
    }
    return threshold, cv


def train(
    examples: list[Example], encoder: TextEncoder, config: TrainConfig, dataset_digest: str
) -> tuple[SafetyClassifier, dict[str, Any]]:
    """Fit the head on the ``train`` split; returns it with the manifest to save beside it."""
    import sklearn

    train_set = [ex for ex in examples if ex.split == "train"]
    if not train_set:
        raise ClassifierError("the labelled set has no train split")
    x = np.asarray(encoder.encode([ex.text for ex in train_set]), dtype=np.float32)
    y = np.asarray([LABELS.index(ex.label) for ex in train_set])
    threshold, cv = _pick_threshold(x, y, [ex.family for ex in train_set], config)
    model = _fit(x, y, config)
    order = [list(model.classes_).index(i) for i in range(len(LABELS))]
    classifier = SafetyClassifier(encoder, model.coef_[order], model.intercept_[order], LABELS, threshold)
    manifest = {
        "kind": "safety-classifier",
        "schema_version": 1,
        "encoder": encoder.name,
        "dim": int(x.shape[1]),
        "labels": list(LABELS),
        "threshold": round(threshold, 6),
        "dataset_sha256": dataset_digest,
        "train_examples": len(train_set),
        "train_counts": {label: int((y == i).sum()) for i, label in enumerate(LABELS)},
        "config": asdict(config),
        "cv": {k: round(v, 4) for k, v in cv.items()},
        "sklearn_version": sklearn.__version__,
    }
    return classifier, manifest
