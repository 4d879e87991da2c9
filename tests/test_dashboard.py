"""The operator dashboard at `/dashboard` in real headless Chromium (Playwright), against a real gateway,
vLLM, broker and `flywheel consume`: it asks for the operator key and refuses a chat key; it shows
versions, weights, charts from real rated traffic, the live canary analysis and the audit log; its
pause, roll back and promote buttons change the registry (checked through the operator API).

The canaries are `kind: full` versions served by the session's vLLM (same endpoint and model), so no
LoRA adapter is loaded: the vLLM fixture's adapter budget stays untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from gateway.auth import fingerprint
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle, private_topics
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

KEY_STORAGE = "flywheel.operatorKey"
PROMPT = [{"role": "user", "content": "How do I restore a file?"}]
# Thumbs per version: the stable is even, v1 is worse, v2 better.
RATINGS = {"seed": ["up", "down", "up", "down"], "v1": ["down", "down", "down", "up"], "v2": ["up", "up", "up", "down"]}
SLOW = 20_000  # ms: the page refreshes every 5 s; data may take one refresh to show


@dataclass
class Dash:
    gw: GatewayHandle
    admin: httpx.Client
    console_errors: list[str] = field(default_factory=list)

    def versions(self) -> dict[str, dict]:
        return {v["id"]: v for v in self.admin.get("/admin/policies").json()["data"]}

    def audit(self) -> list[dict]:
        return self.admin.get("/admin/audit").json()["data"]


def chat_and_rate(gw: GatewayHandle, version: str, ratings: list[str]) -> list[str]:
    """One real chat answer of ``version`` per rating, each rated through /v1/feedback. A canary is
    pinned by its id; the stable answers ``flywheel`` while every canary is at weight 0 (its own
    served name, which the full canaries share, means "routed" to the gateway)."""
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    model = "flywheel" if version == "seed" else version
    response_ids = []
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.api_key}"}, timeout=60) as http:
        for rating in ratings:
            resp = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)
            fw = resp.model_extra["flywheel"]
            assert fw["policy_version"] == version
            body = {"response_id": fw["response_id"], "feedback_token": fw["feedback_token"], "rating": rating}
            sent = http.post("/v1/feedback", json=body)
            assert sent.status_code == 202, sent.text
            response_ids.append(fw["response_id"])
    return response_ids


@pytest.fixture
def dash(
    gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle],
    vllm_server, seed_model_dir: Path,  # type: ignore[no-untyped-def]
) -> Iterator[Dash]:
    """A gateway of its own with two full canaries (v1 at 30 %, v2 at 20 %) and rated traffic on all three."""
    gw = gateway_factory("dash", FLYWHEEL_FEEDBACK_RATE_PER_S="1000", FLYWHEEL_FEEDBACK_RATE_BURST="1000",
                         **private_topics())  # fmt: skip
    consumer = consumer_for(gw)
    with gw.admin() as admin:
        for vid in ("v1", "v2"):
            created = admin.post("/admin/policies", json={
                "kind": "full", "path": str(seed_model_dir), "parent": "seed", "endpoint": vllm_server.url,
                "served_model_name": vllm_server.config.served_model_name, "notes": "dashboard test"})  # fmt: skip
            assert created.status_code == 201 and created.json()["id"] == vid, created.text
        response_ids = [rid for vid, ratings in RATINGS.items() for rid in chat_and_rate(gw, vid, ratings)]
        for vid, weight in (("v1", 0.3), ("v2", 0.2)):
            assert admin.post(f"/admin/policies/{vid}/weight", json={"weight": weight}).status_code == 200

        def stored() -> bool:
            rows = [consumer.store.get_interaction(rid) for rid in response_ids]
            return all(r and r["interaction"] and r["feedback"] for r in rows)

        wait_until(stored, 90, "every answer and rating in the store")
        yield Dash(gw, admin)


def open_dashboard(page: Page, dash: Dash) -> None:
    def on_console(msg: ConsoleMessage) -> None:
        where = msg.location.get("url", "")
        if msg.type == "error" and not where.endswith("/favicon.ico"):  # the browser asks; there is none
            dash.console_errors.append(f"{msg.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda err: dash.console_errors.append(str(err)))
    response = page.goto(f"{dash.gw.url}/dashboard")
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    page.fill("#key-input", dash.gw.admin_key)
    page.click("#key-save")
    expect(page.locator("#dashboard")).to_be_visible(timeout=SLOW)


def confirm(page: Page, card_version: str, action: str, reason: str | None = None) -> None:
    page.locator(f'article.canary[data-version="{card_version}"] button[data-action="{action}"]').click()
    expect(page.locator("#confirm")).to_be_visible()
    if reason:
        page.fill("#confirm-reason", reason)
    page.click("#confirm-ok")
    expect(page.locator("#confirm")).to_be_hidden()


def test_dashboard_is_served_with_a_strict_policy(gateway: GatewayHandle) -> None:
    resp = httpx.get(f"{gateway.url}/dashboard", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/web/dashboard.js"' in resp.text and "<script>" not in resp.text and "style=" not in resp.text
    for name, media in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = httpx.get(f"{gateway.url}/web/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
        assert asset.headers["content-security-policy"] == csp
    script = httpx.get(f"{gateway.url}/web/dashboard.js", timeout=10).text
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    # The page is public; its data is not.
    assert httpx.get(f"{gateway.url}/admin/metrics", timeout=10).status_code == 401


def test_refused_keys_are_shown_and_asked_again(page: Page, gateway: GatewayHandle) -> None:
    page.goto(f"{gateway.url}/dashboard")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key-input", gateway.api_key)  # a chat key: 403 from the operator API
    page.click("#key-save")
    expect(page.locator("#status")).to_contain_text("refused", timeout=SLOW)
    expect(page.locator("#status")).to_contain_text("403")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None

    page.fill("#key-input", "not-a-key")
    page.click("#key-save")
    expect(page.locator("#status")).to_contain_text("401", timeout=SLOW)
    expect(page.locator("#key-form")).to_be_visible()

    page.fill("#key-input", gateway.admin_key)
    page.click("#key-save")
    expect(page.locator("#dashboard")).to_be_visible(timeout=SLOW)
    expect(page.locator("#status")).not_to_contain_text("refused")
    page.reload()  # kept for the tab: no second prompt
    expect(page.locator("#dashboard")).to_be_visible(timeout=SLOW)
    expect(page.locator("#key-form")).to_be_hidden()
    page.click("#forget-key")
    expect(page.locator("#key-form")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None


def test_dashboard_shows_and_drives_the_canaries(page: Page, dash: Dash) -> None:
    actor = f"op:{fingerprint(dash.gw.admin_key)}"
    metrics = {m["version_id"]: m for m in dash.admin.get("/admin/metrics").json()["data"]}
    assert {vid: (metrics[vid]["ups"], metrics[vid]["downs"]) for vid in RATINGS} == {
        "seed": (2, 2), "v1": (1, 3), "v2": (3, 1)}
    assert all(metrics[vid]["interactions"] == 4 and metrics[vid]["latency_p99_ms"] > 0 for vid in RATINGS)
    open_dashboard(page, dash)

    # Versions and weights.
    rows = page.locator("#versions tbody tr")
    expect(rows).to_have_count(3)
    for vid, status, weight in (("v1", "canary", "30 %"), ("v2", "canary", "20 %")):
        cells = page.locator(f'#versions tr[data-version="{vid}"] td')
        expect(cells.nth(2)).to_have_text(status)
        expect(cells.nth(3)).to_have_text(weight)
        expect(cells.nth(4)).to_have_text("seed")
    expect(page.locator('#versions tr[data-version="seed"] td').nth(2)).to_have_text("stable")

    # Charts: one bar per version in each, values from the rated traffic; a line per version over time.
    for chart in ("thumbs", "reward", "blocks", "latency"):
        bars = page.locator(f"#chart-{chart} svg rect.bar")
        expect(bars).to_have_count(3)
        assert sorted(b.get_attribute("data-version") for b in bars.all()) == ["seed", "v1", "v2"]
    thumbs = {b.get_attribute("data-version"): b for b in page.locator("#chart-thumbs rect.bar").all()}
    assert [float(thumbs[v].get_attribute("data-value")) for v in ("seed", "v1", "v2")] == [0.5, 0.25, 0.75]
    widths = [float(thumbs[v].get_attribute("width")) for v in ("v1", "seed", "v2")]
    assert 0 < widths[0] < widths[1] < widths[2]
    expect(page.locator('#chart-thumbs g.row[data-version="v2"] text.value')).to_have_text("75 % (3 up, 1 down)")
    latency = page.locator('#chart-latency rect.bar[data-version="v1"]')
    assert float(latency.get_attribute("data-value")) == pytest.approx(metrics["v1"]["latency_p99_ms"])
    expect(page.locator("#chart-series svg g.line")).to_have_count(3)
    expect(page.locator('#chart-series g.line[data-version="v2"] circle.point')).not_to_have_count(0)

    # The live canary analysis.
    cards = page.locator("article.canary")
    expect(cards).to_have_count(2)
    v1 = page.locator('article.canary[data-version="v1"]')
    expect(v1.locator("h3")).to_have_text("v1 vs stable seed")
    expect(v1.locator(".decision")).to_have_text("hold")
    expect(v1.locator(".why")).to_contain_text("not started")
    expect(v1.locator(".step")).to_contain_text("weight 30 %")
    thumbs_row = v1.locator('tr[data-metric="thumbs_up_rate"] td')
    expect(thumbs_row.nth(1)).to_have_text("25 %")
    expect(thumbs_row.nth(2)).to_have_text("50 %")
    expect(thumbs_row.nth(3)).to_have_text("4 / 4")
    expect(v1.locator(".flag.paused")).to_have_count(0)

    # The audit log, newest first.
    audit_rows = page.locator("#audit tbody tr")
    expect(audit_rows.first).to_have_attribute("data-action", "set_weight")
    expect(audit_rows.first).to_have_attribute("data-version", "v2")
    expect(page.locator('#audit tr[data-action="register"]')).to_have_count(2)
    expect(audit_rows.first.locator("td").nth(1)).to_have_text(actor)
    expect(audit_rows.first.locator("td").nth(4)).to_have_text("canary 0 % → canary 20 %")

    # Auto-refresh: a change made elsewhere shows up without touching the page.
    assert dash.admin.post("/admin/policies/v2/weight", json={"weight": 0.25}).status_code == 200
    expect(page.locator('#versions tr[data-version="v2"] td').nth(3)).to_have_text("25 %", timeout=SLOW)

    # Pause v1: the analysis shows it paused, the audit log has the operator's reason.
    confirm(page, "v1", "pause", "dashboard test: hold v1")
    expect(v1.locator(".flag.paused")).to_have_text("paused", timeout=SLOW)
    expect(v1.locator('button[data-action="resume"]')).to_be_visible()
    [report] = [r for r in dash.admin.get("/admin/canary").json()["data"] if r["version_id"] == "v1"]
    assert report["paused"] is True
    pause = dash.audit()[0]
    assert (pause["action"], pause["version_id"], pause["actor"]) == ("canary_pause", "v1", actor)
    assert pause["details"]["reason"] == "dashboard test: hold v1"
    expect(audit_rows.first).to_have_attribute("data-action", "canary_pause", timeout=SLOW)
    expect(audit_rows.first.locator("td").nth(5)).to_have_text("dashboard test: hold v1")

    # Roll back v1, cancelling twice first (button, Escape): weight 0, status rolled_back.
    for cancel in (lambda: page.click("#confirm-cancel"), lambda: page.keyboard.press("Escape")):
        page.locator('article.canary[data-version="v1"] button[data-action="rollback"]').click()
        expect(page.locator("#confirm")).to_be_visible()
        cancel()
        expect(page.locator("#confirm")).to_be_hidden()
    assert dash.versions()["v1"]["status"] == "canary"
    confirm(page, "v1", "rollback")
    expect(v1).to_have_count(0, timeout=SLOW)
    listed = dash.versions()
    assert (listed["v1"]["status"], listed["v1"]["weight"]) == ("rolled_back", 0.0)
    expect(page.locator('#versions tr[data-version="v1"] td').nth(2)).to_have_text("rolled_back")
    expect(page.locator('#versions tr[data-version="v1"] td').nth(3)).to_have_text("0 %")
    expect(audit_rows.first).to_have_attribute("data-action", "rollback", timeout=SLOW)

    # Promote v2: it becomes the stable, the old stable is retired, no canary is left.
    confirm(page, "v2", "promote", "dashboard test: v2 is better")
    expect(page.locator("#canaries")).to_have_text("No canary is running.", timeout=SLOW)
    listed = dash.versions()
    assert (listed["v2"]["status"], listed["seed"]["status"]) == ("stable", "retired")
    expect(page.locator('#versions tr[data-version="v2"] td').nth(2)).to_have_text("stable")
    expect(page.locator('#versions tr[data-version="seed"] td').nth(2)).to_have_text("retired")
    promote = dash.audit()[0]
    assert (promote["action"], promote["version_id"], promote["details"]["reason"]) == (
        "promote", "v2", "dashboard test: v2 is better")
    expect(page.locator("#status")).to_contain_text("v2 promoted")

    # The page broke none of its own policy (no CSP violation, no script error).
    assert dash.console_errors == []
