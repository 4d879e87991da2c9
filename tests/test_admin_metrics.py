"""`GET /admin/metrics` on a real store (SQLite and PostgreSQL), in process: per-version numbers from
crafted interactions and ratings, the `since` window, the time-bucketed series, and key scopes. No
vLLM: versions are `kind: full` with an endpoint, as in test_admin_api. Over real HTTP against a real
gateway it is exercised by tests/test_dashboard.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deploy.canary.metrics import StoreMetrics
from feedback.events import Candidate, Feedback, Interaction
from feedback.store import FeedbackStore
from flywheel.db import create_schema, make_engine
from flywheel.settings import Settings
from gateway.admin.metrics_router import build_metrics_router
from gateway.admin.metrics_service import MetricsService
from gateway.errors import install_error_handlers
from policies.registry import PolicyRegistry

CHAT_KEY = "metrics-chat-key"
ADMIN_KEY = "metrics-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class Rig:
    http: httpx.Client
    store: FeedbackStore
    canary: str

    def serve(self, version: str, at: datetime, ratings: list[str | float], *, reward: float | None = None,
              blocked: int = 0, latency_ms: float = 100.0) -> None:  # fmt: skip
        """One answer per rating at ``at``, each rated as given (the first ``blocked`` blocked)."""
        events: list[Interaction | Feedback] = []
        for i, rating in enumerate(ratings):
            rid = f"{version}-{at.timestamp()}-{i}"
            safety = [{"stage": "output", "action": "block" if i < blocked else "allow", "verdicts": []}]
            events.append(Interaction(
                response_id=rid, time=at, policy_version=version, safety=safety,
                candidates=[Candidate(text="a", reward=reward)], latency_ms=latency_ms + i,
            ))  # fmt: skip
            events.append(Feedback.from_raw(rid, rating, time=at, policy_version=version))
        self.store.apply_batch(events)

    def metrics(self, **params: object) -> dict:
        resp = self.http.get("/admin/metrics", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def rig(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    settings = Settings(api_keys=[CHAT_KEY], admin_keys=[ADMIN_KEY], var_dir=tmp_path / "var")
    engine = make_engine(database_url)
    create_schema(engine)
    registry = PolicyRegistry(engine)
    for name in ("seed", "canary"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(f'{{"name": "{name}"}}')
    registry.ensure_seed(tmp_path / "seed", "seed")
    canary = registry.register("full", tmp_path / "canary", parent="seed", endpoint="http://127.0.0.1:9").id
    app = FastAPI()
    install_error_handlers(app)
    service = MetricsService(registry, StoreMetrics(engine), clock=lambda: NOW)
    app.include_router(build_metrics_router(service, settings))
    try:
        with TestClient(app, headers=ADMIN) as http:
            yield Rig(http, FeedbackStore(engine), canary)
    finally:
        engine.dispose()


def by_version(body: dict) -> dict[str, dict]:
    return {m["version_id"]: m for m in body["data"]}


def test_operator_key_only(rig: Rig) -> None:
    url = "/admin/metrics"
    missing = rig.http.get(url, headers={"Authorization": ""})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert rig.http.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    chat = rig.http.get(url, headers={"Authorization": f"Bearer {CHAT_KEY}"})
    assert chat.status_code == 403 and chat.json()["error"]["code"] == "insufficient_scope"
    bad = rig.http.get(url, params={"bucket_s": 0})
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request_error"
    assert rig.http.get(url, params={"since": "yesterday"}).status_code == 422


def test_per_version_numbers_all_time_and_since(rig: Rig) -> None:
    old = NOW - timedelta(hours=2)
    rig.serve("seed", old, ["up", "down", "down", "down"], reward=0.2, latency_ms=500)
    rig.serve("seed", NOW - timedelta(minutes=5), ["up", "up", "up", "down"], reward=0.4, blocked=1)
    rig.serve(rig.canary, NOW - timedelta(minutes=3), ["up", "up", "up", 0.0, "down"], reward=0.9, latency_ms=50)

    body = rig.metrics()
    assert body["object"] == "metrics" and body["since"] is None and body["series"] is None
    got = by_version(body)
    seed, canary = got["seed"], got[rig.canary]
    assert (seed["status"], seed["weight"], canary["status"], canary["weight"]) == ("stable", 1.0, "canary", 0.0)
    assert (seed["ratings"], seed["ups"], seed["downs"], seed["interactions"]) == (8, 4, 4, 8)
    assert seed["thumbs_up_rate"] == pytest.approx(0.5)
    assert seed["reward_n"] == 8 and seed["reward_mean"] == pytest.approx(0.3)
    assert seed["blocked"] == 1 and seed["safety_block_rate"] == pytest.approx(1 / 8)
    assert seed["latency_p99_ms"] == pytest.approx(503.0) and seed["latency_n"] == 8
    # A neutral 0 counts as a rating, but as neither a thumb up nor down.
    assert (canary["ratings"], canary["ups"], canary["downs"]) == (5, 3, 1)
    assert canary["thumbs_up_rate"] == pytest.approx(0.75) and canary["reward_mean"] == pytest.approx(0.9)
    assert canary["safety_block_rate"] == 0.0 and canary["latency_p99_ms"] == pytest.approx(54.0)

    recent = rig.metrics(since=(NOW - timedelta(hours=1)).isoformat())
    assert recent["since"].startswith("2025-03-01T11:00:00")
    seed = by_version(recent)["seed"]
    assert (seed["ratings"], seed["ups"], seed["downs"]) == (4, 3, 1) and seed["reward_mean"] == pytest.approx(0.4)
    # A naive time is read as UTC.
    naive = rig.metrics(since="2025-03-01T11:00:00")
    assert by_version(naive)["seed"]["ratings"] == 4

    empty = by_version(rig.metrics(since=NOW.isoformat()))
    assert empty["seed"]["ratings"] == 0 and empty["seed"]["thumbs_up_rate"] is None
    assert empty["seed"]["reward_mean"] is None and empty["seed"]["latency_p99_ms"] is None


def test_series_buckets_thumbs_over_time(rig: Rig) -> None:
    rig.serve("seed", NOW - timedelta(seconds=30), ["up", "down"])  # last bucket
    rig.serve("seed", NOW - timedelta(seconds=150), ["up", "up", "up", "down"])  # third bucket from the end
    rig.serve("seed", NOW - timedelta(seconds=700), ["down"])  # before the 10-bucket window
    rig.serve(rig.canary, NOW - timedelta(seconds=90), ["up", 0.0])  # second bucket from the end

    body = rig.metrics(bucket_s=60, buckets=10)
    series = body["series"]
    assert series["bucket_s"] == 60
    assert series["start"].startswith("2025-03-01T11:50:00") and series["end"].startswith("2025-03-01T12:00:00")
    points = {s["version_id"]: s["points"] for s in series["data"]}
    assert set(points) == {"seed", rig.canary}
    assert [(p["start"][11:19], p["ratings"], p["ups"], p["downs"]) for p in points["seed"]] == [
        ("11:57:00", 4, 3, 1), ("11:59:00", 2, 1, 1),
    ]
    assert [p["thumbs_up_rate"] for p in points["seed"]] == [pytest.approx(0.75), pytest.approx(0.5)]
    canary = [(p["start"][11:19], p["ratings"], p["ups"], p["downs"], p["thumbs_up_rate"]) for p in points[rig.canary]]
    assert canary == [("11:58:00", 2, 1, 0, 1.0)]  # the neutral rating counts, but as no thumb
    assert by_version(body)["seed"]["ratings"] == 7  # the totals stay all-time

    # A later `since` clips the series: its first bucket starts there.
    clipped = rig.metrics(bucket_s=60, buckets=10, since=(NOW - timedelta(seconds=100)).isoformat())["series"]
    assert clipped["start"].startswith("2025-03-01T11:58:20")
    seed = next(s for s in clipped["data"] if s["version_id"] == "seed")
    assert [(p["start"][11:19], p["ratings"]) for p in seed["points"]] == [("11:59:20", 2)]
