"""Reward-model versions on disk: ``var/reward/<id>/`` with a manifest, and the ``ACTIVE`` pointer.

A version directory holds the model files plus ``manifest.json`` (format, id, kind, data hash, config,
metrics, a sha256 of every file); the manifest is written last, so a directory without one is an
unfinished run and is never loaded. ``ACTIVE`` holds one version id; the gateway reads it at start
(``load_active_scorer``). With no ``ACTIVE`` yet, the initial head is trained from the shipped examples
(a few seconds, once) and activated, so a fresh deployment always has a scorer for best-of-n.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.checksums import tree_checksums
from policies.reward.base import InvalidRewardModel, RewardModelNotFound, RewardScorer

if TYPE_CHECKING:
    from flywheel.settings import Settings
    from policies.reward.encoder_head import TextEncoder

FORMAT = "flywheel-reward/1"
MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
LOCK = ".lock"
INITIAL_ID = "initial"
KINDS = ("encoder", "hf")
logger = logging.getLogger("flywheel.reward")


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` except the manifest, its temporary files and resume checkpoints."""
    return tree_checksums(directory, lambda rel: rel.name != MANIFEST and not rel.name.startswith(f".{MANIFEST}.")
                          and rel.parts[0] != "checkpoints")


def next_version_id(root: Path) -> str:
    """``r1``, ``r2``, ...: one more than the highest id on disk (finished or not)."""
    seqs = [int(m.group(1)) for p in root.glob("r*") if (m := re.fullmatch(r"r(\d+)", p.name))]
    return f"r{max(seqs, default=0) + 1}"


