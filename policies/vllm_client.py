"""Async client for a vLLM OpenAI-compatible server: the gateway's hot path to the policy.

One pooled ``httpx.AsyncClient`` per gateway process; bodies pass through as plain dicts (the gateway
already validated them), and every transport or HTTP failure becomes one of :mod:`policies.errors`.
Closing a stream early closes the upstream response, which makes vLLM abort the request instead of
generating tokens nobody will read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import httpx

from policies.errors import (
    AdapterAlreadyLoaded,
    AdapterCapacityError,
    AdapterNotFound,
    PolicyError,
    PolicyHTTPError,
    PolicyTimeout,
    PolicyUnavailable,
)

__all__ = [
    "AdapterAlreadyLoaded",
    "AdapterCapacityError",
    "AdapterNotFound",
    "PolicyClient",
    "PolicyError",
    "PolicyHTTPError",
    "PolicyTimeout",
    "PolicyUnavailable",
]


@contextmanager
def _translated() -> Iterator[None]:
    """Turn httpx transport failures into policy errors (a connect timeout means 'down', not 'slow')."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise PolicyUnavailable(f"policy server unreachable: {exc!r}") from exc
    except httpx.TimeoutException as exc:
        raise PolicyTimeout(f"policy server timed out: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise PolicyUnavailable(f"policy server unreachable: {exc!r}") from exc


def _body_of(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _raise_for(resp: httpx.Response) -> NoReturn:
    """Map an error answer (already read) to the matching exception."""
    body = _body_of(resp)
    if resp.status_code == 503:
        raise PolicyUnavailable(f"policy server answered 503: {PolicyHTTPError(503, body).message}")
    raise PolicyHTTPError(resp.status_code, body)


class PolicyClient:
    """Talks to one vLLM server. Build once, share across requests, ``aclose`` at shutdown.

    ``max_adapters`` (usually ``VLLMServer.max_adapters``), when given, makes ``load_lora_adapter``
    refuse to fill the last LoRA slot: the CPU LoRA bug would then leak adapters into base requests.
    The budget counts every name loaded since the server started (vLLM's unload keeps the engine slot),
    as far as this client can see: the ones it loaded itself plus the ones the server lists now.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 120.0,
        max_connections: int = 100,
        *,
        max_adapters: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_adapters = max_adapters
        self._slots_spent = 0  # LoRA slots this client's loads took; unloading gives none back
        self._mine: set[str] = set()  # adapters this client loaded and has not unloaded
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- chat ---------------------------------------------------------------------------------
    async def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming chat completion; vLLM's JSON comes back unchanged."""
        with _translated():
            resp = await self._http.post("/v1/chat/completions", json={**body, "stream": False})
        if resp.status_code != 200:
            _raise_for(resp)
        result: dict[str, Any] = resp.json()
        return result

    async def stream_chat_completions(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield each SSE chunk as a dict until ``[DONE]``; ``aclose()`` closes the upstream response."""
        with _translated():
            async with self._http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    _raise_for(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk and "choices" not in chunk:  # a failure after the 200 went out
                        err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        raise PolicyHTTPError(int(err.get("code") or 500), chunk)
                    yield chunk

    # --- models and health --------------------------------------------------------------------
    async def models(self) -> list[dict[str, Any]]:
        """The base model and every loaded adapter (adapters carry ``parent`` = the base model)."""
        with _translated():
            resp = await self._http.get("/v1/models")
        if resp.status_code != 200:
            _raise_for(resp)
        data: list[dict[str, Any]] = resp.json().get("data", [])
        return data

    async def health(self) -> bool:
        """True when the server answers /health with 200; never raises."""
        try:
            resp = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    # --- runtime LoRA ---------------------------------------------------------------------------
    async def loaded_adapters(self) -> list[str]:
        """Names of the LoRA adapters the server holds now."""
        return [m["id"] for m in await self.models() if m.get("parent")]

    async def load_lora_adapter(self, name: str, path: str) -> None:
        """Load an adapter under a new ``name`` (one name per version); it then answers as ``model=name``."""
        await self._load(name, path, inplace=False)

    async def replace_lora_adapter(self, name: str, path: str) -> None:
        """Reload ``name`` in place from a new ``path``, reusing its LoRA slot instead of spending another.

        Prefix-cache blocks computed with the old weights are not invalidated upstream; serve with
        prefix caching off, or only replace adapters whose traffic has drained, when outputs must be exact.
        """
        await self._load(name, path, inplace=True)

    async def _load(self, name: str, path: str, *, inplace: bool) -> None:
        loaded = set(await self.loaded_adapters()) if self.max_adapters is not None else set()
        cost = 0 if name in loaded else 1  # a loaded name keeps its slot (in place) or is refused (400)
        if self.max_adapters is not None and cost:
            spent = self._slots_spent + len(loaded - self._mine)
            if spent + cost > self.max_adapters:
                raise AdapterCapacityError(
                    f"{spent} LoRA slots spent on this server (loaded now: {', '.join(sorted(loaded)) or 'none'});"
                    f" at most {self.max_adapters} may ever be, so that the last slot stays free (CPU LoRA bug;"
                    " unloading frees no slot): replace a loaded adapter in place, or restart vLLM"
                )
        payload: dict[str, Any] = {"lora_name": name, "lora_path": str(path)}
        if inplace:
            payload["load_inplace"] = True
        with _translated():
            resp = await self._http.post("/v1/load_lora_adapter", json=payload)
        if resp.status_code == 200:
            self._slots_spent += cost
            self._mine.add(name)
            return
        body = _body_of(resp)
        if resp.status_code == 404:
            raise AdapterNotFound(404, body)
        if resp.status_code == 400 and "already been loaded" in str(body):
            raise AdapterAlreadyLoaded(400, body)
        _raise_for(resp)

    async def unload_lora_adapter(self, name: str) -> None:
        """Unload an adapter; requests naming it get 404 afterwards."""
        with _translated():
            resp = await self._http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if resp.status_code == 200:
            self._mine.discard(name)
            return
        if resp.status_code == 404:
            raise AdapterNotFound(404, _body_of(resp))
        _raise_for(resp)
