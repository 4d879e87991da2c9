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


RUN_ONLY = ("run_name", "stop_after", "quiet")  # how a run is driven, not what it trains
INPUTS = "inputs.json"  # what a run was started with: its knobs and its data hash (resume check)
_NOT_COMPARED = ("threads",)  # changes float summation order only, not what is trained


def naming_knobs(config: Any) -> dict[str, Any]:
    """The knobs a derived run name hashes. ``merge`` counts only when set: a merged run must not reuse
    an adapter run's directory, and unmerged runs keep the names they had before merge was counted."""
    knobs = {k: v for k, v in config_dict(config).items() if k not in RUN_ONLY and k != "merge"}
    if getattr(config, "merge", False):
        knobs["merge"] = True
    return knobs


_CONTENT_CHECKED = ("data", "prompts")  # compared by their sha256, not by how their path was spelled
_PATHS = ("heldout", "policy", "reward_model", "base_model")  # compared resolved: ./x and x are one file


def _compared(knobs: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in knobs.items() if k not in RUN_ONLY and k not in _NOT_COMPARED and k not in _CONTENT_CHECKED}
    return {k: str(Path(v).resolve()) if k in _PATHS and isinstance(v, str) else v for k, v in out.items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_resume(out: Path, config: Any, data_sha256: str, finished_sha256: str | None = None) -> None:
    """Refuse to resume or reuse ``out`` when it was started with other knobs or other data.

    A run named with ``--run-name`` keeps its name whatever the inputs, so without this a changed
    ``--data`` or ``--lora-r`` would continue the old checkpoint (or crash loading it) or hand back the
    old finished version. ``inputs.json`` records both at the start; a directory from before it existed
    is checked against its ``config.json`` and ``finished_sha256`` (the data hash in its manifest).
    """
    inputs = _read_json(out / INPUTS)
    if isinstance(inputs, dict):
        saved, saved_sha = inputs.get("config"), inputs.get("data_sha256")
    else:
        saved, saved_sha = _read_json(out / "config.json"), finished_sha256
    if saved_sha is not None and saved_sha != data_sha256:
        raise ResumeMismatch(f"{out} was started on other data (sha256 {str(saved_sha)[:12]}, now "
                             f"{data_sha256[:12]}); pass another --run-name, or move that directory away")
    if not isinstance(saved, dict):
        return  # nothing was started here yet
    old, new = _compared(saved), _compared(config_dict(config))
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if changed:
        shown = ", ".join(f"{k} {json.dumps(old.get(k))[:40]} -> {json.dumps(new.get(k))[:40]}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ResumeMismatch(f"{out} was started with other settings ({shown}{more}); use the same options to "
                             "resume it, or pass another --run-name")


def record_inputs(out: Path, config: Any, data_sha256: str) -> None:
    """Write ``inputs.json`` (once, atomically) so a later run under this name can be checked."""
    if (out / INPUTS).is_file():
        return
    tmp = out / (INPUTS + ".tmp")
    tmp.write_text(json.dumps({"config": _compared(config_dict(config)), "data_sha256": data_sha256},
                              indent=2, sort_keys=True))
    tmp.replace(out / INPUTS)


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
