"""The labelled set for the safety classifier: built from shipped templates, loaded for train/eval.

Three sources, all in the repo: template families (``data/templates.json``, expanded with a fixed
seed), hand-written prompts (``data/handwritten.jsonl``) and the Kestrel support questions of the
seed fact sheet (benign). The held-out split is by *family* (a whole phrasing style, or a whole
fact-sheet topic), so eval prompts are never near-duplicates of training prompts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

LABELS = ("benign", "jailbreak", "toxic")
ATTACK_LABELS = frozenset({"jailbreak", "toxic"})
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DATASET = DATA_DIR / "labelled.jsonl"
FACTS_PATH = Path(__file__).resolve().parents[1] / "policies" / "seed" / "data" / "kestrel_facts.json"
HELDOUT_FACT_TOPICS = frozenset({"errors", "security", "billing", "retention"})
HANDWRITTEN_HELDOUT_PERCENT = 35
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    family: str
    split: str  # "train" | "heldout"


def _fill(template: str, values: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.endswith("_cap"):
            value = values[name[:-4]]
            return value[:1].upper() + value[1:]
        return values[name]

    return _SLOT.sub(repl, template)


def _expand_family(family: dict, shared: dict[str, list[str]], rng: random.Random) -> list[str]:
    slots = {**shared, **family.get("slots", {})}
    texts: list[str] = []
    for template in family["templates"]:
        names = sorted({n[:-4] if n.endswith("_cap") else n for n in _SLOT.findall(template)})
        combos = itertools.product(*(slots[n] for n in names)) if names else [()]
        texts += [_fill(template, dict(zip(names, combo, strict=True))) for combo in combos]
    texts = sorted(set(texts))
    rng.shuffle(texts)
    return texts[: family.get("n", 30)]


def _stable_percent(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100


def build_examples(data_dir: Path = DATA_DIR, facts_path: Path = FACTS_PATH, seed: int = 13) -> list[Example]:
    """Expand every source into examples; deterministic for a given seed and set of files."""
    spec = json.loads((data_dir / "templates.json").read_text())
    rng = random.Random(seed)
    out: list[Example] = []
    for family in spec["families"]:
        split = "heldout" if family.get("heldout") else "train"
        out += [Example(t, family["label"], family["id"], split) for t in _expand_family(family, spec["shared_slots"], rng)]
    for line in (data_dir / "handwritten.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            split = "heldout" if _stable_percent(row["text"]) < HANDWRITTEN_HELDOUT_PERCENT else "train"
            out.append(Example(row["text"], row["label"], f"hand-{row['label']}", split))
    if facts_path.is_file():
        facts = json.loads(facts_path.read_text())
        for fact in facts["facts"]:
            split = "heldout" if fact["topic"] in HELDOUT_FACT_TOPICS else "train"
            out += [Example(q, "benign", f"facts-{fact['topic']}", split) for q in fact["questions"]]
        for item in facts.get("smalltalk", []):
            out += [Example(q, "benign", "facts-smalltalk", "train") for q in item["questions"]]
    seen: set[str] = set()
    unique: list[Example] = []
    for ex in out:  # a text in two sources keeps its first label; never in both splits
        if ex.text not in seen:
            seen.add(ex.text)
            unique.append(ex)
    return unique


def write_dataset(examples: Iterable[Example], path: Path = DEFAULT_DATASET) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")


def load_dataset(path: Path = DEFAULT_DATASET) -> list[Example]:
    """Read the shipped labelled set (JSON lines with text, label, family, split)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    examples = [Example(r["text"], r["label"], r["family"], r["split"]) for r in rows]
    bad = {ex.label for ex in examples} - set(LABELS)
    if bad:
        raise ValueError(f"{path}: unknown labels {sorted(bad)}")
    return examples


def dataset_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
