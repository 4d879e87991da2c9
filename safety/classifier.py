"""A small learned head (multinomial logistic regression) over frozen sentence embeddings.

Patterns only catch known phrasings; this catches paraphrases. The encoder is the shared offline
MiniLM (any object with ``encode(list[str]) -> ndarray``), frozen; only the head is trained, with
scikit-learn, and saved as plain numpy arrays plus a JSON manifest (no pickle: loading an artifact
never runs code). Serving needs numpy only. The blocking threshold is picked on out-of-fold
training scores (grouped by template family) for a target false-positive rate, never on held-out data.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from safety.dataset import ATTACK_LABELS, LABELS, Example

WEIGHTS_FILE = "head.npz"
_PIECE_SPLIT = re.compile(r"(?<=[.!?:;])\s+|\n+|[\"'<>\[\]]")
MAX_PIECES = 4


def segments(text: str) -> list[str]:
    """The whole prompt plus its sentences / quoted parts (at most ``MAX_PIECES``, 3+ words each).

    An instruction smuggled into a quoted document or tacked onto a harmless opener is diluted in
    the whole prompt's mean-pooled embedding; scored on its own, it stands out.
    """
    pieces = [p.strip() for p in _PIECE_SPLIT.split(text) if p and len(p.split()) >= 3]
    return [text, *pieces[:MAX_PIECES]] if len(pieces) > 1 else [text]
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
    target_fp_rate: float = 0.07  # out-of-fold, family-grouped: pessimistic
    min_threshold: float = 0.35
    max_threshold: float = 0.97
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
        todo = [s for t in dict.fromkeys(texts) for s in segments(t) if s not in self._cache]
        todo = list(dict.fromkeys(todo))
        if not todo:
            return
        self._cache_size = max(self._cache_size, len(self._cache) + len(todo))
        for text, vec in zip(todo, np.asarray(self.encoder.encode(todo), dtype=np.float32), strict=True):
            self._cache[text] = vec

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Embeddings of several texts, encoding only the uncached ones, in one batch."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for text, vec in zip(todo, np.asarray(self.encoder.encode(todo), dtype=np.float32), strict=True):
                self._cache[text] = vec
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return np.stack([self._cache[t] if t in self._cache else self.embed(t) for t in texts])

    def score(self, text: str) -> tuple[float, str]:
        """(probability of attack, most likely label), maxed over the prompt's segments."""
        probs = self.probabilities(self.embed_many(segments(text)))
        attack = probs[:, self._attack_idx].sum(axis=1)
        worst = int(attack.argmax())
        return float(attack[worst]), self.labels[int(probs[worst].argmax())]

    def attack_scores(self, texts: list[str]) -> np.ndarray:
        return np.asarray([self.score(t)[0] for t in texts])

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


def _attack_max(model: Any, emb: dict[str, np.ndarray], texts: list[str]) -> np.ndarray:
    benign = list(model.classes_).index(LABELS.index("benign"))
    return np.asarray([(1.0 - model.predict_proba(np.stack([emb[s] for s in segments(t)]))[:, benign]).max() for t in texts])


def _training_rows(examples: list[Example]) -> list[tuple[str, int, str]]:
    """(text, label, family): whole prompts, plus the pieces of benign prompts (still benign)."""
    rows = [(ex.text, LABELS.index(ex.label), ex.family) for ex in examples]
    for ex in examples:
        if ex.label == "benign":
            rows += [(piece, LABELS.index("benign"), ex.family) for piece in segments(ex.text)[1:]]
    return rows


def _pick_threshold(
    examples: list[Example], emb: dict[str, np.ndarray], config: TrainConfig
) -> tuple[float, dict[str, float]]:
    """Out-of-fold attack scores, grouped by family, then the lowest threshold meeting the FP target."""
    from sklearn.model_selection import GroupKFold

    families = sorted({ex.family for ex in examples})
    oof = np.zeros(len(examples), dtype=np.float64)
    fam_idx = np.asarray([families.index(ex.family) for ex in examples])
    for train_fams, test_fams in GroupKFold(n_splits=config.folds).split(families, groups=families):
        train_ex = [ex for ex, f in zip(examples, fam_idx, strict=True) if f in set(train_fams)]
        test_idx = np.where(np.isin(fam_idx, test_fams))[0]
        rows = _training_rows(train_ex)
        model = _fit(np.stack([emb[t] for t, _, _ in rows]), np.asarray([y for _, y, _ in rows]), config)
        oof[test_idx] = _attack_max(model, emb, [examples[i].text for i in test_idx])
    is_attack = np.asarray([ex.label in ATTACK_LABELS for ex in examples])
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
    texts = list(dict.fromkeys(s for ex in train_set for s in segments(ex.text)))
    vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
    emb = dict(zip(texts, vectors, strict=True))
    threshold, cv = _pick_threshold(train_set, emb, config)
    rows = _training_rows(train_set)
    x = np.stack([emb[t] for t, _, _ in rows])
    y = np.asarray([label for _, label, _ in rows])
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
        "train_rows": len(rows),
        "train_counts": {label: int((y == i).sum()) for i, label in enumerate(LABELS)},
        "config": asdict(config),
        "cv": {k: round(v, 4) for k, v in cv.items()},
        "sklearn_version": sklearn.__version__,
    }
    return classifier, manifest


def ensure_trained(out_dir: Path, encoder: TextEncoder, config: TrainConfig | None = None) -> bool:
    """Train and save the head unless ``out_dir`` holds one trained on the shipped set with this encoder.

    `flywheel up` calls this, as it builds the seed model, so a fresh machine gets the learned filter
    without a manual step. Returns True when it trained.
    """
    from safety.dataset import DEFAULT_DATASET, dataset_digest, load_dataset

    digest = dataset_digest(DEFAULT_DATASET)
    manifest_path = Path(out_dir) / MANIFEST_FILE
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("dataset_sha256") == digest and manifest.get("encoder") == encoder.name:
            return False
    classifier, manifest = train(load_dataset(DEFAULT_DATASET), encoder, config or TrainConfig(), digest)
    classifier.save(Path(out_dir), manifest)
    return True
