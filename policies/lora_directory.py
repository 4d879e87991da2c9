"""Publish LoRA adapters to a directory that every replica of the stable vLLM server resolves from.

``POST /v1/load_lora_adapter`` reaches one server: behind a Kubernetes Service with several vLLM
replicas, a canary loaded that way exists on one pod only. vLLM ships a filesystem LoRA resolver
(the ``lora_filesystem_resolver`` plugin, enabled by ``VLLM_LORA_RESOLVER_CACHE_DIR`` together with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): a request for an unknown model name ``X`` makes the server load
``$VLLM_LORA_RESOLVER_CACHE_DIR/X`` if it is a PEFT LoRA directory whose ``base_model_name_or_path``
equals the path the server was started on. With that directory on a volume every replica mounts,
each replica — also one started after the canary was registered — loads the adapter on its first
request for it, and nothing has to call every pod.

:class:`DirectoryAdapterLoader` is the gateway's side of that: "load" copies the artifact into the
directory under the version's unique adapter name (atomically: a temporary name, then a rename), with
``base_model_name_or_path`` rewritten to the base path vLLM reports in ``/v1/models`` (``root``), and
then asks for one token as that model, so a broken adapter fails the registration instead of the
first user. The copy must still hash to the sha256 prefix the registry put in the adapter's name, so an
artifact rebuilt after registration is refused instead of served as that version. "unload" removes the
directory first (no replica loads it again) and then unloads it from
the replica the call reaches. Replicas that loaded it keep it until they restart; the router sends
them no traffic for it, and on CPU an unload frees no LoRA slot anyway (policies/vllm_server.py).

The CPU LoRA budget (``--max-loras`` − 1 adapters per server lifetime) is checked against what the
reached replica lists now, plus this loader's own publications; each replica spends its own budget as
it resolves adapters, which no one process can see. Restart the replicas before about
``--max-loras`` − 1 distinct adapters were ever published (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from policies.errors import AdapterCapacityError, AdapterNotFound, PolicyHTTPError
from policies.artifacts import adapter_sha256_prefix, verify_artifact
from policies.registry_errors import InvalidArtifact
from policies.vllm_client import PolicyClient

__all__ = ["DirectoryAdapterLoader"]

_PROBE = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1, "temperature": 0}


class DirectoryAdapterLoader:
    """An ``AdapterLoader`` (gateway.admin.service) that publishes adapters for vLLM's filesystem resolver."""

    def __init__(self, client: PolicyClient, directory: Path, *, max_adapters: int | None = None) -> None:
        self.client = client
        self.directory = Path(directory)
        self.max_adapters = max_adapters
        self._published: set[str] = set()  # names this loader published since it started

    async def load_lora_adapter(self, name: str, path: str) -> None:
        """Publish ``path`` as ``name`` (idempotent: names are unique per artifact) and load it once.

        When the one-token probe fails, only a directory this very call published is withdrawn: one that
        was already there (published by an earlier call or another gateway) may be what the stable or a
        canary is being served from, and a probe can fail for reasons of its own (a replica still
        starting). A cancelled call withdraws nothing: the adapter was not found broken.
        """
        source = Path(path)
        if not (source / "adapter_config.json").is_file():
            raise AdapterNotFound(404, {"message": f"no adapter_config.json under {source}"})
        await self._check_budget(name)
        target = self.directory / name
        had_published = name in self._published
        created = False
        if not target.exists():
            created = self._publish(source, target, await self._base_model_path(), adapter_sha256_prefix(name))
        self._published.add(name)
        try:
            await self.client.chat_completions({"model": name, **_PROBE})
        except Exception as exc:
            if created:  # the registration fails: withdraw what this call put there, and only that
                shutil.rmtree(target, ignore_errors=True)
            if not had_published:
                self._published.discard(name)
            if isinstance(exc, PolicyHTTPError):
                message = f"vLLM did not load the published adapter: {exc}"
                raise PolicyHTTPError(exc.status_code, exc.body, message) from exc
            raise

    async def unload_lora_adapter(self, name: str) -> None:
        """Withdraw ``name`` from the directory, then unload it from the replica this call reaches."""
        target = self.directory / name
        existed = target.exists()
        shutil.rmtree(target, ignore_errors=True)
        self._published.discard(name)
        try:
            await self.client.unload_lora_adapter(name)
        except AdapterNotFound:
            if not existed:
                raise

    async def _check_budget(self, name: str) -> None:
        if self.max_adapters is None:
            return
        loaded = set(await self.client.loaded_adapters())
        if name in loaded:
            return
        spent = len(loaded | self._published)
        if spent + 1 > self.max_adapters:
            raise AdapterCapacityError(
                f"{spent} LoRA adapters published or loaded on the reached vLLM replica; at most "
                f"{self.max_adapters} may ever be (CPU LoRA bug; unloading frees no slot): restart the replicas"
            )

    async def _base_model_path(self) -> str:
        """The path the server was started on: what vLLM's resolver compares ``base_model_name_or_path`` with."""
        for model in await self.client.models():
            if not model.get("parent") and model.get("root"):
                return str(model["root"])
        raise PolicyHTTPError(502, {"message": "vLLM's /v1/models lists no base model with a root path"})

    def _publish(self, source: Path, target: Path, base_model_path: str, sha256_prefix: str | None = None) -> bool:
        """Copy under a temporary name, point the config at vLLM's base path, then rename into place: a
        replica resolving the name meanwhile finds either nothing or the whole adapter. True when this
        call put ``target`` in place (False: another gateway published the same artifact first).

        ``sha256_prefix`` (carried by the registry's adapter names): the copy must still hash to it, so a
        version whose artifact was rebuilt after registration is refused, not served under its old name.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            shutil.copytree(source, staging)
            if sha256_prefix is not None:  # the copy, not the source: it is what replicas will load
                verify_artifact(staging, sha256_prefix, f"the adapter of {target.name} (copied from {source})")
            config_path = staging / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = base_model_path
            config_path.write_text(json.dumps(config, indent=2))
            os.replace(staging, target)
            return True
        except InvalidArtifact:  # ArtifactChanged: nothing was published
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if target.exists():  # another gateway published the same artifact first
                return False
            raise PolicyHTTPError(500, {"message": f"could not publish the adapter to {self.directory}: {exc}"})
