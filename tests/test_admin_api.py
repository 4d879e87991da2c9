"""Operator API over real HTTP (uvicorn on a free port): key scopes, status codes, audit, and the CLI.

No vLLM here, so the service runs without a LoRA loader: 'full' versions exercise the whole
lifecycle, and a lora registration must fail cleanly. Loading into a real vLLM is covered by the
end-to-end suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from typer.testing import CliRunner

from flywheel.commands.policy import app as policy_cli
from flywheel.db import make_engine
from flywheel.procs import free_port
from flywheel.settings import Settings
from gateway.admin.router import build_admin_router
from gateway.admin.service import AdminService
from gateway.auth import KeyRing, Principal, fingerprint, require_admin_key, require_chat_key
from gateway.errors import install_error_handlers
from policies.registry import PolicyRegistry
from tests.fixtures.threaded_server import serve_in_thread

CHAT_KEY = "chat-key-123"
ADMIN_KEY = "admin-key-456"
ACTOR = f"op:{fingerprint(ADMIN_KEY)}"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"Authorization": f"Bearer {CHAT_KEY}"}
ROUTES = [
    ("GET", "/admin/policies"),
    ("POST", "/admin/policies"),
    ("POST", "/admin/policies/seed/weight"),
    ("POST", "/admin/policies/seed/promote"),
    ("POST", "/admin/policies/seed/rollback"),
    ("POST", "/admin/policies/seed/retire"),
    ("GET", "/admin/audit"),
]


@dataclass
class Gateway:
    url: str
    registry: PolicyRegistry
    tmp: Path

    def artifact(self, name: str) -> str:
        d = self.tmp / "artifacts" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(f'{{"name": "{name}"}}')
        return str(d)


@pytest.fixture
def gateway(tmp_path: Path, sqlite_url: str) -> Iterator[Gateway]:
    settings = Settings(api_keys=[CHAT_KEY], admin_keys=[ADMIN_KEY], var_dir=tmp_path / "var")
    engine = make_engine(sqlite_url)
    registry = PolicyRegistry(engine)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "config.json").write_text("{}")
    registry.ensure_seed(seed, "seed")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_admin_router(AdminService(registry, None, max_loaded_adapters=3), settings))
    try:
        with serve_in_thread(app) as port:
            yield Gateway(f"http://127.0.0.1:{port}", registry, tmp_path)
    finally:
        engine.dispose()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_needs_an_operator_key(client: httpx.Client, method: str, path: str) -> None:
    missing = client.request(method, path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert error_of(missing)["type"] == "authentication_error"
    assert client.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.request(method, path, headers={"Authorization": f"Basic {ADMIN_KEY}"}).status_code == 401
    forbidden = client.request(method, path, headers=CHAT)
    assert forbidden.status_code == 403 and error_of(forbidden)["type"] == "permission_error"


def test_operator_key_reads_policies_and_audit(client: httpx.Client) -> None:
    listed = client.get("/admin/policies", headers=ADMIN)
    assert listed.status_code == 200
    [seed] = listed.json()["data"]
    assert (seed["id"], seed["kind"], seed["status"], seed["weight"]) == ("seed", "base", "stable", 1.0)
    audit = client.get("/admin/audit", headers=ADMIN).json()["data"]
    assert [(a["action"], a["version_id"], a["actor"]) for a in audit] == [("seed", "seed", "system")]


def test_lifecycle_status_codes_and_audit(client: httpx.Client, gateway: Gateway) -> None:
    created = client.post(
        "/admin/policies",
        headers=ADMIN,
        json={"kind": "full", "path": gateway.artifact("a"), "parent": "seed", "notes": "dpo",
              "endpoint": "http://127.0.0.1:8200"},
    )
    assert created.status_code == 201, created.text
    v1 = created.json()
    assert (v1["id"], v1["status"], v1["weight"], v1["parent"]) == ("v1", "canary", 0.0, "seed")
    assert len(v1["artifact_sha256"]) == 64
    v2 = client.post("/admin/policies", headers=ADMIN,
                     json={"kind": "full", "path": gateway.artifact("b"), "endpoint": "http://127.0.0.1:8300"}).json()

    assert client.post("/admin/policies/v1/weight", headers=ADMIN, json={"weight": 0.3}).json()["weight"] == 0.3
    too_much = client.post(f"/admin/policies/{v2['id']}/weight", headers=ADMIN, json={"weight": 0.8})
    assert too_much.status_code == 400
    assert error_of(too_much)["code"] == "invalid_weight" and "at most 0.7" in error_of(too_much)["message"]
    assert client.post("/admin/policies/v1/weight", headers=ADMIN, json={"weight": -0.1}).status_code == 400
    assert client.post("/admin/policies/v1/weight", headers=ADMIN, json={"weight": "lots"}).status_code == 422
    assert client.post("/admin/policies/v9/weight", headers=ADMIN, json={"weight": 0.1}).status_code == 404
    assert client.post("/admin/policies/seed/weight", headers=ADMIN, json={"weight": 0.1}).status_code == 409
    retire_stable = client.post("/admin/policies/seed/retire", headers=ADMIN)
    assert retire_stable.status_code == 409 and error_of(retire_stable)["code"] == "invalid_transition"

    promoted = client.post("/admin/policies/v1/promote", headers=ADMIN, json={"reason": "wins on thumbs"})
    assert promoted.status_code == 200 and promoted.json()["status"] == "stable"
    assert client.post("/admin/policies/v1/promote", headers=ADMIN).status_code == 409
    assert client.post(f"/admin/policies/{v2['id']}/rollback", headers=ADMIN).json()["status"] == "rolled_back"
    assert client.post(f"/admin/policies/{v2['id']}/retire", headers=ADMIN).json()["status"] == "retired"
    assert client.post("/admin/policies/v404/promote", headers=ADMIN).status_code == 404

    statuses = {v["id"]: v["status"] for v in client.get("/admin/policies", headers=ADMIN).json()["data"]}
    assert statuses == {"seed": "retired", "v1": "stable", "v2": "retired"}
    audit = client.get("/admin/audit", headers=ADMIN, params={"limit": 4}).json()["data"]
    assert [(a["action"], a["version_id"]) for a in audit] == [
        ("retire", "v2"), ("rollback", "v2"), ("promote", "v1"), ("retire", "seed"),
    ]
    assert {a["actor"] for a in audit} == {ACTOR}
    assert audit[2]["details"] == {"previous_stable": "seed", "reason": "wins on thumbs"}
    assert audit[2]["from_state"] == {"status": "canary", "weight": 0.3}
    assert ADMIN_KEY not in str(client.get("/admin/audit", headers=ADMIN).json())
    assert client.get("/admin/audit", headers=ADMIN, params={"limit": 0}).status_code == 422


def test_expected_fields_refuse_a_change_the_version_has_outgrown(client: httpx.Client, gateway: Gateway) -> None:
    """``expected_*`` body fields: what the caller decided on. A version changed since answers 409
    precondition_failed and is left as it is; an unknown status is a 422."""
    body = {"kind": "full", "path": gateway.artifact("x"), "endpoint": "http://127.0.0.1:8200"}
    vid = client.post("/admin/policies", headers=ADMIN, json=body).json()["id"]
    expected = {"expected_status": "canary", "expected_weight": 0.0, "expected_paused": False}
    step = client.post(f"/admin/policies/{vid}/weight", headers=ADMIN, json={"weight": 0.2, **expected})
    assert step.status_code == 200 and step.json()["weight"] == 0.2, step.text
    stale = client.post(f"/admin/policies/{vid}/weight", headers=ADMIN, json={"weight": 0.5, "expected_weight": 0.0})
    assert stale.status_code == 409 and error_of(stale)["code"] == "precondition_failed"
    assert client.post(f"/admin/policies/{vid}/rollback", headers=ADMIN).status_code == 200  # an operator's abort
    late = client.post(f"/admin/policies/{vid}/promote", headers=ADMIN, json={"expected_status": "canary"})
    assert late.status_code == 409 and error_of(late)["code"] == "precondition_failed"
    assert "rolled_back" in error_of(late)["message"]
    bogus = client.post(f"/admin/policies/{vid}/promote", headers=ADMIN, json={"expected_status": "bogus"})
    assert bogus.status_code == 422
    assert gateway.registry.get(vid).status == "rolled_back" and gateway.registry.get("seed").status == "stable"


def test_bad_registrations_are_rejected_and_not_kept(client: httpx.Client, gateway: Gateway) -> None:
    cases = [
        ({"kind": "full", "path": str(gateway.tmp / "nope"), "endpoint": "http://x"}, 400),
        ({"kind": "full", "path": gateway.artifact("f")}, 400),  # full needs its own endpoint
        ({"kind": "base", "path": gateway.artifact("b")}, 422),
        ({"kind": "lora", "path": gateway.artifact("l"), "surprise": 1}, 422),
        ({"kind": "lora", "path": gateway.artifact("l"), "parent": "v77"}, 503),  # no loader: checked first
        ({"kind": "full", "path": gateway.artifact("p"), "endpoint": "http://x", "parent": "v77"}, 404),
    ]
    for body, status in cases:
        resp = client.post("/admin/policies", headers=ADMIN, json=body)
        assert resp.status_code == status, (body, resp.text)
        assert error_of(resp)["message"]
    lora = client.post("/admin/policies", headers=ADMIN, json={"kind": "lora", "path": gateway.artifact("l")})
    assert error_of(lora)["code"] == "lora_unavailable"
    assert [v["id"] for v in client.get("/admin/policies", headers=ADMIN).json()["data"]] == ["seed"]
    assert unauthenticated_body_is_not_validated(client)


def unauthenticated_body_is_not_validated(client: httpx.Client) -> bool:
    """A caller without a key learns nothing about the body schema: 401 before 422."""
    return client.post("/admin/policies", json={"nonsense": True}).status_code == 401


# --- key scopes outside the admin router -----------------------------------------------------------
def scoped_app(chat_keys: list[str], admin_keys: list[str]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.keyring = KeyRing(chat_keys, admin_keys)

    @app.get("/chat")
    async def chat(who: Principal = Depends(require_chat_key)) -> dict:
        return {"scope": who.scope, "actor": who.actor}

    @app.get("/op")
    async def op(who: Principal = Depends(require_admin_key)) -> dict:
        return {"scope": who.scope, "actor": who.actor}

    return app


async def test_chat_scope_and_open_dev_mode() -> None:
    secured = httpx.AsyncClient(transport=httpx.ASGITransport(scoped_app([CHAT_KEY], [ADMIN_KEY])), base_url="http://t")
    async with secured as c:
        assert (await c.get("/chat")).status_code == 401
        assert (await c.get("/chat", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await c.get("/chat", headers=CHAT)).json() == {"scope": "chat", "actor": f"key:{fingerprint(CHAT_KEY)}"}
        assert (await c.get("/chat", headers=ADMIN)).json()["scope"] == "admin"
        assert (await c.get("/op", headers=CHAT)).status_code == 403
        assert (await c.get("/op", headers=ADMIN)).json() == {"scope": "admin", "actor": ACTOR}
    open_chat = httpx.AsyncClient(transport=httpx.ASGITransport(scoped_app([], [ADMIN_KEY])), base_url="http://t")
    async with open_chat as c:
        assert (await c.get("/chat")).json() == {"scope": "anonymous", "actor": "anonymous"}
        assert (await c.get("/op")).status_code == 401  # dev mode never opens the operator API
        assert (await c.get("/op", headers={"Authorization": "Bearer guess"})).status_code == 401
    no_ops = httpx.AsyncClient(transport=httpx.ASGITransport(scoped_app([], [])), base_url="http://t")
    async with no_ops as c:
        resp = await c.get("/op", headers={"Authorization": "Bearer anything"})
        assert resp.status_code == 401 and "FLYWHEEL_ADMIN_KEYS" in resp.json()["error"]["message"]


# --- CLI against the running server ----------------------------------------------------------------
def test_cli_list_canary_promote_history(gateway: Gateway) -> None:
    runner = CliRunner()
    common = ["--url", gateway.url, "--key", ADMIN_KEY]
    out = runner.invoke(
        policy_cli, ["register", "--kind", "full", "--path", gateway.artifact("c"), "--endpoint", "http://h:1",
                     "--notes", "from cli", *common],
    )
    assert out.exit_code == 0, out.output
    assert "registered v1" in out.output

    out = runner.invoke(policy_cli, ["canary", "v1", "--weight", "0.25", *common])
    assert out.exit_code == 0, out.output
    assert "25.0%" in out.output
    assert gateway.registry.get("v1").weight == 0.25

    out = runner.invoke(policy_cli, ["list", "--url", gateway.url], env={"FLYWHEEL_ADMIN_KEY": ADMIN_KEY})
    assert out.exit_code == 0, out.output
    assert "seed" in out.output and "v1" in out.output and "75.0%" in out.output and "canary" in out.output

    out = runner.invoke(policy_cli, ["promote", "v1", "--reason", "better", *common])
    assert out.exit_code == 0, out.output
    assert gateway.registry.get("v1").status == "stable" and gateway.registry.get("seed").status == "retired"

    out = runner.invoke(policy_cli, ["history", "--limit", "3", *common])
    assert out.exit_code == 0, out.output
    assert "promote" in out.output and ACTOR in out.output and ADMIN_KEY not in out.output


def test_cli_errors_are_one_line_and_exit_1(gateway: Gateway) -> None:
    runner = CliRunner()
    out = runner.invoke(policy_cli, ["promote", "v42", "--url", gateway.url, "--key", ADMIN_KEY])
    assert out.exit_code == 1
    assert out.output.strip() == "error: no policy version 'v42'"
    out = runner.invoke(policy_cli, ["canary", "seed", "--weight", "0.5", "--url", gateway.url, "--key", CHAT_KEY])
    assert out.exit_code == 1 and out.output.strip() == "error: this key may not use the operator API"
    out = runner.invoke(policy_cli, ["list", "--url", f"http://127.0.0.1:{free_port()}", "--key", ADMIN_KEY])
    assert out.exit_code == 1 and out.output.startswith("error: cannot reach the gateway")
    assert len(out.output.strip().splitlines()) == 1
