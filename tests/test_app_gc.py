"""The gateway's start-up heap is frozen and it serves with raised cyclic-GC thresholds (gateway.app).

At CPython's default thresholds a worker ran a young-generation collection every ~10 proxied requests;
the wiring of the tuned thresholds is what is checked here, on the real app factory and lifespan.
"""

from __future__ import annotations

import gc
from typing import Any, cast

from fastapi.testclient import TestClient

from flywheel.settings import Settings
from gateway.app import SERVING_GC_THRESHOLDS, create_app
from gateway.backends import BackendPool
from gateway.telemetry import Telemetry
from policies.vllm_client import PolicyClient


def test_the_gateway_serves_with_its_gc_thresholds_and_a_frozen_start_up_heap() -> None:
    client = PolicyClient("http://127.0.0.1:9")
    app = create_app(
        Settings(api_keys=["k"], admin_keys=["a"]), chat=cast(Any, None), admin=cast(Any, None),
        backends=BackendPool(client, PolicyClient), telemetry=Telemetry.create("test-gc", None),
        registry_ok=lambda: True,
    )  # fmt: skip
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's defaults, whatever an earlier test in this process left
    try:
        with TestClient(app) as http:
            assert gc.get_threshold() == SERVING_GC_THRESHOLDS
            assert gc.get_freeze_count() > 0
            assert http.get("/healthz").status_code == 200
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
