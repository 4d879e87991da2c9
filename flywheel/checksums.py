"""sha256 of files and directory trees: the one implementation behind every manifest and artifact hash
(seed model, registry artifacts, reward models, trained versions)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_checksums(directory: Path, keep: Callable[[Path], bool] = lambda _: True) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``directory`` that ``keep`` accepts
    (called with the path relative to ``directory``), in sorted order."""
    directory = Path(directory)
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if path.is_file() and keep(rel):
            out[rel.as_posix()] = sha256_file(path)
    return out
