"""The chat page at `/` in real headless Chromium (Playwright): ask, get an answer, thumbs down, and the
rating lands in the store through the real gateway, broker and `flywheel consume`."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

def _enter_key(page: Page, key: str) -> None:
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-save")
    expect(page.locator("#chat")).to_be_visible()


def test_page_is_served_with_a_strict_policy(gateway: GatewayHandle) -> None:
    page = httpx.get(f"{gateway.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{gateway.url}/web/chat.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{gateway.url}/web/nope.js", timeout=10).status_code == 404


def test_ask_answer_thumbs_down_reaches_store(
    page: Page, gateway: GatewayHandle, consumer_for: Callable[..., ConsumerHandle]
) -> None:
    consumer = consumer_for(gateway)
    page.goto(f"{gateway.url}/")
    _enter_key(page, gateway.api_key)
    page.fill("#question", "How much does Kestrel Backup cost?")
    page.click("#send")
    answer = page.locator("li.turn.assistant").first
    expect(answer).to_be_visible(timeout=60_000)
    assert answer.get_attribute("data-policy-version") == "seed"
    answer.locator(".comment").fill("too vague, mail me at page.tester@example.org")
    answer.locator(".thumb.down").click()
    expect(answer.locator(".rate-status")).to_have_text("Thanks for the feedback.", timeout=30_000)
    expect(answer.locator(".thumb.down")).to_have_attribute("aria-pressed", "true")
    response_id = answer.get_attribute("data-response-id")
    event_id = answer.get_attribute("data-feedback-event-id")
    assert response_id and event_id

    def rated() -> bool:
        got = consumer.store.get_interaction(response_id)
        return bool(got and got["feedback"])

    wait_until(rated, 60, "the page's rating in the store")
    rows = consumer.store.get_interaction(response_id)["feedback"]  # type: ignore[index]
    assert [(r["event_id"], r["rating"], r["rating_raw"]) for r in rows] == [(event_id, -1.0, "down")]
    assert rows[0]["comment"] == "too vague, mail me at [EMAIL]"

    page.reload()  # the key was asked for once and kept
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#key-form")).to_be_hidden()


def test_refused_key_asks_again(page: Page, gateway: GatewayHandle) -> None:
    page.goto(f"{gateway.url}/")
    _enter_key(page, "wrong-key")
    page.fill("#question", "Hello?")
    page.click("#send")
    expect(page.locator("#key-form")).to_be_visible(timeout=30_000)
    expect(page.locator("#status")).to_contain_text("refused")
    assert page.evaluate("localStorage.getItem('flywheel.chatKey')") is None
