"""Async client for a vLLM OpenAI-compatible server: the gateway's hot path to the policy.

Two pooled clients per gateway process, on purpose:
- chat (the hot path, every request) goes through an ``aiohttp`` session with msgspec JSON. Profiling
  the gateway over a zero-latency backend showed httpx/httpcore taking 53 % of the event loop's time
  (its pool polls every idle socket per request), and the same gateway on aiohttp served 2x the
  requests at concurrency 1 and 4.5x at 32 (flywheel bench gateway; docs/benchmarks.md);
- the operator-rate calls (models, health, LoRA load/unload) stay on ``httpx``, whose API is nicer and
  whose cost there does not matter.

Bodies pass through as plain dicts (the gateway already validated them), and every transport or HTTP
failure becomes one of :mod:`policies.errors`. A chat call that does not finish (a stream closed early,
a cancelled or timed-out call) closes its upstream connection *and* asks vLLM to abort the request by
its id, so vLLM stops generating tokens nobody will read (see :meth:`PolicyClient._abort_upstream`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import httpx
import msgspec

from flywheel.ids import random_hex128
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


@contextmanager
def _translated_aio() -> Iterator[None]:
    """The same mapping for aiohttp's exceptions."""
    try:
        yield
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        raise PolicyUnavailable(f"policy server unreachable: {exc!r}") from exc
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise PolicyTimeout(f"policy server timed out: {exc!r}") from exc
    except aiohttp.ClientError as exc:
        raise PolicyUnavailable(f"policy server connection failed: {exc!r}") from exc


_encode = msgspec.json.encode
_decode = msgspec.json.decode
_JSON = {"Content-Type": "application/json"}
# vLLM names a chat request "chatcmpl-" + the caller's X-Request-Id; its abort endpoint takes that name.
_VLLM_CHAT_ID_PREFIX = "chatcmpl-"
_ABORT_PATH = "/inference/v1/abort_requests"
_ABORT_CONNECT_TRIES = 3
# Idle connections to vLLM are dropped after this, well before a server closes them (vLLM's default
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE is 5 s; aiohttp's own default keeps them 15 s): a POST sent on a
# connection just as the server closes it fails with "server disconnected", and neither client library
# retries a POST. Under load connections never idle this long, so nothing is reconnected for it.
IDLE_CONNECTION_S = 2.0
log = logging.getLogger(__name__)


def _new_request_id() -> str:
    return f"fw-{random_hex128()}"


def _never_sent(exc: PolicyUnavailable) -> bool:
    """True when the request never reached the server (no connection): there is nothing to abort."""
    return isinstance(exc.__cause__, aiohttp.ClientConnectorError)


@dataclass
class _UpstreamCall:
    """A chat call in flight: the id vLLM knows it by, and whether it ended upstream on its own."""

    request_id: str
    finished: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {**_JSON, "X-Request-Id": self.request_id}


def _aio_error(status: int, raw: bytes) -> NoReturn:
    try:
        body: Any = _decode(raw)
    except msgspec.DecodeError:
        body = raw.decode(errors="replace")
    if status == 503:
        raise PolicyUnavailable(f"policy server answered 503: {PolicyHTTPError(503, body).message}")
    raise PolicyHTTPError(status, body)


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


