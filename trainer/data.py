"""Preference data as the trainers read it: the export's JSONL rows, validated, split and weighted.

Input rows (``feedback.export`` "dpo" format): ``prompt`` (chat messages), ``chosen``/``rejected``
(``[{"role": "assistant", "content": ...}]`` or a plain string), optional ``source`` ("human", "rlaif",
...) and ``weight``. Held-out pairs come from the export's ``<name>.heldout.jsonl`` next to the train
file when it exists; otherwise a deterministic slice by prompt hash is held out. Per-source weights
(``rlaif`` pairs labelled by the reward model get their own) become a deterministic resampling of the
training rows, which every TRL trainer can consume unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.common import DataError, TokenizerMismatch

Message = dict[str, Any]

# The export (feedback/pairs.py) names a pair by how it was found; the trainer by who labelled it.
# Pairs from people's ratings are "human"; pairs the reward model ranked (best-of-n) are "rlaif".
EXPORT_SOURCES = {"rated": "human", "rated_vs_candidate": "human", "best_of_n": "rlaif"}


@dataclass(frozen=True)
class Pair:
    prompt: list[Message]
    chosen: str
    rejected: str
    source: str = "human"
    weight: float = 1.0

    def to_dpo(self) -> dict[str, Any]:
        """TRL's conversational preference row with an explicit prompt."""
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    @property
    def prompt_key(self) -> str:
        return hashlib.sha256(json.dumps(self.prompt, sort_keys=True).encode()).hexdigest()


@dataclass
class PairSplit:
    train: list[Pair]
    heldout: list[Pair]
    sha256: str
    dropped: dict[str, int] = field(default_factory=dict)

    def sources(self) -> dict[str, int]:
        return dict(Counter(p.source for p in self.train))


def _answer(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content") or "")
    raise DataError(f"{where}: chosen/rejected must be a string or a list of messages")


def chat_messages(prompt: Any, where: str) -> list[Message]:
    """A prompt as chat messages: a string is one user turn; a list must hold message objects.

    Checked here so a malformed row is reported with its file and line instead of failing deep in
    the tokenizer (or as an AttributeError) after minutes of loading.
    """
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a string or a non-empty list of chat messages")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict):
            raise DataError(f"{where}: prompt message {i} must be an object with 'role' and 'content', "
                            f"not {type(message).__name__} {json.dumps(message)[:60]}")
    return [{"role": str(m.get("role") or "user"), "content": str(m.get("content") or "")} for m in prompt]


def _weight(value: Any, where: str) -> float:
    """A finite number (``null`` = 0): anything else would crash or poison the resampling later."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: 'weight' must be a finite number, not {json.dumps(value)[:40]}")
    return float(value)


def _pair(row: Any, where: str) -> Pair:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object with 'prompt', 'chosen' and 'rejected', "
                        f"not {type(row).__name__}")
    if "chosen" not in row or "rejected" not in row:
        raise DataError(f"{where}: one-sided row (needs both 'chosen' and 'rejected')")
    prompt = row.get("prompt")
    if prompt is None and isinstance(row["chosen"], list) and len(row["chosen"]) > 1:
        prompt = row["chosen"][:-1]  # implicit-prompt ("reward") format
    return Pair(chat_messages(prompt, where), _answer(row["chosen"], where), _answer(row["rejected"], where),
                label_source(row.get("source")), _weight(row.get("weight", 1.0), where))


def read_pairs(path: Path) -> list[Pair]:
    """Every row of a JSONL file as a Pair; malformed input raises DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc})") from exc
        pairs.append(_pair(row, f"{path}:{n}"))
    return pairs


def heldout_sibling(path: Path) -> Path:
    """``prefs.jsonl`` -> ``prefs.heldout.jsonl`` (the export's naming)."""
    return path.with_name(f"{path.stem}.heldout{path.suffix or '.jsonl'}")


