"""The operator API's behaviour: registry changes plus keeping vLLM's loaded LoRA adapters in step.

A lora version is loaded into the shared vLLM under its own name when registered (if that fails
the version is marked ``failed`` and the operator gets the reason), stays loaded while it is a canary
or the stable, and is unloaded when it is rolled back, retired, or replaced as stable. Unloads wait
``unload_grace_s`` first: every gateway process may still route to the version until its routing
cache refreshes, and in-flight requests must finish. Changes in this process are serialised by one
lock so that loads and unloads reach vLLM in the order the registry saw them.
Registry calls (database I/O, artifact hashing) run in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from gateway.errors import APIError, BadRequest, Conflict, NotFound, ServiceUnavailable
from policies.errors import AdapterAlreadyLoaded, AdapterCapacityError, AdapterNotFound
from policies.registry import Expected, PolicyRegistry
from policies.registry_errors import (
    InvalidArtifact,
    InvalidTransition,
    PreconditionFailed,
    RegistryError,
    VersionNotFound,
    WeightError,
)
from policies.registry_models import AuditEntry, Version

log = logging.getLogger(__name__)
T = TypeVar("T")


class AdapterLoader(Protocol):
    """What the service needs from vLLM (``policies.vllm_client.PolicyClient`` fits)."""

    async def load_lora_adapter(self, name: str, path: str) -> None: ...

    async def unload_lora_adapter(self, name: str) -> None: ...


class AdapterLoadFailed(APIError):
    """vLLM refused or failed to load an adapter."""

    status_code = 502
    error_type = "upstream_error"
    code = "adapter_load_failed"


def _api_error(exc: RegistryError) -> APIError:
    if isinstance(exc, VersionNotFound):
        return NotFound(str(exc), code="version_not_found")
    if isinstance(exc, PreconditionFailed):
        return Conflict(str(exc), code="precondition_failed")
    if isinstance(exc, InvalidTransition):
        return Conflict(str(exc), code="invalid_transition")
    if isinstance(exc, WeightError):
        return BadRequest(str(exc), param="weight", code="invalid_weight")
    if isinstance(exc, InvalidArtifact):
        return BadRequest(str(exc), code="invalid_artifact")
    return Conflict(str(exc), code="registry_error")


class AdminService:
    """Owns the behaviour behind ``/admin/policies`` and ``/admin/audit``."""

    def __init__(
        self,
        registry: PolicyRegistry,
        loader: AdapterLoader | None,
        *,
        max_loaded_adapters: int,
        unload_grace_s: float = 5.0,
        on_change: Callable[[], None] | None = None,
        max_best_of_n: int = 8,
    ) -> None:
        self.registry = registry
        self.max_best_of_n = max_best_of_n
        self.loader = loader
        self.max_loaded_adapters = max_loaded_adapters
        self.unload_grace_s = unload_grace_s
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self._pending: dict[str, tuple[str, asyncio.Task[None]]] = {}  # adapter name -> (version, unload)
        self._restoring: asyncio.Task[None] | None = None

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except RegistryError as exc:
            raise _api_error(exc) from None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # --- reads ----------------------------------------------------------------------------------
    async def list_versions(self) -> list[Version]:
        return await self._db(self.registry.list)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        return await self._db(self.registry.audit, limit)

    # --- changes --------------------------------------------------------------------------------
    async def register(
        self,
        kind: str,
        path: str,
        actor: str,
        *,
        parent: str | None = None,
        notes: str | None = None,
        endpoint: str | None = None,
        served_model_name: str | None = None,
    ) -> Version:
        """A new canary at weight 0; a lora is loaded into vLLM before this returns."""
        async with self._lock:
            if kind == "lora":
                self._require_loader()
                await self._check_capacity()
            version = await self._db(
                self.registry.register, kind, path, parent=parent, notes=notes, endpoint=endpoint,
                actor=actor, served_model_name=served_model_name,
            )
            if kind == "lora":
                try:
                    await self._load(version)
                except APIError as err:
                    await self._db(self.registry.mark_failed, version.id, actor, err.message)
                    self._changed()
                    err.message = f"{err.message}; {version.id} is marked failed"
                    raise
            self._changed()
            return version

    async def set_weight(
        self, version_id: str, weight: float, actor: str, reason: str | None = None,
        details: dict[str, Any] | None = None, *, expected: Expected | None = None,
    ) -> Version:
        async with self._lock:
            version = await self._db(self.registry.set_weight, version_id, weight, actor, _reason(reason, details),
                                     expected=expected)  # fmt: skip
            self._changed()
            return version

    async def set_serving(self, version_id: str, best_of_n: int | None, actor: str, reason: str | None = None) -> Version:
        if best_of_n is not None and best_of_n > self.max_best_of_n:
            raise BadRequest(f"best_of_n must be at most {self.max_best_of_n}", param="best_of_n")
        async with self._lock:
            version = await self._db(self.registry.set_serving, version_id, best_of_n, actor, _reason(reason, None))
            self._changed()
            return version

    async def promote(
        self, version_id: str, actor: str, reason: str | None = None, details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        """Make ``version_id`` the stable (reloading its adapter if it had been unloaded). ``expected`` is
        checked inside the registry's transaction; its status also here, so that a refused promote of a
        rolled-back version does not load its adapter first."""
        async with self._lock:
            target = await self._db(self.registry.get, version_id)
            if expected is not None and expected.status is not None:
                try:
                    Expected(status=expected.status).check(target.id, target.status, target.weight, target.metrics)
                except RegistryError as exc:
                    raise _api_error(exc) from None
            versions = await self._db(self.registry.list)
            old = next((v for v in versions if v.status == "stable"), None)
            loaded_here = False
            if target.kind == "lora" and target.status in ("retired", "rolled_back"):  # was unloaded
                self._require_loader()
                self._cancel_unload(target.served_model_name)
                await self._check_capacity()
                await self._load(target)
                loaded_here = True
            try:
                promoted = await self._db(self.registry.promote, version_id, actor, _reason(reason, details),
                                          expected=expected)  # fmt: skip
            except APIError:
                if loaded_here:
                    self._schedule_unload(target.id, target.served_model_name, grace_s=0.0)
                raise
            if old is not None and old.kind == "lora" and old.id != promoted.id:
                self._schedule_unload(old.id, old.served_model_name)
            self._changed()
            return promoted

    async def rollback(
        self, version_id: str, actor: str, reason: str | None = None, details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        return await self._end(self.registry.rollback, version_id, actor, reason, details, expected)

    async def retire(
        self, version_id: str, actor: str, reason: str | None = None, details: dict[str, Any] | None = None,
        *, expected: Expected | None = None,
    ) -> Version:
        return await self._end(self.registry.retire, version_id, actor, reason, details, expected)

    async def _end(
        self, change: Callable[..., Version], version_id: str, actor: str, reason: str | None,
        details: dict[str, Any] | None = None, expected: Expected | None = None,
    ) -> Version:
        async with self._lock:
            before = await self._db(self.registry.get, version_id)
            version = await self._db(change, version_id, actor, _reason(reason, details), expected=expected)
            if version.kind == "lora" and before.active:
                self._schedule_unload(version.id, version.served_model_name)
            self._changed()
            return version

    # --- vLLM adapters --------------------------------------------------------------------------
    async def restore_adapters(self) -> dict[str, str]:
        """Load every active lora version (after a vLLM restart); returns {version id: error}."""
        if self.loader is None:
            return {}
        failures: dict[str, str] = {}
        async with self._lock:
            for version in await self._db(self.registry.list):
                if version.kind == "lora" and version.active:
                    try:
                        await self._load(version)
                    except APIError as err:
                        failures[version.id] = err.message
        return failures

    async def start_restoring(self, retry_s: float = 5.0) -> dict[str, str]:
        """Gateway start-up: restore the adapters now, and keep retrying those that failed in the
        background (vLLM still starting, or restarted) until every active one is loaded. Until then a
        canary's requests fall back to stable, counted against it; failures are logged each round."""
        failures = await self.restore_adapters()
        if failures:
            self._log_restore_failures(failures)
            self._restoring = asyncio.get_running_loop().create_task(self._keep_restoring(retry_s))
        return failures

    async def _keep_restoring(self, retry_s: float) -> None:
        while True:
            await asyncio.sleep(retry_s)
            try:
                failures = await self.restore_adapters()
            except Exception as exc:  # noqa: BLE001 - the registry unreachable (a database blip): next round
                failures = {"registry": getattr(exc, "message", None) or str(exc).splitlines()[0]}
            if not failures:
                log.info("every active LoRA adapter is loaded in vLLM again")
                return
            self._log_restore_failures(failures)

    @staticmethod
    def _log_restore_failures(failures: dict[str, str]) -> None:
        for version_id, message in failures.items():
            log.warning("adapter of %s not loaded (retrying): %s", version_id, message)

    async def aclose(self) -> None:
        """Stop restoring; run pending unloads now (shutdown: no traffic is left to protect)."""
        if self._restoring is not None:
            self._restoring.cancel()
            await asyncio.gather(self._restoring, return_exceptions=True)
        pending = list(self._pending.items())
        for name, (version_id, task) in pending:
            task.cancel()
        await asyncio.gather(*(task for _, (_, task) in pending), return_exceptions=True)
        async with self._lock:
            for name, (version_id, _) in pending:
                await self._unload_if_inactive(version_id, name)

    def _require_loader(self) -> None:
        if self.loader is None:
            raise ServiceUnavailable(
                "this gateway has no vLLM LoRA loader configured; only 'full' versions can be registered",
                code="lora_unavailable",
            )

    async def _check_capacity(self) -> None:
        versions = await self._db(self.registry.list)
        loaded = {v.served_model_name for v in versions if v.kind == "lora" and v.active} | set(self._pending)
        if len(loaded) >= self.max_loaded_adapters:
            raise Conflict(
                f"adapter capacity reached: {len(loaded)} loaded (max {self.max_loaded_adapters}); "
                "roll back or retire a lora version first",
                code="adapter_capacity",
            )

    async def _load(self, version: Version) -> None:
        assert self.loader is not None
        try:
            await self.loader.load_lora_adapter(version.served_model_name, version.artifact_path)
        except AdapterAlreadyLoaded:
            return  # still loaded from before (an unload that had not happened yet)
        except AdapterCapacityError as exc:
            message = f"vLLM has no free LoRA slot for {version.id}: {exc}"
            raise Conflict(message, code="adapter_capacity") from None
        except Exception as exc:  # noqa: BLE001 - any failure is reported to the operator
            raise AdapterLoadFailed(f"vLLM could not load the adapter of {version.id}: {exc}") from None

    def _cancel_unload(self, name: str) -> None:
        entry = self._pending.pop(name, None)
        if entry is not None:
            entry[1].cancel()

    def _schedule_unload(self, version_id: str, name: str, grace_s: float | None = None) -> None:
        self._cancel_unload(name)
        if self.loader is None:
            log.warning("adapter %s of %s stays loaded: no LoRA loader configured", name, version_id)
            return
        delay = self.unload_grace_s if grace_s is None else grace_s
        task = asyncio.get_running_loop().create_task(self._unload_later(version_id, name, delay))
        self._pending[name] = (version_id, task)

    async def _unload_later(self, version_id: str, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            entry = self._pending.get(name)
            if entry is None or entry[1] is not asyncio.current_task():
                return  # cancelled or superseded while waiting for the lock
            del self._pending[name]
            await self._unload_if_inactive(version_id, name)

    async def _unload_if_inactive(self, version_id: str, name: str) -> None:
        assert self.loader is not None
        try:
            if (await self._db(self.registry.get, version_id)).active:
                return  # promoted again in the meantime
            await self.loader.unload_lora_adapter(name)
            log.info("unloaded adapter %s of %s", name, version_id)
        except AdapterNotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - the registry change stands; the slot stays used
            log.warning("could not unload adapter %s of %s: %s", name, version_id, exc)


def _reason(reason: str | None, details: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Audit details: the operator's reason plus any numbers behind the change."""
    merged = {**(details or {}), **({"reason": reason} if reason else {})}
    return merged or None
