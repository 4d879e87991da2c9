"""Tracing, metrics and structured logs for one gateway process.

- OpenTelemetry SDK tracing: a span per pipeline stage; OTLP/HTTP export only when an endpoint is
  configured (none by default, so nothing leaves the machine).
- Prometheus metrics in a registry owned by this object (not the global one), so several gateway
  apps can live in one process (tests) without duplicate-registration errors. When several worker
  processes serve one port (gateway/workers.py), each also writes its values to prometheus_client's
  multiprocess files and ``/metrics`` sums every worker's.
- JSON logs (python-json-logger) carrying the response id and trace id.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from pythonjsonlogger.json import JsonFormatter

# prometheus_client's own switch: set (by gateway.workers) before a worker imports it, its values live
# in files in this directory, one set per process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def build_tracer_provider(service_name: str, otlp_endpoint: str | None) -> TracerProvider:
    """Record spans only when they go somewhere: without an exporter, spans are sampled out (they still
    carry trace ids, for X-Trace-Id and the logs) and cost about half as much on the hot path."""
    sampler = ParentBased(ALWAYS_ON if otlp_endpoint else ALWAYS_OFF)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=sampler)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider


def configure_json_logging(level: str) -> None:
    """Route the root logger to stdout as one JSON object per line (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_flywheel", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler._flywheel = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))  # its INFO is per-connection chatter


@dataclass
class GatewayMetrics:
    """Prometheus instruments, labelled by policy version and outcome."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "flywheel_requests", "Chat requests by policy version and HTTP status",
            ["policy_version", "status"], registry=r,
        )
        self.latency = Histogram(
            "flywheel_request_latency_seconds", "End-to-end chat latency by policy version",
            ["policy_version", "stream"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter(
            "flywheel_errors", "Errors by policy version and kind", ["policy_version", "kind"], registry=r
        )
        self.canary_fallbacks = Counter(
            "flywheel_canary_fallbacks", "Canary calls that failed and were retried on stable",
            ["policy_version"], registry=r,
        )
        self.tokens = Counter(
            "flywheel_completion_tokens", "Completion tokens served", ["policy_version"], registry=r
        )
        self.in_flight = Gauge(
            "flywheel_requests_in_flight", "Chat requests in progress", registry=r, multiprocess_mode="livesum"
        )


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``/metrics``: this process's registry, or with several workers every
    worker's values summed (a scrape reaches one worker; the canary guardrail needs all of them)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(registry)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=directory)
    return generate_latest(merged)


@dataclass
class Telemetry:
    """Everything observability-related that one gateway app owns."""

    tracer: trace.Tracer
    metrics: GatewayMetrics
    provider: TracerProvider

    @classmethod
    def create(cls, service_name: str, otlp_endpoint: str | None) -> Telemetry:
        provider = build_tracer_provider(service_name, otlp_endpoint)
        return cls(tracer=provider.get_tracer("flywheel.gateway"), metrics=GatewayMetrics(), provider=provider)

    def shutdown(self) -> None:
        self.provider.shutdown()
