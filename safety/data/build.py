"""Regenerate ``safety/data/labelled.jsonl`` from the templates, hand-written prompts and fact sheet.

Run ``python -m safety.data.build`` after editing ``templates.json`` or ``handwritten.jsonl``;
the output is deterministic, so an unchanged source gives a byte-identical file.
"""

from __future__ import annotations

from collections import Counter

from safety.dataset import DEFAULT_DATASET, build_examples, write_dataset


def main() -> None:
    examples = build_examples()
    write_dataset(examples, DEFAULT_DATASET)
    counts = Counter((ex.split, ex.label) for ex in examples)
    print(f"wrote {len(examples)} examples to {DEFAULT_DATASET}")
    for (split, label), n in sorted(counts.items()):
        print(f"  {split:8s} {label:10s} {n}")


if __name__ == "__main__":
    main()
