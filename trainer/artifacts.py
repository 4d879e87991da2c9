"""Packaging a trained policy as a version directory, and shipping it to the gateway as a canary.

``var/versions/<run>/`` holds ``adapter/`` (a PEFT LoRA the shared vLLM loads at runtime) or, with
``--merge``, ``model/`` (a full checkpoint with its tokenizer, which needs a vLLM server of its own:
register it with ``--endpoint URL``), plus ``tokenizer/``, ``config.json`` (the run's knobs),
``metrics.json`` and ``manifest.json`` (parent, data hash, hyperparameters, eval metrics, gate results
and a sha256 of every file). Resume checkpoints live under ``checkpoints/`` and are removed once the
manifest is written. Registration goes through the operator API, so it gets the same checks and
audit log as an operator's call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from flywheel.checksums import tree_checksums
from trainer.common import TrainError

FORMAT = "flywheel-version/1"
MANIFEST = "manifest.json"
REGISTRATION = "registration.json"


class RegistrationError(TrainError):
    """The gateway refused the version or could not be reached."""


def run_name(algorithm: str, data_sha256: str, config: dict[str, Any]) -> str:
    """Same data + same knobs -> same directory, so re-running a command resumes it."""
    knobs = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"{algorithm}-{data_sha256[:8]}-{knobs[:6]}"


def file_checksums(directory: Path) -> dict[str, str]:
    """Every file of a version except its manifest, registration record and resume checkpoints."""
    skip = {MANIFEST, REGISTRATION}
    return tree_checksums(directory, lambda rel: rel.name not in skip and rel.parts[0] != "checkpoints")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == FORMAT else None


def save_policy(model, tokenizer, directory: Path, merge: bool,  # type: ignore[no-untyped-def]
                stacked_on: Path | None = None) -> tuple[str, Path]:
    """Write the adapter (kind ``lora``) or the merged checkpoint (kind ``full``); returns (kind, path).

    ``stacked_on``: the parent's adapter when the parent was itself a LoRA version (trained on as base +
    parent adapter merged). The child's adapter is then folded with the parent's into one adapter on
    the original base, so the shared vLLM, which serves only that base, can load it.
    """
    tokenizer.save_pretrained(directory / "tokenizer")
    if not merge:
        if stacked_on is None:
            model.save_pretrained(directory / "adapter")
        else:
            model.save_pretrained(directory / "delta")  # kept: the child's own step from its parent
            fold_adapters(stacked_on, directory / "delta", directory / "adapter")
        return "lora", directory / "adapter"
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "model")
    return "full", directory / "model"


def fold_adapters(parent: Path, delta: Path, out: Path) -> None:
    """One LoRA adapter equal to ``parent`` followed by ``delta`` (both on the parent's base).

    PEFT's ``add_weighted_adapter(combination_type="cat")`` stacks the low-rank factors, so the
    result is exact, with rank = the sum of both ranks (``trainer.finish.check_lora`` keeps it within
    vLLM's ``--max-lora-rank``). The delta was trained on base + parent merged; since LoRA is additive,
    base + parent + delta is the same function.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.policy_ops import adapter_base

    base = AutoModelForCausalLM.from_pretrained(adapter_base(parent), local_files_only=True)
    model = PeftModel.from_pretrained(base, parent, adapter_name="parent")
    model.load_adapter(str(delta), adapter_name="delta")
    model.add_weighted_adapter(["parent", "delta"], [1.0, 1.0], "folded", combination_type="cat")
    model.save_pretrained(out.parent / "folding", selected_adapters=["folded"])
    shutil.rmtree(out, ignore_errors=True)
    (out.parent / "folding" / "folded").rename(out)
    shutil.rmtree(out.parent / "folding")


def write_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    """Checksum the finished version and write its manifest (last; atomically); drop resume checkpoints."""
    shutil.rmtree(directory / "checkpoints", ignore_errors=True)
    manifest = {"format": FORMAT, "name": directory.name, "created_at": dt.datetime.now(dt.UTC).isoformat(),
                **fields, "files": file_checksums(directory)}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    tmp.replace(directory / MANIFEST)
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    if manifest is None:
        raise TrainError(f"{directory}: no finished version here (manifest.json missing)")
    if file_checksums(directory) != manifest["files"]:
        raise TrainError(f"{directory}: files changed since the manifest was written")
    return manifest


def register_canary(directory: Path, weight: float, url: str, key: str, endpoint: str | None = None,
                    parent: str | None = None, notes: str | None = None) -> dict[str, Any]:
    """Register a finished, gate-passing version through the operator API and give it ``weight``.

    The gateway loads a ``lora`` version into the shared vLLM itself; a ``full`` one is served by the
    vLLM at ``endpoint`` that the operator started on ``<version>/model``.
    """
    manifest = verify(directory)
    if not manifest.get("gates", {}).get("passed", False):
        raise RegistrationError(f"{directory.name} failed its gates; it is kept on disk but not registered")
    if manifest["kind"] == "full" and not endpoint:
        raise RegistrationError("a merged (full) checkpoint needs its own vLLM server: pass --endpoint URL")
    body: dict[str, Any] = {"kind": manifest["kind"], "path": str((directory / manifest["artifact"]).resolve()),
                            "parent": parent or manifest.get("parent", {}).get("id"),
                            "notes": notes or f"{manifest['algorithm']} run {directory.name}"}
    if endpoint:
        body["endpoint"] = endpoint
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=180) as http:
            created = http.post("/admin/policies", json=body)
            _raise(created, "register")
            version = created.json()
            weighted = http.post(f"/admin/policies/{version['id']}/weight", json={"weight": weight})
            _raise(weighted, f"set the weight of {version['id']}")
            version = weighted.json()
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the gateway at {url}: {exc}") from exc
    (directory / REGISTRATION).write_text(json.dumps({"url": url, "version": version}, indent=2, default=str))
    return version


def _raise(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    try:
        message = resp.json().get("error", {}).get("message")
    except ValueError:
        message = None
    raise RegistrationError(f"gateway refused to {what}: {message or f'HTTP {resp.status_code} {resp.text[:200]}'}")