def _check_artifact(name: str, path: str) -> None:
    """A registry-named adapter (``flywheel-<id>-<sha256[:12]>``) must still hash to the prefix in its
    name before vLLM reads it: after a restart or to promote a retired version again, the path may hold
    rebuilt files that were never registered or gated (``policies.registry_errors.ArtifactChanged``)."""
    from policies.artifacts import adapter_sha256_prefix, verify_artifact

    prefix = adapter_sha256_prefix(name)
    if prefix is not None:
        verify_artifact(path, prefix, f"the adapter of {name}")


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
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._chat_url = f"{self.base_url}/v1/chat/completions"
        self._aio: aiohttp.ClientSession | None = None  # made on first use, inside the running loop
        self._aborts: set[asyncio.Task[None]] = set()  # abort calls in flight (a task needs a reference)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections,
                keepalive_expiry=IDLE_CONNECTION_S,
            ),  # fmt: skip
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._aio is None or self._aio.closed:
            connect = min(5.0, self.timeout_s)
            self._aio = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, ttl_dns_cache=None, keepalive_timeout=IDLE_CONNECTION_S
                ),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=self.timeout_s),
                json_serialize=lambda obj: _encode(obj).decode(),
            )
        return self._aio

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._aborts:  # let the last abort calls reach vLLM before the client they use closes
            await asyncio.wait(set(self._aborts), timeout=5.0)
        await self._http.aclose()
        if self._aio is not None:
            await self._aio.close()

    # --- chat ---------------------------------------------------------------------------------
    async def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming chat completion; vLLM's JSON comes back unchanged."""
        payload = _encode({**body, "stream": False})
        with self._upstream_call() as call:
            async with self._session().post(
                self._chat_url,
                data=payload,
                headers=call.headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                raw = await resp.read()
                call.finished = True
                if resp.status != 200:
                    _aio_error(resp.status, raw)
        result: dict[str, Any] = _decode(raw)
        return result

    async def stream_chat_completions(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield each SSE chunk as a dict until ``[DONE]``; ``aclose()`` closes the upstream connection
        and aborts the request in vLLM."""
        payload = _encode({**body, "stream": True})
        resp: aiohttp.ClientResponse | None = None
        with self._upstream_call() as call:
            try:
                resp = await self._session().post(self._chat_url, data=payload, headers=call.headers)
                if resp.status != 200:
                    call.finished = True  # vLLM refused it: nothing runs upstream
                    _aio_error(resp.status, await resp.read())
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        call.finished = True
                        return
                    chunk = _decode(data)
                    if "error" in chunk and "choices" not in chunk:  # a failure after the 200 went out
                        call.finished = True  # vLLM ended the request itself
                        err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        raise PolicyHTTPError(int(err.get("code") or 500), chunk)
                    yield chunk
                # EOF without [DONE]: the server died or the connection was cut mid-answer. Ending here
                # quietly would hand the client a truncated answer as if it were complete.
                raise PolicyUnavailable("policy server closed the stream before [DONE]")
            finally:
                if resp is not None and call.finished:
                    resp.release()  # back to the pool for the next request
                elif resp is not None:
                    resp.close()

    @contextmanager
    def _upstream_call(self) -> Iterator[_UpstreamCall]:
        """One chat call to vLLM: its own request id, aiohttp's failures translated, and an abort by
        that id unless the call marked itself finished (vLLM answered in full, refused or ended it)."""
        call = _UpstreamCall(_new_request_id())
        try:
            with _translated_aio():
                yield call
        except PolicyUnavailable as exc:
            call.finished = call.finished or _never_sent(exc)
            raise
        finally:
            if not call.finished:  # timed out, cancelled, closed early or cut off: vLLM may still run it
                self._abort_upstream(call.request_id)

    def _abort_upstream(self, request_id: str) -> None:
        """Ask vLLM to drop ``request_id``, without waiting (the caller is being closed or cancelled).

        Closing the connection alone normally does it: vLLM aborts a request whose client went away
        (25 of 25 early closes on an idle host stopped after 2 tokens). But in one CI run a 2k-token
        answer whose stream was closed after 3 chunks ran to its end: the disconnect was never seen.
        vLLM's own abort endpoint (served with ``--enable-scale-out``, which
        :class:`~policies.vllm_server.VLLMServer` passes) takes the request by the id we gave it.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # finalised outside a loop: the closed connection is all we can do
            return
        task = loop.create_task(self._post_abort(request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _post_abort(self, request_id: str) -> None:
        try:
            await self.abort(request_id)
        except PolicyError:
            pass  # the server is gone (nothing left to run) or refuses: the closed connection still applies

    async def abort(self, request_id: str) -> None:
        """Abort the chat request sent with ``X-Request-Id: request_id`` (a no-op once it has ended).

        A connect that times out is tried again, up to ``_ABORT_CONNECT_TRIES`` times: in one CI run
        the abort's connect to a vLLM busy generating timed out after 5 s (a dropped SYN is resent
        after 1 s and 3 s, so one short try covers little), and an abort that gives up leaves vLLM
        generating for nobody. Repeating it is safe: an id that has ended is a no-op.
        """
        payload = {"request_ids": [_VLLM_CHAT_ID_PREFIX + request_id]}
        for tries_left in range(_ABORT_CONNECT_TRIES - 1, -1, -1):
            with _translated():
                try:
                    resp = await self._http.post(_ABORT_PATH, json=payload, timeout=5.0)
                    break
                except httpx.ConnectTimeout:
                    if not tries_left:
                        raise
                    log.warning("abort of %s: connect to %s timed out; trying again", request_id, self.base_url)
        if resp.status_code != 200:
            _raise_for(resp)

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
        await asyncio.to_thread(_check_artifact, name, path)  # hashing reads the files: off the event loop
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
