"""Packaging a trained policy as a version directory, and shipping it to the gateway as a canary.

``var/versions/<run>/`` holds ``adapter/`` (a PEFT LoRA the shared vLLM loads at runtime) or, with
``--merge``, ``model/`` (a full checkpoint with its tokenizer, which needs a vLLM server of its own:
register it with ``--endpoint URL``), plus ``tokenizer/``, ``config.json`` (the run's knobs),
``metrics.json`` and ``manifest.json`` (parent, data hash, hyperparameters, eval metrics, gate results
and a sha256 of every file). ``inputs.json`` records the knobs and data hash the run started with, so
a re-run under the same name resumes only the same run (``trainer.common.check_resume``). Resume
checkpoints live under ``checkpoints/`` and are removed once the manifest is written. Registration goes
through the operator API, so it gets the same checks and audit log as an operator's call; it is
recorded in ``registration.json`` and, being part of a command that is re-run to resume, idempotent.
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
    skip = {MANIFEST, REGISTRATION, MANIFEST + ".tmp", REGISTRATION + ".tmp"}  # written after the checksums
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
    """Checksum the finished version and write its manifest (last; atomically); then drop resume checkpoints.

    In that order: until the manifest is in place the run is unfinished, and its checkpoints are how a
    re-run resumes instead of starting over.
    """
    manifest = {"format": FORMAT, "name": directory.name, "created_at": dt.datetime.now(dt.UTC).isoformat(),
                **fields, "files": file_checksums(directory)}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    tmp.replace(directory / MANIFEST)
    shutil.rmtree(directory / "checkpoints", ignore_errors=True)
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    if manifest is None:
        raise TrainError(f"{directory}: no finished version here (manifest.json missing)")
    if file_checksums(directory) != manifest["files"]:
        raise TrainError(f"{directory}: files changed since the manifest was written")
    return manifest


def register_canary(directory: Path, weight: float, url: str, key: str, endpoint: str | None = None,
                    parent: str | None = None, notes: str | None = None,
                    transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """Register a finished, gate-passing version through the operator API and give it ``weight``.

    The gateway loads a ``lora`` version into the shared vLLM itself; a ``full`` one is served by the
    vLLM at ``endpoint`` that the operator started on ``<version>/model``.

    Idempotent, because re-running the command is how an interrupted run resumes: a version of the
    gateway that is still active with this artifact's sha256 (preferably the one ``registration.json``
    names) is reused, not registered again, since each lora registration spends a LoRA slot. A version
    registered here whose weight cannot be set is retired again, so no weight-0 canary is left behind.
    The returned version carries ``reused: true`` when nothing new was registered.
    """
    from policies.artifacts import artifact_sha256
    from policies.registry_errors import InvalidArtifact

    manifest = verify(directory)
    if not manifest.get("gates", {}).get("passed", False):
        raise RegistrationError(f"{directory.name} failed its gates; it is kept on disk but not registered")
    if manifest["kind"] == "full" and not endpoint:
        raise RegistrationError("a merged (full) checkpoint needs its own vLLM server: pass --endpoint URL")
    artifact = (directory / manifest["artifact"]).resolve()
    try:
        sha = artifact_sha256(artifact)  # the registry's own hash, to find this artifact among its versions
    except InvalidArtifact as exc:
        raise RegistrationError(f"{directory.name}: {exc}") from None
    body: dict[str, Any] = {"kind": manifest["kind"], "path": str(artifact),
                            "parent": parent or manifest.get("parent", {}).get("id"),
                            "notes": notes or f"{manifest['algorithm']} run {directory.name}"}
    if endpoint:
        body["endpoint"] = endpoint
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=180, transport=transport) as http:
            listed = http.get("/admin/policies")
            _raise(listed, "list the policy versions")
            data = listed.json()
            versions = data.get("data") if isinstance(data, dict) else None
            version = _registered(versions or [], directory, manifest["kind"], sha, endpoint)
            if version is not None and (version.get("status") == "stable" or version.get("weight", 0) > 0):
                # already serving (stable, or a canary the controller or an operator has weighted since):
                # a rerun must not move its weight back
                return _record(directory, url, {**version, "reused": True})
            reused = version is not None
            if version is None:
                created = http.post("/admin/policies", json=body)
                _raise(created, "register")
                version = created.json()
                _record(directory, url, version)  # a rerun finds it even if setting the weight fails below
            weighted = http.post(f"/admin/policies/{version['id']}/weight", json={"weight": weight})
            if weighted.status_code >= 400 and not reused:
                after = (f"; {version['id']} was retired again" if _retire(http, version["id"], weighted)
                         else f"; {version['id']} stays at weight 0 and a re-run reuses it")
                _raise(weighted, f"set the weight of {version['id']}", after)
            _raise(weighted, f"set the weight of {version['id']}")
            version = {**weighted.json(), **({"reused": True} if reused else {})}
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the gateway at {url}: {exc}") from exc
    except ValueError as exc:  # a body that is not the operator API's JSON
        raise RegistrationError(f"unexpected answer from the gateway at {url}: {exc}") from exc
    return _record(directory, url, version)


def _registered(versions: list[dict[str, Any]], directory: Path, kind: str, sha: str,
                endpoint: str | None) -> dict[str, Any] | None:
    """The gateway's active version of this very artifact, if there is one: the one ``registration.json``
    recorded first, else the newest."""
    matches = [v for v in versions if v.get("artifact_sha256") == sha and v.get("kind") == kind
               and v.get("status") in ("canary", "stable") and (kind != "full" or v.get("endpoint") == endpoint)]
    try:
        recorded = json.loads((directory / REGISTRATION).read_text()).get("version", {}).get("id")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return next((v for v in matches if v.get("id") == recorded), matches[-1] if matches else None)


def _retire(http: httpx.Client, version_id: str, why: httpx.Response) -> bool:
    """Take back a version registered a moment ago whose weight could not be set; True when done (best
    effort: if this fails too, a re-run finds the version by its sha256 and reuses it)."""
    reason = f"registration incomplete: setting the weight failed (HTTP {why.status_code})"
    try:
        return http.post(f"/admin/policies/{version_id}/retire", json={"reason": reason}).status_code < 400
    except httpx.HTTPError:
        return False


def _record(directory: Path, url: str, version: dict[str, Any]) -> dict[str, Any]:
    """Write ``registration.json`` (atomically): which gateway version serves this directory."""
    tmp = directory / (REGISTRATION + ".tmp")
    tmp.write_text(json.dumps({"url": url, "version": version}, indent=2, default=str))
    tmp.replace(directory / REGISTRATION)
    return version


def _raise(resp: httpx.Response, what: str, after: str = "") -> None:
    if resp.status_code < 400:
        return
    try:
        message = resp.json().get("error", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    detail = message or f"HTTP {resp.status_code} {resp.text[:200]}"
    raise RegistrationError(f"gateway refused to {what}: {detail}{after}")
