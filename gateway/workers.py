"""Serving one port from several gateway processes (``FLYWHEEL_WORKERS``).

One event loop tops out at one core (~0.5-0.8 ms of CPU per proxied chat request here), so a host with
spare cores runs several identical gateway processes on one listening socket: uvicorn's supervisor
binds it, spawns the workers and restarts any that dies. The workers share what a fleet of gateway
pods already shares — the registry database (routing changes reach each through its short cache), the
broker, the feedback-token secret; keyed rating event ids are derived from the key, so a retried rating
that lands on another worker is still stored once. What would differ from a single process is handled
here:

- the registry's schema and seed version are created once, by the supervisor, before any worker starts
  (workers racing to insert the seed row would fail each other's start);
- ``/metrics`` must count every worker's requests, not whichever worker answers the scrape: the
  workers write prometheus_client's multiprocess files into one fresh directory per run, and the
  scrape sums them (``gateway.telemetry.render_metrics``);
- each worker owns its own durable spool (``gateway.spool_slot``).

Limits kept in memory (in-flight cap, per-key rates, idempotency map) are per worker, as they are per
pod; docs/operations.md says how to size them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path

import psutil
from fastapi import FastAPI

from flywheel.settings import Settings
from gateway.http_protocol import ReadDeadlineHttpToolsProtocol
from gateway.spool_slot import spool_base, stranded_spools
from gateway.telemetry import MULTIPROC_ENV

log = logging.getLogger(__name__)


class WorkerHttpProtocol(ReadDeadlineHttpToolsProtocol):
    """The protocol class the workers import by name (uvicorn pickles its config into each worker, and a
    class made at run time cannot be pickled); its deadline is set from settings in the worker."""


def prepare_supervisor(settings: Settings) -> Path:
    """In the supervisor, before any worker exists: create the registry's schema and seed version, build
    the files every worker would otherwise race to create on a first start (the default knowledge base,
    the initial reward head), make sure every worker signs feedback tokens with one secret, give this
    run a fresh metrics directory, and say if a run with more workers left spooled events.
    Returns the metrics directory (also exported in the environment the workers inherit)."""
    from flywheel.db import create_schema, make_engine
    from policies.registry import PolicyRegistry

    engine = make_engine(settings.effective_database_url)
    try:
        create_schema(engine)
        PolicyRegistry(engine).ensure_seed(settings.seed_model_dir, served_model_name=settings.seed_model_name)
    finally:
        engine.dispose()
    share_feedback_secret(settings)
    build_shared_files(settings)
    metrics_dir = settings.var_dir / "metrics" / f"gateway-{settings.port}"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters restart with the run, as a pod's do
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    warn_stranded_spools(settings)
    return metrics_dir


def share_feedback_secret(settings: Settings) -> None:
    """Without a configured secret each worker would draw its own, and a token issued by one worker
    would be refused by the others (most ratings lost): draw one here, for every worker of this run."""
    if settings.feedback_secret:
        return
    log.warning("FLYWHEEL_FEEDBACK_SECRET is unset: feedback tokens are valid for this run of the gateway only")
    os.environ["FLYWHEEL_FEEDBACK_SECRET"] = secrets.token_urlsafe(32)


def build_shared_files(settings: Settings) -> None:
    """Build once what each worker builds on first use (the shipped knowledge base, the initial reward
    head), so that workers starting together do not write the same files at once."""
    needs_encoder = settings.grounding_enabled or settings.max_best_of_n > 1
    if not needs_encoder:
        return
    from gateway.grounding.encoder import Encoder

    encoder = Encoder.from_settings(settings)
    if settings.grounding_enabled:
        from gateway.grounding.retriever import Retriever

        Retriever.from_settings(settings, encoder=encoder)
    if settings.max_best_of_n > 1:
        from policies.reward import active_id, load_active_scorer

        if active_id(settings) is None:  # only the first start builds (and activates) the initial head
            load_active_scorer(settings, encoder)


def warn_stranded_spools(settings: Settings) -> None:
    """A run with fewer workers than the last leaves the extra slots' spools unread: say so (they are
    kept, and delivered by the next run with that many workers)."""
    for path in stranded_spools(spool_base(settings), settings.workers):
        log.warning("spool %s holds events this run will not send: run with more workers to deliver them", path)


def forget_dead_workers(metrics_dir: Path) -> None:
    """Drop the live-gauge files of workers that are gone (a restarted worker's in-flight count must not
    linger); counters and histograms of dead workers stay, so totals never go backwards."""
    from prometheus_client import multiprocess

    for path in metrics_dir.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(metrics_dir))


def create_worker_app() -> FastAPI:
    """uvicorn's app factory in each worker: settings from the environment the supervisor prepared."""
    from gateway.wiring import build_gateway

    settings = Settings()
    WorkerHttpProtocol.read_timeout_s = settings.request_read_timeout_s
    forget_dead_workers(Path(os.environ[MULTIPROC_ENV]))
    return build_gateway(settings)
