"""`flywheel safety train|eval`: fit the learned safety head and measure the input chain on held-out prompts."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from flywheel.settings import Settings

if TYPE_CHECKING:
    from safety.dataset import Example

app = typer.Typer(help="Safety filters: train the classifier head, evaluate the input chain.", no_args_is_help=True)


class Split(str, Enum):
    """The splits the shipped labelled set has (safety/dataset.py); any other name would score nothing."""

    train = "train"
    heldout = "heldout"


def _fail(message: str) -> NoReturn:
    """One line on stderr (plain echo: a path or message with [brackets] is not rich markup), exit 1."""
    typer.echo(f"{typer.style('error:', fg='red')} {message}", err=True)
    raise typer.Exit(1)


def _positive(value: float) -> float:
    """sklearn refuses C <= 0 only after the encoder has embedded everything: refuse it at parse time."""
    if not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


def _fp_rate(value: float) -> float:
    """A rate in [0, 1): at 1 or above (or below 0) the threshold index in safety/classifier.py wraps around."""
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"must be in [0, 1), got {value:g}")
    return value


# --dataset: click checks that the file exists before anything loads (the encoder takes seconds).
_DATASET_HELP = "labelled JSON lines; default: the shipped set"


def _load(path: Path) -> list[Example]:
    """The labelled set, or one error line when the file is not one (bad JSON, missing fields, unknown labels)."""
    from safety.dataset import load_dataset

    try:
        return load_dataset(path)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _fail(f"{path}: not a labelled safety dataset ({type(exc).__name__}: {exc})")


@app.command("train")
def train_cmd(
    dataset: Path = typer.Option(None, "--dataset", exists=True, dir_okay=False, readable=True, help=_DATASET_HELP),
    out: Path = typer.Option(None, "--out", help="artifact directory; default: settings.safety_classifier_dir"),
    c: float = typer.Option(4.0, "--c", callback=_positive, help="inverse L2 regularisation strength (> 0)"),
    target_fp: float = typer.Option(
        0.07, "--target-fp", callback=_fp_rate, help="false-positive rate the threshold is picked for, in [0, 1)"
    ),
) -> None:
    """Embed the train split with the offline encoder, fit the head, save it with a manifest under var/."""
    from gateway.grounding.encoder import Encoder
    from safety.classifier import TrainConfig, train
    from safety.dataset import DEFAULT_DATASET, dataset_digest

    settings = Settings()
    console = Console()
    path = dataset or DEFAULT_DATASET
    out_dir = out or settings.safety_classifier_dir
    examples = _load(path)  # before the encoder: a bad file fails in a moment, not after a model load
    encoder = Encoder.from_settings(settings, bulk=True)
    classifier, manifest = train(examples, encoder, TrainConfig(c=c, target_fp_rate=target_fp), dataset_digest(path))
    classifier.save(out_dir, manifest)
    console.print(f"safety classifier saved to {out_dir.resolve()}")
    console.print(
        f"threshold {manifest['threshold']:.3f}; out-of-fold block rate {manifest['cv']['oof_block_rate']:.1%}, "
        f"false positives {manifest['cv']['oof_fp_rate']:.1%}"
    )


@app.command("eval")
def eval_cmd(
    dataset: Path = typer.Option(None, "--dataset", exists=True, dir_okay=False, readable=True, help=_DATASET_HELP),
    split: Split = typer.Option(Split.heldout, "--split", help="which split to score"),
    min_block: float = typer.Option(0.90, "--min-block", min=0.0, max=1.0, help="exit 1 below this attack block rate"),
    max_fp: float = typer.Option(0.02, "--max-fp", min=0.0, max=1.0, help="exit 1 above this benign block rate"),
    show: int = typer.Option(10, "--show", min=0, help="list this many misses and false positives"),
) -> None:
    """Report the configured input chain's block rate and false-positive rate on held-out prompts."""
    from gateway.grounding.encoder import Encoder
    from safety.chain import SafetyChain
    from safety.dataset import DEFAULT_DATASET
    from safety.evaluate import evaluate

    settings = Settings()
    console = Console()
    examples = _load(dataset or DEFAULT_DATASET)
    encoder = Encoder.from_settings(settings, bulk=True) if "classifier" in settings.safety_input_filters else None
    chain = SafetyChain.from_settings(settings, encoder=encoder)
    if "classifier" in settings.safety_input_filters and not chain.classifier_filters:
        console.print("[yellow]no trained classifier: run `flywheel safety train` first; scoring patterns only[/]")
    report = evaluate(chain, examples, split.value)
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
