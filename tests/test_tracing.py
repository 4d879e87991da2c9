"""OpenTelemetry export: with an OTLP endpoint set, each chat request's trace reaches the collector
as a root span with a child span per pipeline stage, under the trace id the client got in X-Trace-Id.

The collector is a real OTLP/HTTP endpoint (protobuf bodies decoded with opentelemetry-proto), served
on a real socket; the gateway is a real `flywheel serve` in front of the session's vLLM.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fixtures.broker import wait_until
from tests.fixtures.gateway import GatewayHandle
from tests.fixtures.threaded_server import serve_in_thread

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

STAGES = {"input_stages", "generate", "choose", "output_safety"}


class Collector:
    """Spans received, as (trace id hex, span id hex, parent span id hex, name)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []
        self._lock = threading.Lock()

    async def traces(self, request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        with self._lock:
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    self.spans += [(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name)
                                   for s in scope.spans]  # fmt: skip
        return Response(b"", media_type="application/x-protobuf")

    def of_trace(self, trace_id: str) -> list[tuple[str, str, str, str]]:
        with self._lock:
            return [s for s in self.spans if s[0] == trace_id]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    sink = Collector()
    app = Starlette(routes=[Route("/v1/traces", sink.traces, methods=["POST"])])
    with serve_in_thread(app) as port:
        yield sink, port


def test_an_exported_trace_has_a_span_per_stage_under_the_clients_trace_id(
    collector: tuple[Collector, int], gateway_factory: Callable[..., GatewayHandle]
) -> None:
    sink, port = collector
    gw = gateway_factory("traced", FLYWHEEL_OTLP_ENDPOINT=f"http://127.0.0.1:{port}/v1/traces",
                         OTEL_BSP_SCHEDULE_DELAY="200")  # fmt: skip
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="flywheel", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    trace_id = raw.headers["x-trace-id"]
    assert raw.parse().choices
    wait_until(lambda: {s[3] for s in sink.of_trace(trace_id)} >= STAGES | {"POST /v1/chat/completions"},
               30, "the request's spans at the collector")  # fmt: skip
    spans = sink.of_trace(trace_id)
    (root,) = [s for s in spans if s[3] == "POST /v1/chat/completions"]
    assert {s[3] for s in spans if s[2] == root[1]} >= STAGES  # each stage a child of the request's span
