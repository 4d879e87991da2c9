"""One pooled vLLM client per policy endpoint.

Base and LoRA versions share the main vLLM server; a full-checkpoint version runs on its own server,
whose URL the registry records. Clients are created on first use and kept (connection pooling is the
point), and all closed together at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.vllm_client import PolicyClient


class BackendPool:
    def __init__(self, default: PolicyClient, factory: Callable[[str], PolicyClient]) -> None:
        self.default = default
        self._factory = factory
        self._by_url: dict[str, PolicyClient] = {}

    def client_for(self, endpoint: str | None) -> PolicyClient:
        if not endpoint:
            return self.default
        client = self._by_url.get(endpoint)
        if client is None:
            client = self._by_url[endpoint] = self._factory(endpoint)
        return client

    async def aclose(self) -> None:
        await self.default.aclose()
        for client in self._by_url.values():
            await client.aclose()
        self._by_url.clear()
