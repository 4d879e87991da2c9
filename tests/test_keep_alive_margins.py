"""Idle-connection timeouts: every server we run must keep an idle connection longer than its clients do.

A client that sends a request on a kept-alive connection at the moment the server closes it for idleness
gets "server disconnected without sending a response", and no client library retries a POST for it.
The race is gone when the client always drops an idle connection first: these checks fail if a default
is changed so that it no longer does (the 408 read deadline's side is tested in test_http_protocol).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flywheel.settings import Settings
from policies.vllm_client import IDLE_CONNECTION_S
from policies.vllm_server import VLLMServerConfig

HTTPX_IDLE_S = httpx.Limits().keepalive_expiry  # what the openai SDK's transport keeps an idle connection


def test_the_gateway_outlasts_httpx_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_KEEP_ALIVE_S", raising=False)
    assert HTTPX_IDLE_S is not None
    assert Settings().keep_alive_s >= HTTPX_IDLE_S + 5


def test_our_vllm_outlasts_httpx_clients_and_the_gateway(tmp_path: Path) -> None:
    env = VLLMServerConfig(model_dir=tmp_path, var_dir=tmp_path / "var").env(base={})
    vllm_idle_s = float(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"])
    assert HTTPX_IDLE_S is not None and vllm_idle_s >= HTTPX_IDLE_S + 5


def test_the_gateway_drops_idle_vllm_connections_before_a_default_vllm_does() -> None:
    vllm_default_idle_s = 5.0  # VLLM_HTTP_TIMEOUT_KEEP_ALIVE's default, for a vLLM an operator runs
    assert IDLE_CONNECTION_S <= vllm_default_idle_s / 2
