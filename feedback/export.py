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
``prefs.datasheet.md`` / ``.json``. Files are written to a temporary name and renamed, so a reader
never sees half an export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, select

from feedback.datasheet import write_datasheet
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


def load_records(engine: Engine, cfg: ExportConfig) -> tuple[list[InteractionRecord], list[RatingRecord]]:
    """Read the store (interactions with their candidates, every rating), newer than ``cfg.since``."""
    sessions = session_factory(engine)
    with sessions() as session:
        iq = select(
            InteractionRow.response_id, InteractionRow.messages, InteractionRow.candidates,
            InteractionRow.chosen_index, InteractionRow.policy_version, InteractionRow.user_hash,
        )  # fmt: skip
        fq = select(FeedbackRow.response_id, FeedbackRow.rating, FeedbackRow.user_hash, FeedbackRow.time)
        if cfg.since is not None:
            iq = iq.where(InteractionRow.time >= cfg.since)
            fq = fq.where(FeedbackRow.time >= cfg.since)
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


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def export_pairs(engine: Engine, fmt: Format, out: Path, cfg: ExportConfig, source_name: str = "") -> ExportResult:
    """Build pairs from the store and write train, held-out and datasheet beside ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    interactions, ratings = load_records(engine, cfg)
    pairs = build_pairs(interactions, ratings, cfg)
    train = [p for p in pairs.pairs if not is_heldout(p, cfg.heldout_fraction)]
    held = [p for p in pairs.pairs if is_heldout(p, cfg.heldout_fraction)]
    out = Path(out)
    _write_jsonl(out, [row_for(p, fmt) for p in train])
    _write_jsonl(heldout_path(out), [row_for(p, fmt) for p in held])
    sheet = write_datasheet(
        out, fmt=fmt, cfg=cfg, pairs=pairs, train=train, heldout=held,
        interactions=len(interactions), ratings=len(ratings), source_name=source_name,
    )  # fmt: skip
    return ExportResult(out, heldout_path(out), sheet, len(train), len(held), pairs)
