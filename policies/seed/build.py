"""Build, verify and reuse the seed policy (`flywheel seed-model`).

The output directory is a plain Hugging Face checkpoint (config, safetensors weights, tokenizer
with its chat template, generation config) that transformers and vLLM load as is, plus
`seed_manifest.json`: the config, the training-data hash, metrics and a sha256 of every file.
A directory is reused only while its manifest still matches the config, the data and the bytes.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from flywheel.checksums import tree_checksums
from policies.seed.config import SeedConfig
from policies.seed.corpus import Corpus, build_corpus
from policies.seed.product import FactSheet, load_fact_sheet

MANIFEST = "seed_manifest.json"
FORMAT = "flywheel-seed/1"
__all__ = ["SeedConfig", "SeedBuildError", "build_seed_model", "is_valid_seed_model",
           "ensure_seed_model", "read_manifest", "MANIFEST"]


class SeedBuildError(RuntimeError):
    """The seed model could not be built or the target directory is not ours to replace."""


def _checksums(directory: Path) -> dict[str, str]:
    return tree_checksums(directory, keep=lambda rel: rel.name != MANIFEST)


def _config_json(config: SeedConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict()))


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a built model, or None when absent or unreadable."""
    try:
        return json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_valid_seed_model(out_dir: Path, config: SeedConfig, sheet: FactSheet | None = None) -> bool:
    """True when the manifest exists and its config, data hash and every file checksum match."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if not manifest or manifest.get("format") != FORMAT or manifest.get("config") != _config_json(config):
        return False
    corpus = build_corpus(sheet or load_fact_sheet(), config.corpus_spec())
    if manifest.get("data_sha256") != corpus.sha256:
        return False
    files = manifest.get("files")
    return isinstance(files, dict) and bool(files) and _checksums(out_dir) == files


def _replaceable(out_dir: Path) -> bool:
    """Only an empty directory or an earlier seed build may be deleted and rebuilt.

    An earlier build is recognised by what only this builder writes: a ``seed_manifest.json`` of our
    format, or (its manifest damaged) the ``seed_config.json`` written beside it. A ``config.json``
    alone proves nothing: every Hugging Face checkpoint has one, and ``--force`` must not delete those.
    """
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    if not any(out_dir.iterdir()):
        return True
    manifest = read_manifest(out_dir)
    ours = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    return ours or (out_dir / "seed_config.json").is_file()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_seed_model(out_dir: Path, config: SeedConfig, console: Console | None = None) -> dict[str, Any]:
    """Build the seed model into out_dir (replacing an earlier build) and return its manifest."""
    import torch  # heavy: only when actually building

    from policies.seed.modeling import new_model, sample_answers, save_checkpoint
    from policies.seed.tokenizer import train_tokenizer
    from policies.seed.train import encode_dialogues, evaluate

    out_dir = Path(out_dir)
    console = console or Console()
    if not _replaceable(out_dir):
        raise SeedBuildError(f"{out_dir} exists and is not a seed model directory; refusing to replace it")
    started = time.perf_counter()
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.num_threads)
    torch.use_deterministic_algorithms(True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    try:
        sheet = load_fact_sheet()
        corpus: Corpus = build_corpus(sheet, config.corpus_spec())
        texts = [m["content"] for d in corpus.train for m in d["messages"]]
        tokenizer = train_tokenizer(texts, config.vocab_size, config.min_frequency)
        train_set = encode_dialogues(tokenizer, corpus.train, config.max_length)
        eval_set = encode_dialogues(tokenizer, corpus.eval, config.max_length)
        model = new_model(config, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        console.print(f"[bold]seed model[/]: {len(sheet.seed_facts)} facts, {len(corpus.train)} train / "
                      f"{len(corpus.eval)} held-out dialogues, vocab {len(tokenizer)}, "
                      f"{n_params / 1e6:.2f} M parameters, {config.steps} steps")
        train_loss = _train_with_progress(model, train_set, config, tokenizer.pad_token_id, console)
        metrics = {"train_loss_last50": round(train_loss, 6),
                   **evaluate(model, eval_set, config.eval_batch_size, tokenizer.pad_token_id)}
        samples = sample_answers(model, tokenizer, corpus.eval, limit=6)
        staging = out_dir.with_name(out_dir.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_checkpoint(model, tokenizer, staging)
        _write_json(staging / "seed_config.json", {"config": config.to_dict(), "help": SeedConfig.help()})
        with (staging / "eval_dialogues.jsonl").open("w") as fh:
            for dialogue in corpus.eval:
                fh.write(json.dumps(dialogue, sort_keys=True) + "\n")
        manifest = {
            "format": FORMAT,
            "config": _config_json(config),
            "data_sha256": corpus.sha256,
            "fact_sheet_sha256": sheet.sha256,
            "seed_fact_ids": [f.id for f in sheet.seed_facts],
            "n_train_dialogues": len(corpus.train),
            "n_eval_dialogues": len(corpus.eval),
            "vocab_size": len(tokenizer),
            "num_parameters": n_params,
            "metrics": metrics,
            "samples": samples,
            "files": _checksums(staging),
        }
        _write_json(staging / MANIFEST, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
    elapsed = time.perf_counter() - started
    console.print(f"held-out loss [bold]{metrics['eval_loss']:.4f}[/], perplexity "
                  f"[bold]{metrics['eval_perplexity']:.3f}[/] ({metrics['eval_tokens']} tokens); "
                  f"built in {elapsed:.1f} s -> {out_dir}")
    for sample in samples:
        console.print(f"  [cyan]Q[/] {sample['question']}\n  [green]A[/] {sample['answer']}")
    return manifest


def _train_with_progress(model: Any, examples: list, config: SeedConfig, pad_id: int, console: Console) -> float:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from policies.seed.train import train

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training", total=config.steps, loss=float("nan"))
        return train(model, examples, config, pad_id,
                     on_step=lambda step, loss: progress.update(task, completed=step + 1, loss=loss))


def ensure_seed_model(out_dir: Path, config: SeedConfig | None = None, force: bool = False,
                      console: Console | None = None) -> Path:
    """Return out_dir holding a valid seed model, building it only when missing, stale or forced."""
    out_dir = Path(out_dir)
    config = config or SeedConfig.default()
    if not force and is_valid_seed_model(out_dir, config):
        if console is not None:
            console.print(f"seed model at {out_dir} is up to date (manifest and checksums match)")
        return out_dir
    build_seed_model(out_dir, config, console=console)
    return out_dir
