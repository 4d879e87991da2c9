"""The shipped knowledge base: Kestrel Backup's product documentation, one Markdown file per topic.

It is a package only so that the Markdown and the evaluation set travel inside the wheel
(package data); `flywheel kb init` ingests this directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped_kb_dir() -> Path:
    """The directory of the default documents (Markdown files; ``eval/`` holds no documents)."""
    return Path(str(resources.files(__name__)))


def shipped_eval_path() -> Path:
    """The question → answering-document evaluation set for ``flywheel kb eval``."""
    return shipped_kb_dir() / "eval" / "qa.jsonl"
