"""The canary controller's error-rate counters over a changing set of gateway processes.

Real HTTP servers stand for gateway pods, each serving a Prometheus page whose counters the test sets.
Pods come, restart and go, as under a HorizontalPodAutoscaler; the combined counter must never go
backwards (the controller reads a drop as a reset), must count what every pod served, and must find
the pods behind a ``dns+`` name by resolving it on every read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.canary.metrics import GatewayCounters
from deploy.canary.targets import expand


class FakePod:
    """An HTTP server with a ``/metrics`` page of Flywheel's request and error counters."""

    def __init__(self) -> None:
        self.requests: dict[str, float] = {}
        self.errors: dict[str, float] = {}
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                lines = [f'flywheel_requests_total{{policy_version="{v}",status="200"}} {n}'
                         for v, n in pod.requests.items()]
                lines += [f'flywheel_errors_total{{policy_version="{v}",kind="upstream"}} {n}'
                          for v, n in pod.errors.items()]
                body = ("\n".join(["# TYPE flywheel_requests_total counter", "# TYPE flywheel_errors_total counter",
                                   *lines]) + "\n").encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pods() -> Iterator[list[FakePod]]:
    started = [FakePod() for _ in range(3)]
    yield started
    for pod in started:
        try:
            pod.stop()
        except OSError:
            pass


def test_counters_stay_cumulative_while_pods_come_restart_and_go(pods: list[FakePod]) -> None:
    a, b, c = pods
    a.requests, a.errors = {"v2": 10}, {"v2": 1}
    b.requests = {"v2": 5, "seed": 50}
    counters = GatewayCounters([a.url, b.url])
    assert counters.read() == {"v2": [15, 1], "seed": [50, 0]}

    a.requests, a.errors = {"v2": 14}, {"v2": 3}  # a served 4 more, 2 of them errors
    b.stop()  # b scaled away after serving 2 more that no read saw: those are lost, the rest stays
    assert counters.read() == {"v2": [19, 3], "seed": [50, 0]}

    c.requests = {"v2": 7}  # a new pod: everything it counted since it started
    counters.urls = [a.url, b.url, c.url]
    assert counters.read() == {"v2": [26, 3], "seed": [50, 0]}

    a.requests, a.errors = {"v2": 2}, {}  # a restarted: its counters begin again from zero
    assert counters.read() == {"v2": [28, 3], "seed": [50, 0]}


def test_no_readable_gateway_is_none_and_none_configured_is_none(pods: list[FakePod]) -> None:
    assert GatewayCounters([]).read() is None
    dead = pods[0]
    dead.stop()
    assert GatewayCounters([dead.url]).read() is None


def test_a_dns_name_stands_for_every_address_it_resolves_to(pods: list[FakePod]) -> None:
    pod = pods[0]
    pod.requests = {"v3": 4}
    targets = expand([f"dns+http://localhost:{pod.port}/metrics", "http://gateway-a:8000/metrics"])
    assert f"http://127.0.0.1:{pod.port}/metrics" in targets
    assert targets[-1] == "http://gateway-a:8000/metrics", "plain URLs are used as written"
    assert expand(["dns+http://no-such-gateway.invalid:8000/metrics"]) == []
    counters = GatewayCounters([f"dns+http://localhost:{pod.port}/metrics"])
    assert counters.read() == {"v3": [4, 0]}, "each address is read once, whatever else localhost resolves to"
