"""Build a gateway app from Settings: the one place that constructs the gateway's objects.

Start-up registers the seed policy as the first stable version (idempotent), so a fresh database
serves immediately.
"""

from __future__ import annotations

import logging
import os
import secrets

from fastapi import FastAPI
from sqlalchemy import text

from deploy.canary.live import CanaryAnalyzer
from deploy.canary.metrics import GatewayCounters, StoreMetrics
from deploy.canary.plan import RolloutPlan
from feedback.producer import EventProducer
from feedback.store import FeedbackStore
from feedback.tokens import FeedbackTokenSigner
from flywheel.db import create_schema, make_engine
from flywheel.settings import MAX_WORKERS, Settings
from gateway.admin.canary_service import CanaryService
from gateway.admin.metrics_service import MetricsService
from gateway.admin.service import AdapterLoader, AdminService
from gateway.app import create_app
from gateway.backends import BackendPool
from gateway.chat.pipeline import RequestPipeline
from gateway.chat.service import ChatService
from gateway.chat.upstream import Upstream
from gateway.grounding.encoder import Encoder
from gateway.grounding.retriever import Retriever
from gateway.grounding.stage import GroundingStage
from gateway.feedback.service import FeedbackService
from gateway.interactions import InteractionRecorder
from gateway.routing.cache import RoutingTableCache
from gateway.spool_slot import claim_spool, spool_base
from gateway.telemetry import Telemetry, configure_json_logging
from gateway.ratelimit import TokenBucketLimiter
from policies.lora_directory import DirectoryAdapterLoader
from policies.registry import PolicyRegistry
from policies.reward import load_active_scorer
from policies.vllm_client import PolicyClient
from safety.chain import SafetyChain

log = logging.getLogger(__name__)


def _feedback_secret(settings: Settings) -> str:
    if settings.feedback_secret:
        return settings.feedback_secret
    log.warning("FLYWHEEL_FEEDBACK_SECRET is unset: feedback tokens are valid in this process only")
    return secrets.token_urlsafe(32)


def build_gateway(settings: Settings) -> FastAPI:
    configure_json_logging(settings.log_level)
    engine = make_engine(settings.effective_database_url)
    create_schema(engine)
    registry = PolicyRegistry(engine)
    registry.ensure_seed(settings.seed_model_dir, served_model_name=settings.seed_model_name)

    max_adapters = settings.vllm_max_loras - 1  # one LoRA slot always free: see policies/vllm_server.py
    default_client = PolicyClient(
        settings.effective_vllm_url, timeout_s=settings.upstream_timeout_s, max_adapters=max_adapters
    )
    backends = BackendPool(
        default_client, lambda url: PolicyClient(url, timeout_s=settings.upstream_timeout_s)
    )
    telemetry = Telemetry.create("flywheel-gateway", settings.otlp_endpoint)
    routes = RoutingTableCache(registry, ttl_s=settings.registry_cache_s)
    # One spool file per gateway process (a spool is single-writer): the first free slot of its port.
    spool = claim_spool(spool_base(settings), settings.spool_max_bytes, max_slots=MAX_WORKERS)
    log.info("gateway process %d: spool %s", os.getpid(), spool.path)
    producer = EventProducer(settings, spool=spool, client_id="flywheel-gateway")
    recorder = InteractionRecorder(producer, settings.user_hash_salt)
    signer = FeedbackTokenSigner(_feedback_secret(settings), settings.feedback_token_ttl_s)
    wants_best_of_n = settings.max_best_of_n > 1
    needs_encoder = wants_best_of_n or settings.grounding_enabled or (
        settings.safety_enabled and "classifier" in settings.safety_input_filters
    )
    # One encoder shared by every stage that embeds text (retrieval, the safety head).
    encoder = Encoder.from_settings(settings) if needs_encoder else None
    retriever = Retriever.from_settings(settings, encoder=encoder) if settings.grounding_enabled else None
    pipeline = RequestPipeline(
        SafetyChain.from_settings(settings, encoder=encoder),
        GroundingStage(retriever, settings.grounding_top_k) if retriever else None,
        load_active_scorer(settings, encoder) if wants_best_of_n else None,
        grounding_default=settings.grounding_enabled,
        best_of_n_default=settings.best_of_n_default,
        max_best_of_n=settings.max_best_of_n,
    )
    chat = ChatService(
        routes,
        Upstream(backends, routes, telemetry.metrics),
        pipeline,
        telemetry,
        signer=signer,
        recorder=recorder,
        max_n=settings.max_n,
        max_tokens_cap=settings.max_tokens_cap,
        max_messages=settings.max_messages,
        max_in_flight=settings.max_in_flight,
        key_limiter=TokenBucketLimiter(settings.chat_rate_per_s, settings.chat_rate_burst)
        if settings.chat_rate_per_s > 0 else None,
    )
    feedback = FeedbackService.from_settings(settings, producer, signer, telemetry.metrics.registry)
    # One stable vLLM server: load adapters through its API. Several replicas: publish them to the
    # directory their filesystem LoRA resolver reads, so that every replica serves every canary.
    loader: AdapterLoader = (
        DirectoryAdapterLoader(default_client, settings.vllm_lora_resolver_dir, max_adapters=max_adapters)
        if settings.vllm_lora_resolver_dir is not None else default_client
    )  # fmt: skip
    admin = AdminService(
        registry, loader, max_loaded_adapters=max_adapters,
        unload_grace_s=settings.adapter_unload_grace_s,
        on_change=routes.invalidate, max_best_of_n=settings.max_best_of_n,
    )

    store_metrics = StoreMetrics(engine)
    canary = CanaryService(admin, CanaryAnalyzer(
        registry, store_metrics, GatewayCounters(settings.canary_gateway_metrics_urls),
        RolloutPlan.from_settings(settings),
    ))  # fmt: skip

    def registry_ok() -> bool:
        """The database answers, or it does not but chat still routes on a recent routing table (a short
        database outage must not take every gateway out of its Service; admin calls fail meanwhile)."""
        try:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        except Exception:  # noqa: BLE001 - readiness only reports, never raises
            return routes.healthy(max_age_s=settings.ready_on_stale_table_s)
        return True

    return create_app(
        settings,
        chat=chat,
        admin=admin,
        feedback=feedback,
        canary=canary,
        metrics=MetricsService(registry, store_metrics),
        interactions=FeedbackStore(engine),
        backends=backends,
        telemetry=telemetry,
        registry_ok=registry_ok,
        on_startup=[routes.get, admin.start_restoring],
        on_shutdown=[admin.aclose, routes.close, recorder.close, producer.close, engine.dispose],
    )
