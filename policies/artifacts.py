"""A version's artifact identity: the content hash recorded at registration, the check that an artifact
still has it before anything loads it, and the adapter names that carry a prefix of it.

Called before anything loads an artifact the registry recorded (an adapter into vLLM after a restart, a
retired version promoted again, the seed at start), since the path may have been rebuilt since.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from flywheel.checksums import sha256_file, tree_checksums
from policies.registry_errors import ArtifactChanged, InvalidArtifact


def artifact_sha256(path: Path) -> str:
    """Content hash of a file, or of a directory (sorted relative paths + each file's hash)."""
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise InvalidArtifact(f"artifact path does not exist: {path}")
    outer = hashlib.sha256()
    for rel, digest in tree_checksums(path).items():
        outer.update(f"{rel}\0{digest}\n".encode())
    return outer.hexdigest()


def verify_artifact(path: str | Path, expected_sha256: str, what: str = "artifact") -> str:
    """Recompute the artifact's hash and refuse (``ArtifactChanged``) unless it matches ``expected_sha256``,
    the full hash or a prefix of at least 12 hex digits (what an adapter name carries). Returns the hash.
    """
    expected = expected_sha256.lower()
    if len(expected) < 12:
        raise ValueError(f"need at least 12 hex digits of the expected sha256, got {expected_sha256!r}")
    try:
        actual = artifact_sha256(Path(path))
    except OSError as exc:
        raise InvalidArtifact(f"{what} at {path} cannot be read: {exc}") from None
    if not actual.startswith(expected):
        raise changed_error(what, path, actual, expected)
    return actual


def changed_error(
    what: str, path: str | Path, actual: str, expected: str,
    fix: str = "restore the original files or register them as a new version",
) -> ArtifactChanged:  # fmt: skip
    """The one-line refusal for an artifact whose hash is not the registered one, ending in what to do."""
    return ArtifactChanged(
        f"{what} at {path} has changed since it was registered (sha256 {actual[:12]}..., registered "
        f"{expected[:12]}...); refusing to load it: {fix}"
    )


_ADAPTER_NAME = re.compile(r"flywheel-(?P<id>.+)-(?P<sha>[0-9a-f]{12})")


def adapter_sha256_prefix(name: str) -> str | None:
    """The 12-digit sha256 prefix an ``adapter_name`` carries; None for a name not made by it."""
    match = _ADAPTER_NAME.fullmatch(name)
    return match.group("sha") if match else None


def adapter_name(version_id: str, artifact_sha256: str) -> str:
    """The name a LoRA version is loaded under in vLLM: its id *and* its weights' hash. Ids restart at
    v1 in a fresh registry while a long-lived vLLM keeps its adapters; with the id alone, a new v1 met
    "already loaded" and silently served the old v1's weights (seen when test gateways with their own
    databases shared one vLLM). The same artifact re-registered under the same id reuses its slot."""
    return f"flywheel-{version_id}-{artifact_sha256[:12]}"
