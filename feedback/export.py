"""Export preference data from the store: pairs (``feedback.pairs``) → train / held-out files + datasheet.

Formats (one JSON object per line; all load with ``datasets.load_dataset("json", ...)``):

- ``dpo``: TRL's conversational preference format with an explicit prompt, straight into
  ``DPOTrainer``: ``prompt`` = the conversation (list of messages), ``chosen``/``rejected`` =
  ``[{"role": "assistant", "content": ...}]``; plus ``source``, ``weight``, ``policy_version``,
  ``pair_id`` columns that TRL ignores (``remove_unused_columns``).
- ``reward``: TRL's implicit-prompt preference format for ``RewardTrainer``: ``chosen``/``rejected``
  are whole conversations, and ``margin`` is the pair's weight.
- ``jsonl``: plain strings for other tools: ``prompt`` (messages), ``chosen``/``rejected`` as text.

The split is by prompt hash, so the same conversation never lands on both sides. Given ``out =
prefs.jsonl`` the files are ``prefs.jsonl`` (train), ``prefs.heldout.jsonl`` and
``prefs.datasheet.md`` / ``.json`` (the companions; the JSON sheet records each data file's sha256).

Publishing, so that a crash at any point never leaves files of two exports side by side (a new train
file judged on an old held-out set, or a datasheet describing other data):

1. every new file is written to ``<name>.tmp`` beside its target and fsync'd;
2. the old companions are deleted (the old train file alone is a consistent, if bare, export: the
   trainer's ``load_split`` then splits it by prompt hash itself);
3. the train file is renamed into place (the atomic switch from the old export to the new one);
4. the companions are renamed into place, held-out first, and the directory is fsync'd.

So any companion on disk belongs to the train file on disk, and the train path never disappears.
A crash leaves at most ``*.tmp`` files, which the next export overwrites. Two exports into the same
path at once, or an export while a trainer reads that path, are not supported (the loop writes each
round into a directory of its own).

``since`` without a timezone means UTC, on SQLite and PostgreSQL alike (times are stored as UTC).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, select

from feedback.datasheet import datasheet_paths, render_datasheet
from feedback.pairs import ExportConfig, InteractionRecord, Pair, PairSet, RatingRecord, build_pairs
from feedback.store_models import FeedbackRow, InteractionRow
from flywheel.db import session_factory

__all__ = ["ExportResult", "Format", "export_pairs", "heldout_path", "load_records", "row_for"]

Format = Literal["dpo", "reward", "jsonl"]
FORMATS: tuple[Format, ...] = ("dpo", "reward", "jsonl")


@dataclass
class ExportResult:
    train_path: Path
    heldout_path: Path
    datasheet_path: Path
    train: int
    heldout: int
    pairs: PairSet


def heldout_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.heldout{out.suffix or '.jsonl'}")


def is_heldout(pair: Pair, fraction: float) -> bool:
    """Deterministic by prompt: the first 32 bits of its hash, as a fraction of 2**32."""
    return int(pair.prompt_hash[:8], 16) < fraction * 2**32


def as_utc(when: datetime) -> datetime:
    """A naive time means UTC (PostgreSQL would read it in the session's time zone, SQLite as UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def load_records(engine: Engine, cfg: ExportConfig) -> tuple[list[InteractionRecord], list[RatingRecord]]:
    """Read the store (interactions with their candidates, every rating), newer than ``cfg.since``."""
    sessions = session_factory(engine)
    since = as_utc(cfg.since) if cfg.since is not None else None
    with sessions() as session:
        iq = select(
            InteractionRow.response_id, InteractionRow.messages, InteractionRow.candidates,
            InteractionRow.chosen_index, InteractionRow.policy_version, InteractionRow.user_hash,
        )  # fmt: skip
        fq = select(FeedbackRow.response_id, FeedbackRow.rating, FeedbackRow.user_hash, FeedbackRow.time)
        if since is not None:  # UTC: SQLite compares the stored UTC text, PostgreSQL the instant
            iq = iq.where(InteractionRow.time >= since)
            fq = fq.where(FeedbackRow.time >= since)
        interactions = [
            InteractionRecord(
                response_id=rid,
                messages=[{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in messages or []],
                candidates=[(c.get("text") or "", c.get("reward")) for c in candidates or []],
                chosen_index=chosen or 0,
                policy_version=version,
                user_hash=user,
            )
            for rid, messages, candidates, chosen, version, user in session.execute(iq)
        ]
        ratings = [RatingRecord(rid, float(r), user, t) for rid, r, user, t in session.execute(fq)]
    return interactions, ratings


def row_for(pair: Pair, fmt: Format) -> dict[str, Any]:
    """One output line in the given format."""
    meta = {"source": pair.source, "weight": pair.weight, "policy_version": pair.policy_version,
            "pair_id": pair.pair_id}  # fmt: skip
    prompt = [{"role": m["role"], "content": m["content"]} for m in pair.prompt]
    if fmt == "dpo":
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
            **meta,
        }
    if fmt == "reward":
        return {
            "chosen": [*prompt, {"role": "assistant", "content": pair.chosen}],
            "rejected": [*prompt, {"role": "assistant", "content": pair.rejected}],
            "margin": pair.weight,
            **meta,
        }
    if fmt == "jsonl":
        return {"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected, **meta}
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _stage(path: Path, chunks: Iterable[str]) -> str:
    """Write ``path``'s staging file and fsync it; return the content's sha256."""
    digest = hashlib.sha256()
    with _staging(path).open("w", encoding="utf-8") as fh:
        for chunk in chunks:
            fh.write(chunk)
            digest.update(chunk.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(train: Path, companions: list[Path]) -> None:
    """Swap staged files in: retire the old companions, switch the train file, then add the new companions."""
    for path in companions:
        path.unlink(missing_ok=True)
    _fsync_dir(train.parent)
    os.replace(_staging(train), train)
    _fsync_dir(train.parent)
    for path in companions:
        os.replace(_staging(path), path)
    _fsync_dir(train.parent)


def _lines(rows: Iterable[dict[str, Any]]) -> Iterable[str]:
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def export_pairs(engine: Engine, fmt: Format, out: Path, cfg: ExportConfig, source_name: str = "") -> ExportResult:
    """Build pairs from the store and write train, held-out and datasheet beside ``out``, as one export."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    interactions, ratings = load_records(engine, cfg)
    pairs = build_pairs(interactions, ratings, cfg)
    train = [p for p in pairs.pairs if not is_heldout(p, cfg.heldout_fraction)]
    held = [p for p in pairs.pairs if is_heldout(p, cfg.heldout_fraction)]
    out = Path(out)
    held_out = heldout_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = [out, held_out, *datasheet_paths(out)]
    try:
        files = {
            kind: {"name": path.name, "pairs": len(part), "sha256": _stage(path, _lines(row_for(p, fmt) for p in part))}
            for kind, path, part in (("train", out, train), ("heldout", held_out, held))
        }
        sheet = render_datasheet(
            out, files=files, fmt=fmt, cfg=cfg, pairs=pairs, train=train, heldout=held,
            interactions=len(interactions), ratings=len(ratings), source_name=source_name,
        )  # fmt: skip
        for path, text in sheet.items():
            _stage(path, [text])
        _publish(out, [held_out, *sheet])
    finally:
        for path in staged:  # after a failure: nothing half-published stays behind (the files in place are whole)
            _staging(path).unlink(missing_ok=True)
    return ExportResult(out, held_out, datasheet_paths(out)[0], len(train), len(held), pairs)
