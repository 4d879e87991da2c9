"""The sentence encoder's forward pass on ONNX Runtime: the same vectors, in well under half the time.

Every request pays for one MiniLM forward pass (the safety head and retrieval share it) and best-of-n
pays for one more over its candidates, so this pass is most of the request pipeline's own cost.
Measured on one thread for a 14-token query: ~10 ms through sentence-transformers on torch, ~3.8 ms
on ONNX Runtime, vectors equal to 2e-7.

Why hand-written: sentence-transformers' own ONNX backend goes through ``optimum-onnx``, which pins
``transformers<4.58``, and vLLM 0.32 needs transformers 5. So the model's transformer module is exported
with ``torch.onnx`` (once; cached by a digest of the weights and the torch version), and the two steps
after it, mean pooling over the attention mask and L2 normalisation, are done here in numpy. Only
models whose modules are exactly Transformer → mean Pooling → (Normalize) are accepted
(:func:`supports`), tokenisation stays sentence-transformers' own, and every fresh export is checked
against the torch forward pass before it is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Largest difference from the torch pass accepted for an export (vectors are unit length; measured 2e-7).
MAX_EXPORT_ERROR = 1e-4
PROBE_TEXTS = ["How much does the Personal plan cost?", "A longer probe sentence, so padding is exercised too."]


class OnnxEncoderError(RuntimeError):
    """The model cannot be exported or its export disagrees with torch."""


def _pinned_to_some_cores() -> bool:
    """True when this process may run on fewer cores than the machine has."""
    return hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 0)


def supports(model: SentenceTransformer) -> bool:
    """True for Transformer → Pooling(mean) → optional Normalize: what :class:`OnnxEncoder` reproduces."""
    names = [type(module).__name__ for module in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    pooling = model[1]
    return getattr(pooling, "pooling_mode", None) == "mean" and hasattr(model[0], "auto_model")


class OnnxEncoder:
    """A sentence-transformers model with its transformer run by ONNX Runtime."""

    def __init__(self, model: SentenceTransformer, session: Any, normalize: bool) -> None:
        self._model = model
        self._session = session
        self._normalize = normalize
        self._inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, model: SentenceTransformer, cache_dir: Path, threads: int | None) -> OnnxEncoder:
        """Open the cached export of ``model`` (exporting it first if there is none) on ``threads`` threads."""
        import onnxruntime as ort

        if not supports(model):
            raise OnnxEncoderError(f"unsupported module chain {[type(m).__name__ for m in model]}")
        path = cache_dir / f"{_digest(model)}.onnx"
        options = ort.SessionOptions()
        if not threads and _pinned_to_some_cores():
            # Left to choose its own thread count, ONNX Runtime pins its pool to cores of the whole
            # machine, undoing FLYWHEEL_CPUS (flywheel/cpus.py); with an explicit count it pins nothing
            # and the threads stay on this process's cores.
            threads = len(os.sched_getaffinity(0))
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        fresh = not path.is_file()
        if fresh:
            _export(model, path)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            path.unlink(missing_ok=True)
            if fresh:
                raise OnnxEncoderError(f"{path}: cannot open the fresh export ({exc})") from exc
            log.warning("%s: unreadable cached export (%s); exporting again", path, exc)
            _export(model, path)
            fresh = True
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        encoder = cls(model, session, normalize=len(model) == 3)
        if fresh:
            encoder._check_against_torch(path)
        return encoder

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Unit vectors (raw means for a model without Normalize), one row per text, in order; texts non-empty."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        vectors = np.concatenate([self._embed([texts[i] for i in order[start : start + batch_size]])
                                  for start in range(0, len(order), batch_size)])  # fmt: skip
        result = np.empty_like(vectors)
        result[order] = vectors
        return result

    def _embed(self, texts: list[str]) -> np.ndarray:
        features = self._model[0].preprocess(texts)  # sentence-transformers' own tokenisation and truncation
        feed = {name: features[name].numpy().astype(np.int64, copy=False) for name in self._inputs}
        hidden = self._session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self._normalize:
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32, copy=False)

    def _check_against_torch(self, path: Path) -> None:
        expected = self._model.encode(PROBE_TEXTS, normalize_embeddings=False, convert_to_numpy=True,
                                      show_progress_bar=False)  # fmt: skip
        error = float(np.abs(self.encode(PROBE_TEXTS, batch_size=8) - expected).max())
        if error > MAX_EXPORT_ERROR:
            path.unlink(missing_ok=True)
            raise OnnxEncoderError(f"ONNX export differs from torch by {error:.2e} (> {MAX_EXPORT_ERROR:g})")


def _digest(model: SentenceTransformer) -> str:
    """Name of the export: the transformer's weights and config, and the exporter's torch version."""
    import torch

    h = hashlib.sha256(torch.__version__.encode())
    state = model[0].auto_model.state_dict()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    h.update(model[0].auto_model.config.to_json_string().encode())
    return h.hexdigest()[:24]


def _export(model: SentenceTransformer, path: Path) -> None:
    """torch.onnx export of the transformer (dynamic batch and length), written atomically."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, names: list[str]) -> None:
            super().__init__()
            self.inner = inner
            self.names = names

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(self.names, tensors, strict=True))).last_hidden_state

    transformer = model[0]
    features = transformer.preprocess(PROBE_TEXTS)
    names = [name for name in INPUT_NAMES if name in features]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    log.info("exporting the encoder to ONNX at %s", path)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes, once per export
            torch.onnx.export(
                LastHiddenState(transformer.auto_model.eval(), names), tuple(features[n] for n in names), tmp,
                input_names=names, output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=17,
                dynamo=False,
            )  # fmt: skip
        os.replace(tmp, path)  # concurrent exporters each write their own file; the last rename wins
    except Exception as exc:
        raise OnnxEncoderError(f"cannot export the encoder to ONNX ({exc})") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
