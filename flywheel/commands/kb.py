"""`flywheel kb ...`: manage the grounding knowledge base under var/kb and measure its retrieval quality.

Changes made here are picked up by a running gateway on its next start (or ``HybridIndex.reload``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from flywheel.settings import Settings

if TYPE_CHECKING:
    from gateway.grounding.retriever import Retriever

app = typer.Typer(help="Knowledge base for grounding: add, list, remove, search, evaluate.", no_args_is_help=True)
_console = Console()

Mode = Annotated[str, typer.Option("--mode", "-m", help="hybrid, bm25 or dense")]
Force = Annotated[bool, typer.Option("--force", help="re-chunk unchanged files too (after changing chunk settings)")]


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _retriever(settings: Settings, auto_init: bool = True) -> Retriever:
    """Load the encoder and open the KB (seeding it with the shipped docs on first use).

    Imports are lazy here and below: torch and sentence-transformers take seconds, `--help` should not.
    """
    from gateway.grounding.encoder import EncoderError
    from gateway.grounding.retriever import Retriever

    with _console.status("loading the encoder and the knowledge base…"):
        try:
            init = auto_init and settings.kb_auto_init
            return Retriever.from_settings(settings.model_copy(update={"kb_auto_init": init}))
        except EncoderError as exc:
            _fail(str(exc))


@app.command("init")
def init(force: Force = False) -> None:
    """Ingest the shipped Kestrel Backup documentation (unchanged files are skipped)."""
    from gateway.grounding.retriever import init_default_kb

    settings = Settings()
    retriever = _retriever(settings, auto_init=False)
    report = init_default_kb(retriever.index, force=force)
    _console.print(
        f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)} "
        f"documents ({report.n_chunks} new chunks) in {settings.effective_kb_dir}"
    )


@app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="Markdown/text files or directories")], force: Force = False
) -> None:
    """Add or update documents (a directory is read recursively; doc ids come from relative paths)."""
    from gateway.grounding.documents import DocumentError

    retriever = _retriever(Settings())
    try:
        report = retriever.index.add_paths(paths, force)
    except DocumentError as exc:
        _fail(str(exc))
    for label, ids in (("added", report.added), ("updated", report.updated), ("unchanged", report.unchanged)):
        if ids:
            _console.print(f"{label}: {', '.join(ids)}")
    _console.print(f"{report.n_chunks} chunks indexed; the KB now holds {len(retriever.index)} chunks")


@app.command("list")
def list_docs() -> None:
    """List the documents in the knowledge base."""
    from gateway.grounding.store import KbStore

    settings = Settings()
    docs = KbStore(settings.effective_kb_dir).documents()
    if not docs:
        _console.print(f"the knowledge base in {settings.effective_kb_dir} is empty: run `flywheel kb init`")
        return
    table = Table("doc id", "title", "chunks", "path")
    for doc in docs:
        table.add_row(doc.doc_id, doc.title, str(doc.n_chunks), doc.path)
    _console.print(table)


@app.command("remove")
def remove(doc_id: Annotated[str, typer.Argument(help="as shown by `flywheel kb list`")]) -> None:
    """Remove a document and its chunks (no encoder needed)."""
    from gateway.grounding.store import KbStore

    store = KbStore(Settings().effective_kb_dir)
    if not store.delete_documents([doc_id]):
        _fail(f"no document {doc_id!r} (see `flywheel kb list`)")
    store.prune_vectors()
    _console.print(f"removed {doc_id}")


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="a question")],
    k: Annotated[int, typer.Option("-k", help="passages to show")] = 5,
    mode: Mode = "hybrid",
) -> None:
    """Show the passages the gateway would ground a request with."""
    retriever = _retriever(Settings())
    try:
        hits = retriever.search(query, k, mode)  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(str(exc))
    table = Table("#", "score", "cos", "doc id", "section", "text", show_lines=True)
    for rank, hit in enumerate(hits, 1):
        text = hit.text if len(hit.text) <= 300 else hit.text[:297] + "…"
        section = hit.section or hit.title
        table.add_row(str(rank), f"{hit.score:.4f}", f"{hit.similarity:.2f}", hit.doc_id, section, text)
    _console.print(table)


@app.command("eval")
def eval_cmd(
    k: Annotated[int, typer.Option("-k", help="extra recall cutoff besides 1, 3 and 5")] = 5,
    qa: Annotated[Path | None, typer.Option("--qa", help="question set (default: the shipped one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Recall@k and MRR of BM25 alone, dense alone and hybrid on a question → document set."""
    from gateway.grounding.evaluation import evaluate, load_qa
    from gateway.grounding.kb import shipped_eval_path

    retriever = _retriever(Settings())
    ks = tuple(sorted({1, 3, 5, k}))
    try:
        results = evaluate(retriever.index, load_qa(qa or shipped_eval_path()), ks=ks)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        out = {m: {"recall": s.recall, "mrr": s.mrr, "n": s.n, "mean_ms": s.mean_ms} for m, s in results.items()}
        print(json.dumps(out, indent=2))
        return
    n = next(iter(results.values())).n
    table = Table("mode", *[f"recall@{c}" for c in ks], "MRR", "ms/query", title=f"{n} questions")
    for mode, scores in results.items():
        table.add_row(mode, *[f"{scores.recall[c]:.3f}" for c in ks], f"{scores.mrr:.3f}", f"{scores.mean_ms:.1f}")
    _console.print(table)
