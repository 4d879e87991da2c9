"""Gateway error counters as the canary analysis reads them: pages that are not Prometheus text, and
counter resets decided per version (attempts and errors together)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.canary.metrics import GatewayCounters, since_baseline

PROMETHEUS = (
    "# TYPE flywheel_requests_total counter\n"
    'flywheel_requests_total{policy_version="v2",status="200"} 40\n'
    "# TYPE flywheel_errors_total counter\n"
    'flywheel_errors_total{policy_version="v2",kind="upstream"} 3\n'
)
PAGES = {
    "/metrics": ("text/plain; version=0.0.4", PROMETHEUS),
    "/": ("text/html", "<!DOCTYPE html>\n<html><body><h1>Flywheel</h1></body></html>\n"),  # URL without /metrics
    "/json": ("application/json", '{"detail": "Not Found"}'),
}


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            content_type, text = PAGES[self.path]
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_page_that_is_not_prometheus_text_is_unreadable_and_the_others_still_count(server: str) -> None:
    html, json_page, good = f"{server}/", f"{server}/json", f"{server}/metrics"
    counters = GatewayCounters([html, good, json_page])
    assert counters.read() == {"v2": [40.0, 3.0]}
    assert set(counters.unreadable) == {html, json_page} and "not Prometheus text" in counters.unreadable[html]
    only_html = GatewayCounters([html])
    assert only_html.read() is None and only_html.enabled, "configured but unreadable: the analysis holds"
    assert list(only_html.unreadable) == [html]


def test_a_reset_is_decided_per_version_for_attempts_and_errors_together() -> None:
    baseline = {"v2": [900.0, 10.0]}
    # the errors dropped below their baseline: the counting restarted, so the attempts did too
    assert since_baseline({"v2": [1000.0, 5.0]}, baseline, "v2") == (1000, 5)
    assert since_baseline({"v2": [100.0, 12.0]}, baseline, "v2") == (100, 12)  # attempts dropped
    assert since_baseline({"v2": [1000.0, 15.0]}, baseline, "v2") == (100, 5)  # no reset: the differences
    assert since_baseline({"v2": [5.0, 0.0]}, {}, "v2") == (5, 0)
    assert since_baseline(None, baseline, "v2") is None
