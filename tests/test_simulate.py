"""`flywheel simulate` against a real gateway (real vLLM on the fixture seed model, real broker): the
report's counts add up, every rating reaches the store through `flywheel consume` as the user who gave
it, adversaries rate against their own judgement, and the CLI prints a table and writes JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feedback.events import hash_user
from flywheel.cli import app
from flywheel.simulate import SimulationConfig, run_simulation
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

SALT = "flywheel-dev-salt"  # the test gateways' FLYWHEEL_USER_HASH_SALT (the default)


def _config(gw: GatewayHandle, **overrides: object) -> SimulationConfig:
    base: dict[str, object] = dict(url=gw.url, api_key=gw.api_key, users=6, interactions=30, concurrency=4, seed=1,
                                   rating_probability=1.0, noise=0.0, adversarial_fraction=0.0, max_tokens=64,
                                   keep_records=True)  # fmt: skip
    return SimulationConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_ratings_reach_the_store(gateway: GatewayHandle, consumer_for: Callable[..., ConsumerHandle]) -> None:
    consumer = consumer_for(gateway)
    report = run_simulation(_config(gateway))

    assert report.error_count == 0, report.to_dict()
    assert set(report.versions) == {"seed"}
    stats = report.versions["seed"]
    assert stats.answers == stats.rated == 30 and stats.ups + stats.downs == 30
    assert len(report.records) == 30 and len({r.response_id for r in report.records}) == 30
    assert {r.user for r in report.records} <= {f"sim-{i}" for i in range(6)}
    # Honest, careful users with a hard threshold: the rating is exactly the score against it.
    assert all((r.rating == "up") == (r.score >= 0.6) for r in report.records)
    assert stats.ups == sum(r.rating == "up" for r in report.records)
    rates = stats.rule_rates
    assert set(rates) == set(report.rules) == {"cites_source", "right_fact", "short", "polite"}
    assert rates["short"] == sum(bool(r.verdicts["short"]) for r in report.records) / 30
    assert stats.mean_words == pytest.approx(sum(len(r.text.split()) for r in report.records) / 30)

    def stored() -> bool:
        return all((got := consumer.store.get_interaction(r.response_id)) and got["interaction"] and got["feedback"]
                   for r in report.records)  # fmt: skip

    wait_until(stored, 90, "every simulated interaction and rating in the store")
    for record in report.records:
        got = consumer.store.get_interaction(record.response_id)
        assert got is not None and got["interaction"] is not None
        [rating] = got["feedback"]
        assert (rating["event_id"], rating["rating_raw"]) == (record.event_id, record.rating)
        assert rating["rating"] == (1.0 if record.rating == "up" else -1.0)
        assert rating["user_hash"] == got["interaction"]["user_hash"] == hash_user(record.user, SALT)
        assert got["interaction"]["policy_version"] == record.policy_version == "seed"
        assert got["interaction"]["messages"][-1]["content"] == record.question


def test_adversaries_and_judge_only_runs(gateway: GatewayHandle) -> None:
    """All-adversarial users rate against the score; post_feedback=False decides ratings but posts none."""
    report = run_simulation(_config(gateway, interactions=10, adversarial_fraction=1.0, post_feedback=False, seed=2))
    assert report.error_count == 0 and report.versions["seed"].rated == 10
    assert all((r.rating == "up") == (r.score < 0.6) and r.event_id is None for r in report.records)
    missing = run_simulation(_config(gateway, interactions=3, model="no-such-version"))
    assert dict(missing.versions["no-such-version"].errors) == {"chat:http_404": 3}
    refused = run_simulation(_config(gateway, interactions=2, api_key="wrong-key"))
    assert dict(refused.errors) == {"chat:http_401": 2}


def test_cli_prints_a_table_and_writes_json(gateway: GatewayHandle, tmp_path: Path) -> None:
    out = tmp_path / "sim" / "report.json"
    result = CliRunner().invoke(app, [
        "simulate", "--url", gateway.url, "--key", gateway.api_key, "--users", "3", "--interactions", "8",
        "--concurrency", "4", "--model", "seed", "--preferences", "reversed", "--rating-probability", "1",
        "--max-tokens", "48", "--json", str(out),
    ], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preference 'reversed'" in result.output and "no_citation" in result.output
    assert any(line.lstrip("│ ").startswith("seed") for line in result.output.splitlines())
    body = json.loads(out.read_text())
    seed = body["versions"]["seed"]
    assert seed["answers"] == seed["rated"] == 8 and seed["ups"] + seed["downs"] == 8
    assert set(seed["rule_rates"]) == {"no_citation", "wrong_fact", "long", "curt"}
    assert body["config"]["model"] == "seed" and body["config"]["preferences"] == "reversed"
    assert body["totals"]["error_count"] == 0 and "api_key" not in body["config"]
