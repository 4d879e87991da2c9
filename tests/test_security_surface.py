"""The gateway's attack surface (docs/security.md): CORS closed by default and never open for /admin,
request body and header limits with OpenAI-shaped errors, the connection cap and keep-alive timeout,
constant-time key checks without early exit, and no key or secret in the gateway's log.

Most tests build the real app (``create_app``) in process and never reach a chat service: the limits
and CORS answer before any route runs. The log and connection tests run a real ``flywheel serve`` process against the
zero-latency stub backend (no vLLM) and the session's broker, at DEBUG, with freshly generated keys.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import gateway.auth
from flywheel.bench.services import Backend, start_stub
from flywheel.settings import Settings
from gateway.app import create_app
from gateway.auth import KeyRing
from gateway.backends import BackendPool
from gateway.telemetry import Telemetry
from policies.vllm_client import PolicyClient
from tests.fixtures.broker import wait_until
from tests.fixtures.gateway import GatewayHandle, start_gateway

ORIGIN = "https://widget.example"
CHAT_KEY = "fw-chat-in-process-key"
ADMIN_KEY = "fw-admin-in-process-key"


def build_app(**overrides: Any) -> FastAPI:
    """The real app factory with services that the tested paths never reach."""
    settings = Settings(api_keys=[CHAT_KEY], admin_keys=[ADMIN_KEY], **overrides)
    client = PolicyClient("http://127.0.0.1:9")
    return create_app(
        settings,
        chat=cast(Any, None),
        admin=cast(Any, None),
        backends=BackendPool(client, PolicyClient),
        telemetry=Telemetry.create("test-security", None),
        registry_ok=lambda: True,
    )


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def preflight(client: TestClient, path: str, origin: str = ORIGIN) -> httpx.Response:
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    })  # fmt: skip


# --- CORS -----------------------------------------------------------------------------------------
def test_cors_is_closed_by_default() -> None:
    assert Settings(_env_file=None).cors_allow_origins == []
    client = TestClient(build_app())
    resp = preflight(client, "/v1/chat/completions")
    assert "access-control-allow-origin" not in resp.headers
    assert_openai_error(resp, 405)
    simple = client.get("/healthz", headers={"Origin": ORIGIN})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_opens_the_public_api_to_configured_origins_only() -> None:
    client = TestClient(build_app(cors_allow_origins=[ORIGIN]))
    allowed = preflight(client, "/v1/chat/completions")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    # The official openai JS SDK adds headers of its own; its preflight must pass too.
    sdk = client.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-lang,x-stainless-retry-count",
    })  # fmt: skip
    assert sdk.status_code == 200 and "x-stainless-lang" in sdk.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers  # keys are headers, never cookies
    assert "access-control-allow-origin" not in preflight(client, "/v1/feedback", "https://evil.example").headers
    # A real cross-origin call from the allowed origin carries the header (here: an auth error, readable by the widget).
    refused = client.get("/v1/models", headers={"Origin": ORIGIN})
    assert_openai_error(refused, 401)
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "x-trace-id" in refused.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("path", ["/admin/policies", "/admin/canary", "/dashboard", "/healthz"])
def test_cors_never_opens_the_operator_api_or_pages(path: str) -> None:
    client = TestClient(build_app(cors_allow_origins=[ORIGIN, "*"]))
    assert "access-control-allow-origin" not in preflight(client, path).headers
    resp = client.get(path, headers={"Origin": ORIGIN})
    assert resp.status_code in (200, 401, 404) and "access-control-allow-origin" not in resp.headers


def test_cors_origins_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_CORS_ALLOW_ORIGINS", f"{ORIGIN}, https://other.example")
    assert Settings(_env_file=None).cors_allow_origins == [ORIGIN, "https://other.example"]


# --- size limits ----------------------------------------------------------------------------------
def test_chat_body_over_the_limit_is_an_openai_413() -> None:
    client = TestClient(build_app(max_body_bytes=2_000))
    big = b'{"model": "seed", "messages": [{"role": "user", "content": "' + b"x" * 5_000 + b'"}]}'
    declared = client.post("/v1/chat/completions", content=big, headers={
        "Authorization": f"Bearer {CHAT_KEY}", "Content-Type": "application/json"})  # fmt: skip
    assert_openai_error(declared, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the streamed bytes
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    streamed = client.post("/v1/chat/completions", content=chunks(), headers={
        "Authorization": f"Bearer {CHAT_KEY}", "Content-Type": "application/json"})  # fmt: skip
    assert_openai_error(streamed, 413, "payload_too_large")


def test_a_streamed_body_over_the_limit_is_a_413_on_the_operator_api_too() -> None:
    """FastAPI reads these routes' bodies itself and turned any error in doing so into a 400 "error parsing
    the body"; the limit's own error passes through it as the same OpenAI-shaped 413."""
    client = TestClient(build_app(max_body_bytes=2_000))
    big = b'{"kind": "lora", "path": "' + b"x" * 5_000 + b'"}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    streamed = client.post("/admin/policies", content=chunks(), headers={
        "Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})  # fmt: skip
    assert_openai_error(streamed, 413, "payload_too_large")