def load_split(path: Path, heldout: Path | None = None, heldout_fraction: float = 0.1, seed: int = 0) -> PairSplit:
    """Read, clean and split preference data; refuse data nothing useful can be learnt from."""
    path = Path(path)
    pairs = read_pairs(path)
    held_path = heldout or (heldout_sibling(path) if heldout_sibling(path).is_file() else None)
    held = read_pairs(held_path) if held_path else []
    if not held and heldout is None:  # the export found no held-out prompt (few prompts): split here instead
        held_path = None
    digest = hashlib.sha256(path.read_bytes() + (held_path.read_bytes() if held_path else b""))
    if not pairs:
        raise DataError(f"{path}: no preference pairs (empty file)")
    usable = [p for p in pairs if p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected and p.weight > 0]
    dropped = {"identical_or_empty_or_zero_weight": len(pairs) - len(usable)}
    if not usable:
        raise DataError(f"{path}: all {len(pairs)} pairs are one-sided (chosen == rejected, an empty side, or weight 0)")
    if held_path is None:
        cut = heldout_fraction * 2**32
        held = [p for p in usable if int(p.prompt_key[:8], 16) < cut]
        usable = [p for p in usable if int(p.prompt_key[:8], 16) >= cut]
        if not usable or not held:  # too few distinct prompts for a hash split: fall back to a seeded shuffle
            rng = random.Random(seed)
            everything = sorted(usable + held, key=lambda p: p.prompt_key)
            rng.shuffle(everything)
            n_held = max(1, round(len(everything) * heldout_fraction))
            held, usable = everything[:n_held], everything[n_held:]
    if not usable:
        raise DataError(f"{path}: nothing left to train on after holding out {len(held)} pairs")
    held = [p for p in held if p.chosen != p.rejected]
    if not held:  # refused now: the gates and metrics need held-out pairs, and training first wastes the run
        source = f"{held_path}: " if held_path else f"{path}: "
        raise DataError(f"{source}no usable held-out pairs (empty, or every pair has chosen == rejected); "
                        "pass a --heldout file with pairs, or leave it out to hold out a slice of --data")
    return PairSplit(usable, held, digest.hexdigest(), dropped)


def label_source(source: Any) -> str:
    """``human`` or ``rlaif`` for the export's source names; other names are kept as they are."""
    name = str(source or "human")
    return EXPORT_SOURCES.get(name, name)


def resample(pairs: list[Pair], source_weights: dict[str, float], seed: int) -> list[Pair]:
    """Repeat each pair ``weight x source weight`` times in expectation (deterministic rounding by seed).

    A weight of 2 doubles a pair's say in the loss, 0.5 keeps half of such pairs: the same expected
    gradient as a weighted loss, without changing the trainer's loss code.
    """
    rng = random.Random(seed)
    out: list[Pair] = []
    for pair in pairs:
        w = pair.weight * source_weights.get(pair.source, 1.0)
        copies = int(w) + (1 if rng.random() < w - int(w) else 0)
        out += [pair] * copies
    if not out:
        raise DataError("every training pair has weight 0 after the per-source weights")
    rng.shuffle(out)
    return out


def check_lengths(pairs: list[Pair], tokenizer, max_length: int, what: str = "pairs") -> int:  # type: ignore[no-untyped-def]
    """Refuse pairs whose prompt + answer does not fit ``max_length`` tokens; returns the longest."""
    longest, too_long = 0, 0
    for pair in pairs:
        prompt = tokenizer.apply_chat_template(pair.prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        for answer in (pair.chosen, pair.rejected):
            n = len(prompt) + len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
            longest = max(longest, n)
            too_long += n > max_length
    if too_long:
        raise DataError(f"{too_long} answers in the {what} are longer than the context ({longest} > max_length "
                        f"{max_length} tokens); raise --max-length (within the model's context) or shorten them")
    return longest


def check_tokenizer(tokenizer, model_config) -> None:  # type: ignore[no-untyped-def]
    """The tokenizer must fit the model's embedding table and carry a chat template and pad/eos tokens."""
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise TokenizerMismatch(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab}: mismatched tokenizer")
    if not tokenizer.chat_template:
        raise TokenizerMismatch("the tokenizer has no chat template; conversations cannot be rendered")
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise TokenizerMismatch("the tokenizer needs eos and pad tokens")
