"""The datasheet written beside every export: what is in the data set and how it was made.

A trainer (or a reviewer) should be able to tell from it, without opening the data, where the pairs
came from (source, policy version), what ratings stand behind them, and whether a few users
dominate it (pairs per user, by bucket, and the largest single share). Written as Markdown for
people and JSON for tools.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.pairs import ExportConfig, Pair, PairSet

__all__ = ["datasheet_facts", "datasheet_paths", "render_datasheet", "write_datasheet"]

_BUCKETS = ((1, 1, "1"), (2, 5, "2-5"), (6, 20, "6-20"), (21, 10**12, "21+"))


def _user_buckets(per_user: Counter[str], capped: set[str]) -> dict[str, int]:
    out = {label: 0 for _, _, label in _BUCKETS}
    for n in per_user.values():
        for lo, hi, label in _BUCKETS:
            if lo <= n <= hi:
                out[label] += 1
    out["reached_cap"] = len(capped)
    return out


def datasheet_facts(
    *, fmt: str, cfg: ExportConfig, pairs: PairSet, train: list[Pair], heldout: list[Pair],
    interactions: int, ratings: int, source_name: str,
) -> dict[str, Any]:  # fmt: skip
    kept = pairs.pairs
    total = len(kept) or 1
    top_share = max(pairs.pairs_per_user.values(), default=0) / total
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": source_name,
        "format": fmt,
        "config": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(cfg).items()},
        "read": {"interactions": interactions, "ratings": ratings},
        "ratings_used": dict(sorted(pairs.ratings_used.items())),
        "pairs": {"total": len(kept), "train": len(train), "heldout": len(heldout)},
        "prompts": {"train": len({p.prompt_hash for p in train}), "heldout": len({p.prompt_hash for p in heldout})},
        "by_source": dict(sorted(Counter(p.source for p in kept).items())),
        "found_by_source": dict(sorted(pairs.candidates_by_source.items())),
        "by_policy_version": dict(sorted(Counter(p.policy_version or "unknown" for p in kept).items())),
        "dropped": dict(sorted(pairs.dropped.items())),
        "users": {
            "contributing": len(pairs.pairs_per_user),
            "pairs_per_user_buckets": _user_buckets(pairs.pairs_per_user, pairs.capped_users),
            "largest_user_share": round(top_share, 4),
            "pairs_without_user": sum(1 for p in kept if not p.users),
        },
    }


def _table(title: str, counts: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items()) or "| (none) | 0 |"
    return f"### {title}\n\n| | count |\n| --- | --- |\n{rows}\n"


def _markdown(facts: dict[str, Any], out: Path) -> str:
    users = facts["users"]
    files = facts.get("files") or {}
    sums = "".join(f"- {kind} file: `{f['name']}` ({f['pairs']} pairs, sha256 `{f['sha256']}`)\n"
                   for kind, f in files.items())  # fmt: skip
    parts = [
        f"# Datasheet: {out.name}\n",
        f"- created: {facts['created']}\n- store: `{facts['store']}`\n- format: `{facts['format']}`\n"
        f"- read: {facts['read']['interactions']} interactions, {facts['read']['ratings']} ratings\n"
        f"- pairs: {facts['pairs']['total']} (train {facts['pairs']['train']} over {facts['prompts']['train']} "
        f"prompts, held-out {facts['pairs']['heldout']} over {facts['prompts']['heldout']} prompts; split by "
        f"prompt hash)\n- contributing users: {users['contributing']}; largest single-user share "
        f"{users['largest_user_share']:.1%}; pairs without a user (reward model only): {users['pairs_without_user']}\n"
        + sums,
        _table("Pairs by source", facts["by_source"]),
        _table("Pairs by policy version (of the chosen answer)", facts["by_policy_version"]),
        _table("Ratings behind the pairs (latest per rater and response)", facts["ratings_used"]),
        _table("Users by pairs contributed", users["pairs_per_user_buckets"]),
        _table("Dropped", facts["dropped"]),
        "### Settings\n\n```json\n" + json.dumps(facts["config"], indent=2) + "\n```\n",
        "Text was PII-redacted when the events were created (emails, phones, card numbers, keys); user ids "
        "appear only as salted hashes in the store and not at all in this data set.\n",
    ]
    return "\n".join(parts)


def datasheet_paths(out: Path) -> tuple[Path, Path]:
    """``<stem>.datasheet.md`` and ``<stem>.datasheet.json`` beside ``out``."""
    return out.with_name(f"{out.stem}.datasheet.md"), out.with_name(f"{out.stem}.datasheet.json")


def render_datasheet(out: Path, files: dict[str, Any] | None = None, **facts_args: Any) -> dict[Path, str]:
    """The datasheet's two files as {path: text}, for the exporter to publish together with the data.

    ``files`` (name, sha256 and pair count of the train and held-out files) ties the sheet to the exact
    data it describes, so a tool can check that the files beside it belong to it.
    """
    facts = datasheet_facts(**facts_args)
    if files is not None:
        facts["files"] = files
    md_path, json_path = datasheet_paths(out)
    return {md_path: _markdown(facts, out), json_path: json.dumps(facts, indent=2) + "\n"}


def write_datasheet(out: Path, **facts_args: Any) -> Path:
    """Write the datasheet beside ``out``, each file by temp + rename (never half-written); return the .md."""
    for path, text in render_datasheet(out, **facts_args).items():
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return datasheet_paths(out)[0]