@contextmanager
def _locked(reward_dir: Path) -> Iterator[None]:
    """Hold ``var/reward/.lock`` (an exclusive flock): ``serve --workers N`` starts N processes that may
    all find no scorer and build or activate one at the same moment; they take turns instead."""
    reward_dir.mkdir(parents=True, exist_ok=True)
    with open(reward_dir / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` atomically through a temporary file of its own (unique name, same directory), so
    two writers never share one temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other processes (and users) read these files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    """Finish a version: checksum its files and write the manifest (last, atomically)."""
    manifest = {"format": FORMAT, "id": directory.name, "created_at": dt.datetime.now(dt.UTC).isoformat(),
                **fields, "files": checksums(directory)}
    if manifest.get("kind") not in KINDS:
        raise InvalidRewardModel(f"reward kind must be one of {KINDS}, not {manifest.get('kind')!r}")
    _replace_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _is_hf_classifier(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def verify_version(directory: Path) -> dict[str, Any]:
    """The manifest of a finished version whose files still match their checksums."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise RewardModelNotFound(f"{directory}: no finished reward model (no {MANIFEST})")
    if checksums(directory) != manifest.get("files"):
        raise InvalidRewardModel(f"{directory}: files do not match the manifest checksums")
    return manifest


def load_scorer(path: Path, encoder: TextEncoder | None = None, verify: bool = True) -> RewardScorer:
    """Load the scorer at ``path``, dispatching on its manifest's kind.

    A bare Hugging Face sequence-classification directory (no manifest) loads as kind ``hf``.
    ``encoder``: the process's shared sentence encoder (loaded here when None and needed).
    """
    from policies.reward.encoder_head import EncoderHeadScorer
    from policies.reward.hf_model import HFRewardScorer

    path = Path(path)
    if not path.is_dir():
        raise RewardModelNotFound(f"{path}: no reward model directory")
    manifest = read_manifest(path)
    if manifest is None:
        if _is_hf_classifier(path):
            return HFRewardScorer.load(path, version=path.name)
        raise InvalidRewardModel(f"{path}: no {MANIFEST} (unfinished run?) and not a sequence-classification model")
    if verify:
        verify_version(path)
    version = str(manifest.get("id", path.name))
    if manifest.get("kind") == "hf":
        return HFRewardScorer.load(path / "model", version=version, max_length=int(manifest.get("max_length", 1024)))
    if manifest.get("kind") == "encoder":
        return EncoderHeadScorer.load(path, encoder or _load_encoder(None), version)
    raise InvalidRewardModel(f"{path}: unknown reward kind {manifest.get('kind')!r}")


def _load_encoder(settings: Settings | None) -> TextEncoder:
    from gateway.grounding.encoder import Encoder  # the one offline MiniLM loader of the project

    if settings is None:
        return Encoder.load()
    return Encoder.from_settings(settings)


def active_id(settings: Settings) -> str | None:
    try:
        value = (settings.reward_dir / ACTIVE).read_text().strip()
    except OSError:
        return None
    return value or None


def activate(settings: Settings, version_id: str) -> Path:
    """Point ``ACTIVE`` at a finished version (checked first); gateways pick it up at their next start."""
    directory = settings.reward_dir / version_id
    verify_version(directory)
    with _locked(settings.reward_dir):
        _replace_text(settings.reward_dir / ACTIVE, version_id + "\n")
    return directory


def ensure_initial_scorer(settings: Settings, encoder: TextEncoder | None = None) -> RewardScorer:
    """The head trained from the shipped examples, built under ``var/reward/initial`` on first use.

    Built under the reward directory's lock: the first process builds it, the others wait and then
    load that build instead of writing the same files at the same time.
    """
    directory = settings.reward_dir / INITIAL_ID
    encoder = encoder or _load_encoder(settings)
    scorer = _current_initial(directory, encoder)
    if scorer is not None:
        return scorer
    with _locked(settings.reward_dir):
        return _current_initial(directory, encoder) or _build_initial(directory, encoder)


def _shipped_digest() -> str:
    from policies.reward.shipped import shipped_paths

    return hashlib.sha256(b"".join(p.read_bytes() for p in shipped_paths())).hexdigest()


def _current_initial(directory: Path, encoder: TextEncoder) -> RewardScorer | None:
    """The initial head when its manifest says it was built from the shipped examples as they are now."""
    manifest = read_manifest(directory)
    if manifest and manifest.get("data_sha256") == _shipped_digest():
        return load_scorer(directory, encoder)
    return None


def _build_initial(directory: Path, encoder: TextEncoder) -> RewardScorer:
    """Train the initial head from the shipped examples (caller holds the lock)."""
    import torch

    from policies.reward.encoder_head import EncoderHeadScorer, pair_features
    from policies.reward.fit import HeadFitConfig, fit_head
    from policies.reward.shipped import shipped_rows

    digest = _shipped_digest()
    (directory / MANIFEST).unlink(missing_ok=True)  # rebuilding: unfinished until the new manifest is written
    rows = shipped_rows()
    xc, xr = pair_features(encoder, [r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows],
                           [r["rejected"][-1]["content"] for r in rows])
    config = HeadFitConfig()
    head = fit_head(xc, xr, torch.ones(len(rows)), config)
    scorer = EncoderHeadScorer(encoder, head, INITIAL_ID)
    scorer.save(directory)
    write_manifest(directory, kind="encoder", data_sha256=digest, config=config.__dict__, encoder=encoder.name,
                   metrics={"train_pairs": len(rows)}, notes="initial head from the shipped preference examples")
    logger.info("built the initial reward head from %d shipped pairs at %s", len(rows), directory)
    return scorer


def load_active_scorer(settings: Settings, encoder: TextEncoder | None = None) -> RewardScorer:
    """The scorer the gateway uses for best-of-n: the ``ACTIVE`` version, else the initial head (then
    activated, so every gateway of the deployment agrees). Pass the process's shared encoder."""
    version = active_id(settings)
    if version is None:
        scorer = ensure_initial_scorer(settings, encoder)
        with _locked(settings.reward_dir):
            if active_id(settings) is None:  # re-checked under the lock: an activate() may have come first
                _replace_text(settings.reward_dir / ACTIVE, INITIAL_ID + "\n")
        return scorer
    path = Path(version) if Path(version).is_absolute() else settings.reward_dir / version
    if version != INITIAL_ID or read_manifest(path) is not None:
        return load_scorer(path, encoder or (_load_encoder(settings) if _kind(path) == "encoder" else None))
    return ensure_initial_scorer(settings, encoder)


def _kind(path: Path) -> str | None:
    manifest = read_manifest(path)
    return manifest.get("kind") if manifest else None
