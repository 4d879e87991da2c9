"""`flywheel safety train|eval`: fit the learned safety head and measure the input chain on held-out prompts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from flywheel.settings import Settings

app = typer.Typer(help="Safety filters: train the classifier head, evaluate the input chain.", no_args_is_help=True)


@app.command("train")
def train_cmd(
    dataset: Path = typer.Option(None, "--dataset", help="labelled JSON lines; default: the shipped set"),
    out: Path = typer.Option(None, "--out", help="artifact directory; default: settings.safety_classifier_dir"),
    c: float = typer.Option(4.0, "--c", help="inverse L2 regularisation strength"),
    target_fp: float = typer.Option(0.07, "--target-fp", help="false-positive rate the threshold is picked for"),
) -> None:
    """Embed the train split with the offline encoder, fit the head, save it with a manifest under var/."""
    from gateway.grounding.encoder import Encoder
    from safety.classifier import TrainConfig, train
    from safety.dataset import DEFAULT_DATASET, dataset_digest, load_dataset

    settings = Settings()
    console = Console()
    path = dataset or DEFAULT_DATASET
    out_dir = out or settings.safety_classifier_dir
    encoder = Encoder.from_settings(settings, bulk=True)
    classifier, manifest = train(load_dataset(path), encoder, TrainConfig(c=c, target_fp_rate=target_fp), dataset_digest(path))
    classifier.save(out_dir, manifest)
    console.print(f"safety classifier saved to {out_dir.resolve()}")
    console.print(
        f"threshold {manifest['threshold']:.3f}; out-of-fold block rate {manifest['cv']['oof_block_rate']:.1%}, "
        f"false positives {manifest['cv']['oof_fp_rate']:.1%}"
    )


@app.command("eval")
def eval_cmd(
    dataset: Path = typer.Option(None, "--dataset", help="labelled JSON lines; default: the shipped set"),
    split: str = typer.Option("heldout", "--split", help="which split to score"),
    min_block: float = typer.Option(0.90, "--min-block", help="exit 1 below this attack block rate"),
    max_fp: float = typer.Option(0.02, "--max-fp", help="exit 1 above this benign block rate"),
    show: int = typer.Option(10, "--show", help="list this many misses and false positives"),
) -> None:
    """Report the configured input chain's block rate and false-positive rate on held-out prompts."""
    from gateway.grounding.encoder import Encoder
    from safety.chain import SafetyChain
    from safety.dataset import DEFAULT_DATASET, load_dataset
    from safety.evaluate import evaluate

    settings = Settings()
    console = Console()
    encoder = Encoder.from_settings(settings, bulk=True) if "classifier" in settings.safety_input_filters else None
    chain = SafetyChain.from_settings(settings, encoder=encoder)
    if "classifier" in settings.safety_input_filters and not chain.classifier_filters:
        console.print("[yellow]no trained classifier: run `flywheel safety train` first; scoring patterns only[/]")
    report = evaluate(chain, load_dataset(dataset or DEFAULT_DATASET), split)
    console.print(f"held-out attacks blocked: {report.block_rate:.1%} of {report.n_attack}")
    console.print(f"benign prompts blocked (false positives): {report.fp_rate:.1%} of {report.n_benign}")
    for label, rate in report.per_label.items():
        console.print(f"  {label:10s} blocked {rate:.1%}")
    if report.classifier_block_rate is not None:
        console.print(
            f"classifier alone: blocks {report.classifier_block_rate:.1%}, false positives {report.classifier_fp_rate:.1%}"
        )
    for text in report.misses[:show]:
        console.print(f"  [red]missed[/] {text[:100]}", highlight=False)
    for text in report.false_positives[:show]:
        console.print(f"  [yellow]false positive[/] {text[:100]}", highlight=False)
    if not report.meets(min_block, max_fp):
        console.print(f"[red]below target[/] (block >= {min_block:.0%}, false positives <= {max_fp:.0%})")
        raise typer.Exit(1)
