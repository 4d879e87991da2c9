"""POST /v1/feedback through real gateway processes, a real broker, `flywheel consume` and a real store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from feedback.events import hash_user
from feedback.store_models import FeedbackRow, InteractionRow
from tests.fixtures.broker import wait_until
from tests.fixtures.feedback import ConsumerHandle, mint_token, post_ratings_sync, private_topics, rating_bodies
from tests.fixtures.gateway import GatewayHandle

pytestmark = [pytest.mark.vllm, pytest.mark.broker]

PII_PROMPT = "My email is zed.quill.e2e@example.org, call +44 20 7946 0123, card 4111 1111 1111 1111. Price?"
PII_COMMENT = "Wrong! Write to zed.quill.e2e@example.org or ring +44 20 7946 0123; card 5500 0000 0000 0004"
PII_NEEDLES = ["zed.quill", "7946 0123", "4111 1111", "5500 0000", "1111 1111 1111"]


def _post(gw: GatewayHandle, body: object, key: str | None = "default", **kw: object) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {gw.api_key if key == 'default' else key}"}
    headers.update(kw.pop("headers", {}))  # type: ignore[arg-type]
    if isinstance(body, bytes):
        return httpx.post(f"{gw.url}/v1/feedback", content=body, headers=headers, timeout=30)
    return httpx.post(f"{gw.url}/v1/feedback", json=body, headers=headers, timeout=30)


def _ratings(consumer: ConsumerHandle, response_id: str) -> list[dict]:
    got = consumer.store.get_interaction(response_id)
    return got["feedback"] if got else []


def _topic_values(bootstrap: str, topic: str, idle_s: float = 1.5) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[bytes] = []
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for recs in consumer.poll(timeout_ms=200).values():
            out += [r.value for r in recs]
            last = time.monotonic()
    consumer.close()
    return out


def test_chat_rate_store_roundtrip_without_pii(
    database_url: str, gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle]
) -> None:
    """Chat → thumbs down with a comment → one feedback row next to its interaction, on SQLite and
    PostgreSQL; the PII planted in the prompt and the comment is in no Kafka message and no row."""
    topics = private_topics()
    gw = gateway_factory("e2e", FLYWHEEL_DATABASE_URL=database_url, **topics)
    consumer = consumer_for(gw)
    chat = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    resp = chat.chat.completions.create(
        model="flywheel", messages=[{"role": "user", "content": PII_PROMPT}], max_tokens=16, user="e2e-user"
    )
    fw = resp.model_extra["flywheel"]
    body = {"response_id": fw["response_id"], "feedback_token": fw["feedback_token"], "rating": "down",
            "comment": PII_COMMENT, "user": "e2e-user"}  # fmt: skip
    accepted = _post(gw, body)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event_id"]
    assert accepted.json() == {"event_id": event_id, "status": "accepted", "response_id": fw["response_id"]}

    def stored() -> bool:
        got = consumer.store.get_interaction(fw["response_id"])
        return bool(got and got["interaction"] and got["feedback"])

    wait_until(stored, 60, "interaction and rating in the store")
    got = consumer.store.get_interaction(fw["response_id"])
    assert got is not None and len(got["feedback"]) == 1
    rating = got["feedback"][0]
    assert rating["event_id"] == event_id and rating["rating"] == -1.0 and rating["rating_raw"] == "down"
    assert rating["policy_version"] == "seed" == got["interaction"]["policy_version"]
    assert rating["user_hash"] == hash_user("e2e-user", "flywheel-dev-salt") == got["interaction"]["user_hash"]
    assert "[EMAIL]" in rating["comment"] and "[PHONE]" in rating["comment"]

    env = gw.process.env or {}
    wire = [v.decode() for t in topics.values() for v in _topic_values(env["FLYWHEEL_KAFKA_BOOTSTRAP"], t)]
    assert len(wire) >= 2
    with consumer.store.engine.connect() as conn:
        rows = [json.dumps([str(v) for v in row]) for table in (InteractionRow, FeedbackRow)
                for row in conn.execute(select(table))]  # fmt: skip
    for needle in PII_NEEDLES:
        assert not any(needle in blob for blob in wire + rows), f"PII {needle!r} leaked"


def test_a_key_posing_as_many_raters_meets_the_per_key_limit(gateway_factory: Callable[..., GatewayHandle]) -> None:
    """FLYWHEEL_FEEDBACK_KEY_RATE_PER_S bounds a key whatever `user` it claims; another key is untouched."""
    gw = gateway_factory("per-key", FLYWHEEL_FEEDBACK_KEY_RATE_PER_S="0.01", FLYWHEEL_FEEDBACK_KEY_RATE_BURST="3",
                         **private_topics())  # fmt: skip
    body = {"response_id": "resp-k", "feedback_token": mint_token("resp-k"), "rating": "down"}
    codes = [_post(gw, {**body, "user": f"fake-{i}"}).status_code for i in range(4)]
    assert codes == [202, 202, 202, 429], codes
    assert _post(gw, {**body, "user": "fake-9"}, key=gw.admin_key).status_code == 202


def test_error_codes(gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle]) -> None:
    """202 / 401 / 403 (forged, expired, foreign, malformed) / 422 / 413 / 429 / 409 / idempotent repeat."""
    gw = gateway_factory(
        "codes", FLYWHEEL_FEEDBACK_RATE_PER_S="0.01", FLYWHEEL_FEEDBACK_RATE_BURST="3", **private_topics()
    )
    consumer = consumer_for(gw)
    ok = {"response_id": "resp-a", "feedback_token": mint_token("resp-a"), "rating": 4, "user": "codes-1"}
    assert _post(gw, ok).status_code == 202
    assert _post(gw, ok, key=None).status_code == 401
    assert _post(gw, ok, key="not-a-key").status_code == 401

    forged = ok["feedback_token"][:-2] + ("AA" if not ok["feedback_token"].endswith("AA") else "BB")
    expired = mint_token("resp-a", ttl_s=60, now=time.time() - 3600)
    cases = {"forged": forged, "expired": expired, "foreign": mint_token("resp-b"), "malformed": "garbage"}
    for name, token in cases.items():
        resp = _post(gw, {**ok, "feedback_token": token, "user": f"forbidden-{name}"})
        assert resp.status_code == 403, (name, resp.text)
        assert resp.json()["error"]["code"] == "invalid_feedback_token"
    assert "expired" in _post(gw, {**ok, "feedback_token": expired}).json()["error"]["message"]

    bad_bodies: list[object] = [
        {**ok, "rating": "sideways"}, {**ok, "rating": 7}, {**ok, "rating": True}, {**ok, "rating": 1.5, "scale": "stars"},
        {k: v for k, v in ok.items() if k != "feedback_token"}, {**ok, "comment": "x" * 4001},
        {**ok, "idempotency_key": "has spaces"}, b"{not json", b"[]",
    ]  # fmt: skip
    for body in bad_bodies:
        resp = _post(gw, body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request_error"

    too_large = _post(gw, {**ok, "comment": "y" * 20_000})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "payload_too_large"

    limited = [_post(gw, {**ok, "user": "flooder"}) for _ in range(5)]
    assert [r.status_code for r in limited] == [202, 202, 202, 429, 429]
    assert int(limited[3].headers["retry-after"]) >= 1
    assert limited[3].json()["error"]["type"] == "rate_limit_error"
    assert _post(gw, {**ok, "user": "someone-else"}).status_code == 202  # buckets are per user
    by_session = [_post(gw, {**ok, "user": None}, headers={"X-Session-Id": "tab-1"}) for _ in range(4)]
    assert [r.status_code for r in by_session] == [202, 202, 202, 429]

    keyed = {**ok, "idempotency_key": "retry-me", "comment": "first", "user": "idem"}
    first = _post(gw, keyed)
    again = _post(gw, keyed)
    assert first.status_code == again.status_code == 202
    assert again.json()["event_id"] == first.json()["event_id"]
    assert again.headers.get("idempotent-replayed") == "true" and "idempotent-replayed" not in first.headers
    conflict = _post(gw, {**keyed, "comment": "changed my mind"})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_key_reused"

    racing = {**ok, "response_id": "resp-r", "feedback_token": mint_token("resp-r"), "idempotency_key": "race",
              "user": "racer"}  # fmt: skip
    results = post_ratings_sync(gw, [racing] * 10, concurrency=10)
    assert {r.status for r in results} == {202}
    assert len({r.event_id for r in results}) == 1

    wait_until(lambda: _ratings(consumer, "resp-r") and len(_ratings(consumer, "resp-a")) >= 9, 60, "stored")
    consumer.wait_caught_up()  # every record in the topics applied: a duplicate among them would show now
    keyed_rows = [f for f in _ratings(consumer, "resp-a") if f["idempotency_key"]]
    assert [(f["event_id"], f["comment"]) for f in keyed_rows] == [(first.json()["event_id"], "first")]
    assert len(_ratings(consumer, "resp-r")) == 1
    # accepted for resp-a: ok, someone-else, 3 flooder, 3 by session, keyed once -> 9 rows
    assert len(_ratings(consumer, "resp-a")) == 9


def test_idempotency_key_across_gateway_processes(
    gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle]
) -> None:
    """A retry that lands on another gateway process (no shared memory) is still stored once."""
    topics = private_topics()
    one = gateway_factory("one", **topics)
    env = one.process.env or {}
    two = gateway_factory("two", FLYWHEEL_DATABASE_URL=one.database_url, **topics)
    consumer = consumer_for(one)
    body = {"response_id": "resp-x", "feedback_token": mint_token("resp-x"), "rating": "up",
            "idempotency_key": "cross-1", "user": "cross"}  # fmt: skip
    a, b = _post(one, body), _post(two, body)
    assert a.status_code == b.status_code == 202
    assert a.json()["event_id"] == b.json()["event_id"]
    assert env["FLYWHEEL_KAFKA_BOOTSTRAP"] == (two.process.env or {})["FLYWHEEL_KAFKA_BOOTSTRAP"]
    wait_until(lambda: bool(_ratings(consumer, "resp-x")), 60, "rating stored")
    consumer.wait_caught_up()  # both gateways' records applied
    assert len(_ratings(consumer, "resp-x")) == 1
    assert consumer.store.processed_ids([a.json()["event_id"]]) == {a.json()["event_id"]}


def test_rating_burst_reaches_store_once(
    gateway_factory: Callable[..., GatewayHandle], consumer_for: Callable[..., ConsumerHandle]
) -> None:
    """Ratings for responses the store has never seen (the rating arrives first) are all stored once."""
    gw = gateway_factory(
        "burst", FLYWHEEL_FEEDBACK_RATE_PER_S="100000", FLYWHEEL_FEEDBACK_RATE_BURST="100000", **private_topics()
    )
    consumer = consumer_for(gw)
    results = post_ratings_sync(gw, rating_bodies(500, "burst"), concurrency=32)
    assert {r.status for r in results} == {202}
    accepted = {r.event_id for r in results}
    wait_until(lambda: len(consumer.feedback_event_ids()) >= 500, 60, "500 ratings stored")
    consumer.wait_caught_up()  # a redelivered duplicate among the records would be stored by now
    ids = consumer.feedback_event_ids()
    assert sorted(ids) == sorted(accepted)
