"""What every trainer entry point shares: named errors, seeding, config (de)serialisation, progress bars.

Runs must repeat: seeds are fixed, torch uses a fixed number of threads (float reductions then add up in
the same order), and dropout is off in LoRA, so a resumed run lands on the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

console = Console(stderr=True)


class TrainError(RuntimeError):
    """Base of the errors a training command reports as one line and exit status 1."""


class DataError(TrainError):
    """The preference data (or prompts) cannot be trained on: empty, one-sided, too long, malformed."""


class TokenizerMismatch(TrainError):
    """The tokenizer does not belong to the model (vocabulary, special tokens or chat template)."""


class ResumeMismatch(TrainError):
    """A checkpoint exists but was made with a different config or data; refuse to mix them."""


def knob(default: Any, help: str) -> Any:  # noqa: A002 - TRL/argparse naming
    """A config field with help text, like TRL's config dataclasses."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def config_dict(config: Any) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass (Paths become strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_config(config: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_dict(config), indent=2, sort_keys=True))


def seed_everything(seed: int, threads: int) -> None:
    """Fix every RNG the trainers touch and the torch thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))


def progress(quiet: bool = False) -> Progress:
    """The rich progress bar every command shows (on stderr, so stdout stays parseable)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False, disable=quiet)


class RichProgressCallback(TrainerCallback):
    """A rich bar for a transformers/TRL Trainer (their own tqdm bars are switched off)."""

    def __init__(self, description: str, quiet: bool = False) -> None:
        self.description, self.quiet = description, quiet
        self._progress: Progress | None = None
        self._task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if not self.quiet:
            self._progress = progress(self.quiet)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=state.max_steps, info="")
            self._progress.update(self._task, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None and logs:
            shown = {k: v for k, v in logs.items() if k in ("loss", "rewards/accuracies", "rewards/margins", "accuracy")}
            self._progress.update(self._task, info=" ".join(f"{k}={v:.3g}" for k, v in shown.items()))

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StopAfterSteps(TrainerCallback):
    """End training after ``steps`` optimiser steps (the checkpoint stays): an interrupted run, on purpose."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step >= self.steps:
            control.should_training_stop = True
            control.should_save = True
        return control


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` of a Trainer output dir, if any."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)
