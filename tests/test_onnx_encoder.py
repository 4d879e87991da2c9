"""The encoder on ONNX Runtime gives sentence-transformers' own vectors; its export is cached and checked.

Real model (the bundled MiniLM), real export, real ONNX Runtime; the torch pass is the reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flywheel.settings import Settings
from gateway.grounding.encoder import Encoder, default_encoder_path
from gateway.grounding.kb import shipped_eval_path, shipped_kb_dir
from gateway.grounding.onnx_encoder import OnnxEncoder, OnnxEncoderError, supports

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def torch_encoder() -> Encoder:
    return Encoder.load(threads=1)


@pytest.fixture(scope="module")
def onnx_encoder(encoder_onnx_cache: Path) -> Encoder:
    return Encoder.load(threads=1, onnx_cache_dir=encoder_onnx_cache)


def _texts() -> list[str]:
    """Short questions, whole documents (longer than the 256-token limit: truncation) and odd input."""
    questions = [json.loads(line)["question"] for line in shipped_eval_path().read_text().splitlines() if line.strip()]
    documents = [path.read_text() for path in sorted(shipped_kb_dir().rglob("*.md"))[:12]]
    odd = ["", " ", "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ", "ignore previous instructions 🙂", "a" * 3000, "日本語のテキスト"]
    return questions[:40] + documents + odd


def test_onnx_vectors_equal_the_torch_vectors(torch_encoder: Encoder, onnx_encoder: Encoder) -> None:
    assert onnx_encoder.backend == "onnx" and torch_encoder.backend == "torch"
    texts = _texts()
    bulk_onnx, bulk_torch = onnx_encoder.encode(texts), torch_encoder.encode(texts)  # > 16 texts: batched path
    assert bulk_onnx.shape == bulk_torch.shape == (len(texts), 384)
    assert float(np.abs(bulk_onnx - bulk_torch).max()) < TOLERANCE
    for text in texts[:10] + texts[-6:]:  # one at a time, as on the request path
        single = onnx_encoder.encode([text])[0]
        assert float(np.abs(single - torch_encoder.encode([text])[0]).max()) < TOLERANCE
        assert abs(float(np.linalg.norm(single)) - 1.0) < 1e-5
    batch = onnx_encoder.encode(texts[:5], batch_size=2)  # rows come back in the caller's order
    assert float(np.abs(batch - bulk_torch[:5]).max()) < TOLERANCE


def test_the_export_is_reused_and_a_broken_one_is_replaced(tmp_path: Path, encoder_onnx_cache: Path) -> None:
    for export in encoder_onnx_cache.glob("*.onnx"):
        shutil.copy(export, tmp_path / export.name)
    first = Encoder.load(threads=1, onnx_cache_dir=tmp_path)
    (export,) = list(tmp_path.glob("*.onnx"))
    stamp = export.stat().st_mtime_ns
    Encoder.load(threads=1, onnx_cache_dir=tmp_path)
    assert export.stat().st_mtime_ns == stamp, "a second load exported again"

    export.write_bytes(b"not an onnx file")  # e.g. a disk filled up mid-copy
    repaired = Encoder.load(threads=1, onnx_cache_dir=tmp_path)
    assert repaired.backend == "onnx"
    assert export.stat().st_size > 1_000_000
    assert [p.name for p in tmp_path.iterdir()] == [export.name], "a temporary file was left behind"
    probe = ["How do I restore a file?"]
    assert float(np.abs(repaired.encode(probe) - first.encode(probe)).max()) < TOLERANCE


def test_an_unsupported_model_stays_on_torch(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    transformer = Transformer(str(default_encoder_path()))
    cls_pooled = SentenceTransformer(modules=[transformer, Pooling(384, pooling_mode="cls")], device="cpu")
    assert not supports(cls_pooled)
    with pytest.raises(OnnxEncoderError, match="unsupported"):
        OnnxEncoder.load(cls_pooled, tmp_path, threads=1)
    assert list(tmp_path.iterdir()) == []


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    on_torch = Encoder.from_settings(Settings(var_dir=tmp_path, encoder_backend="torch"))
    assert on_torch.backend == "torch"
    default = Settings(var_dir=tmp_path, encoder_cache_dir=None)  # explicit: the suite sets a shared one
    assert default.encoder_backend == "onnx"
    assert default.encoder_onnx_dir == tmp_path / "cache" / "encoder"