def test_oversized_headers_are_an_openai_431() -> None:
    client = TestClient(build_app(max_header_bytes=4_096))
    assert client.get("/healthz", headers={"X-Pad": "a" * 2_000}).status_code == 200
    error = assert_openai_error(client.get("/healthz", headers={"X-Pad": "a" * 5_000}), 431, "headers_too_large")
    assert "4096" in error["message"]


# --- keys -----------------------------------------------------------------------------------------
def test_key_check_compares_every_key_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first admin key, the last chat key and a miss cost the same comparisons."""
    ring = KeyRing([f"chat-{i}" for i in range(5)], [f"admin-{i}" for i in range(3)])
    calls: list[tuple[bytes, bytes]] = []
    real = gateway.auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(gateway.auth.hmac, "compare_digest", counting)
    for key, scope in (("admin-0", "admin"), ("chat-4", "chat"), ("nope", None), ("x" * 500, None)):
        calls.clear()
        assert ring.scope_of(key) == scope
        assert len(calls) == 8, f"{key}: {len(calls)} comparisons"
        assert all(len(a) == len(b) == 32 for a, b in calls), "digests of equal length, whatever the key length"


# --- no key in the log (a real gateway process) ----------------------------------------------------
@pytest.fixture(scope="module")
def stub_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with contextlib.ExitStack() as stack:
        yield start_stub(stack, tmp_path_factory.mktemp("stub"))


def stub_gateway_env(**env: str) -> dict[str, str]:
    """A gateway on the stub backend with no encoder in its process (no grounding, no learned safety
    head, no best-of-n: these tests are about what the gateway does at its edges) and private topics."""
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    return {
        "FLYWHEEL_GROUNDING_ENABLED": "false", "FLYWHEEL_MAX_BEST_OF_N": "1",
        "FLYWHEEL_SAFETY_INPUT_FILTERS": "pii,injection,blocklist",
        "FLYWHEEL_TOPIC_INTERACTIONS": f"{topic}.interactions", "FLYWHEEL_TOPIC_FEEDBACK": f"{topic}.feedback",
        "FLYWHEEL_TOPIC_DEADLETTER": f"{topic}.deadletter", **env,
    }  # fmt: skip


def test_no_key_or_secret_reaches_the_gateway_log(
    tmp_path: Path, stub_backend: Backend, broker: Any  # noqa: ANN401 - the session's EmbeddedBroker
) -> None:
    keys = {name: f"fw-{name}-{secrets.token_urlsafe(24)}" for name in ("chat", "admin", "wrong")}
    feedback_secret = secrets.token_urlsafe(32)
    handle: GatewayHandle = start_gateway(
        tmp_path / "gw", stub_backend.url, stub_backend.model_dir, stub_backend.model, broker.bootstrap,
        extra_env=stub_gateway_env(
            FLYWHEEL_API_KEYS=keys["chat"], FLYWHEEL_ADMIN_KEYS=keys["admin"],
            FLYWHEEL_FEEDBACK_SECRET=feedback_secret, FLYWHEEL_LOG_LEVEL="DEBUG",
        ),
    )  # fmt: skip
    tokens: list[str] = []
    try:
        with httpx.Client(base_url=handle.url, timeout=30) as http:
            model = stub_backend.model

            def bearer(key: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {key}"}

            for key in (keys["chat"], keys["admin"]):
                said = [{"role": "user", "content": f"my key is {key}, is that ok?"}]
                body = {"model": model, "messages": said, "user": "sec-user"}
                resp = http.post("/v1/chat/completions", json=body, headers=bearer(key))
                assert resp.status_code == 200, resp.text
                tokens.append(resp.json()["flywheel"]["feedback_token"])
                response_id = resp.json()["flywheel"]["response_id"]
            chat = "/v1/chat/completions"
            wrong = http.post(chat, json={"model": model, "messages": []}, headers=bearer(keys["wrong"]))
            assert wrong.status_code == 401
            assert http.post(chat, json={"model": model}, headers=bearer(keys["chat"])).status_code == 422
            assert http.get("/v1/models", headers={"Authorization": f"Basic {keys['chat']}"}).status_code == 401
            assert http.get("/admin/policies", headers=bearer(keys["admin"])).status_code == 200
            assert http.get("/admin/policies", headers=bearer(keys["chat"])).status_code == 403
            assert http.get("/admin/audit", headers=bearer(keys["wrong"])).status_code == 401
            rating = {"response_id": response_id, "feedback_token": tokens[-1], "rating": "up"}
            assert http.post("/v1/feedback", json=rating, headers=bearer(keys["chat"])).status_code == 202
            forged = {**rating, "feedback_token": tokens[0]}  # a token for another response
            assert http.post("/v1/feedback", json=forged, headers=bearer(keys["chat"])).status_code == 403
    finally:
        handle.process.stop()
    log = (handle.var_dir / "gateway.log").read_text()
    assert '"chat request"' in log, "DEBUG request lines must be in the log, or this test proves nothing"
    for name, key in keys.items():
        assert key not in log, f"the {name} key is in the gateway log"
        assert key[-16:] not in log, f"part of the {name} key is in the gateway log"
    assert feedback_secret not in log
    for token in tokens:
        assert token.rsplit(".", 1)[-1] not in log, "a feedback token's MAC is in the gateway log"


# --- connection limits (a real gateway process) -----------------------------------------------------
def test_connections_past_the_cap_get_a_503_and_idle_keep_alive_connections_are_closed(
    tmp_path: Path, stub_backend: Backend, broker: Any  # noqa: ANN401 - the session's EmbeddedBroker
) -> None:
    """FLYWHEEL_MAX_CONNECTIONS: with that many connections open, the next request gets uvicorn's 503
    (before any app code, so plain text) and the gateway serves again once they close;
    FLYWHEEL_KEEP_ALIVE_S: an idle keep-alive connection is closed by the gateway;
    FLYWHEEL_REQUEST_READ_TIMEOUT_S: a connection that sends nothing gets a 408 and is closed (the
    deadline itself is tested in test_http_protocol; this shows `flywheel serve` uses it)."""
    env = stub_gateway_env(FLYWHEEL_MAX_CONNECTIONS="3", FLYWHEEL_KEEP_ALIVE_S="1", FLYWHEEL_REQUEST_READ_TIMEOUT_S="2")
    handle = start_gateway(tmp_path / "gw", stub_backend.url, stub_backend.model_dir, stub_backend.model,
                           broker.bootstrap, extra_env=env)  # fmt: skip
    address = (urlsplit(handle.url).hostname or "", urlsplit(handle.url).port or 0)
    try:
        held = [socket.create_connection(address, timeout=5) for _ in range(3)]
        # The gateway's loop accepts them asynchronously; until it has, a 4th connection is still served.
        # (It must within the 2 s read timeout, which then closes the silent held ones.)
        wait_until(lambda: httpx.get(f"{handle.url}/healthz", timeout=10).status_code == 503, 30,
                   "a 4th connection to get a 503 while 3 are held open")  # fmt: skip
        for sock in held:
            sock.close()
        wait_until(lambda: httpx.get(f"{handle.url}/healthz", timeout=10).status_code == 200, 10, "the gateway to serve again")
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first[:80]
            began = time.monotonic()
            while sock.recv(65536):  # b"" once the gateway closes the idle connection
                pass
            assert time.monotonic() - began < 5
        with socket.create_connection(address, timeout=10) as sock:
            began, said = time.monotonic(), b""
            while chunk := sock.recv(65536):
                said += chunk
            assert said.startswith(b"HTTP/1.1 408 "), said[:80]
            assert 1.5 < time.monotonic() - began < 6
    finally:
        handle.process.stop()
