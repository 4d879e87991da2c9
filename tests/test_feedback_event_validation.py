"""Event validation that keeps bad input a clear 4xx and makes SQLite and PostgreSQL store the same thing.

- Ratings that are not finite or beyond float range ("inf", "1e999", a 400-digit integer) are a
  ValueError, hence a 422 from ``POST /v1/feedback`` (they used to raise OverflowError: a 500). The API
  half runs the real app in process (``create_app`` with a real FeedbackService and a recording sink),
  so it needs neither vLLM nor a broker.
- NUL (PostgreSQL text refuses it) is rejected in identifiers and dropped from comments; string fields
  are bounded like their columns (PostgreSQL enforces ``String(n)``, SQLite does not); times are UTC
  (SQLite drops the offset); a naive ``export --since`` is UTC on both backends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from feedback.events import Feedback, Interaction, decode_event, normalise_rating
from feedback.export import load_records
from feedback.pairs import ExportConfig
from feedback.store import FeedbackStore
from feedback.tokens import FeedbackTokenSigner
from flywheel.db import create_schema, make_engine
from flywheel.settings import Settings
from gateway.app import create_app
from gateway.backends import BackendPool
from gateway.feedback.protocol import FeedbackRequest
from gateway.feedback.service import FeedbackService
from gateway.telemetry import Telemetry
from policies.vllm_client import PolicyClient

SECRET = "event-validation-secret"
KEY = "event-validation-key"
NOT_A_RATING = ["inf", "-inf", "nan", "1e999", "Infinity", 10**400, -(10**400), 10**5000, math.inf, math.nan]


# --- ratings (item: OverflowError -> 500) ----------------------------------------------------------
@pytest.mark.parametrize("raw", NOT_A_RATING, ids=["inf", "-inf", "nan", "1e999", "Infinity", "int400", "-int400",
                                                   "int5000", "float-inf", "float-nan"])
@pytest.mark.parametrize("scale", ["auto", "score", "stars"])
def test_non_finite_or_huge_ratings_are_value_errors(raw: object, scale: Any) -> None:
    with pytest.raises(ValueError, match="finite|range") as caught:
        normalise_rating(raw, scale)  # type: ignore[arg-type]
    assert not isinstance(caught.value, OverflowError)
    assert len(str(caught.value)) < 200  # a 5000-digit number is not echoed back
    with pytest.raises(ValueError):
        Feedback.from_raw("resp-1", raw)  # type: ignore[arg-type]


def test_finite_ratings_still_normalise() -> None:
    assert [normalise_rating(r) for r in ("up", "-1", 0.25, "0.5", 5, 3, 1)] == [1.0, -1.0, 0.25, 0.5, 1.0, 0.0, 1.0]
    assert normalise_rating(1, "stars") == -1.0
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        normalise_rating(1e308)


@pytest.mark.parametrize("rating", ["1e999", "-1e999", "9" * 400, '"inf"', '"nan"', '"1e999"', "-" + "9" * 400])
def test_request_model_refuses_them_as_validation_errors(rating: str) -> None:
    body = '{"response_id": "r", "feedback_token": "t", "rating": ' + rating + "}"
    with pytest.raises(ValidationError):  # what the route turns into a 422 (anything else is a 500)
        FeedbackRequest.model_validate_json(body)


class RecordingSink:
    """The producer's durable send, minus Kafka: keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[Feedback] = []

    async def asend_durable(self, event: Feedback) -> None:
        self.events.append(event)


@pytest.fixture
def api() -> Iterator[tuple[TestClient, RecordingSink]]:
    settings = Settings(api_keys=[KEY], feedback_secret=SECRET, _env_file=None)  # type: ignore[call-arg]
    sink = RecordingSink()
    service = FeedbackService.from_settings(settings, sink, FeedbackTokenSigner(SECRET, 3600), None)
    client = PolicyClient("http://127.0.0.1:9")
    app = create_app(
        settings, chat=cast(Any, None), admin=cast(Any, None), backends=BackendPool(client, PolicyClient),
        telemetry=Telemetry.create("test-event-validation", None), registry_ok=lambda: True, feedback=service,
    )  # fmt: skip
    yield TestClient(app, raise_server_exceptions=False), sink


def _post(client: TestClient, body: str) -> Any:
    return client.post("/v1/feedback", content=body.encode(),
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip


@pytest.mark.parametrize("rating", ["1e999", "9" * 400, '"inf"', '"nan"', '"1e999"', '"-Infinity"'])
def test_api_answers_422_not_500(api: tuple[TestClient, RecordingSink], rating: str) -> None:
    client, sink = api
    token = FeedbackTokenSigner(SECRET, 3600).issue("resp-x", "seed")
    resp = _post(client, f'{{"response_id": "resp-x", "feedback_token": "{token}", "rating": {rating}}}')
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "rating"
    assert "finite" in error["message"] or "range" in error["message"]
    assert sink.events == []
    ok = _post(client, f'{{"response_id": "resp-x", "feedback_token": "{token}", "rating": "up"}}')
    assert ok.status_code == 202, ok.text


def test_api_comment_with_nul_is_accepted_without_it(api: tuple[TestClient, RecordingSink]) -> None:
    """A NUL in a comment would be a 202 on the API and a dead letter on PostgreSQL: it is dropped."""
    client, sink = api
    token = FeedbackTokenSigner(SECRET, 3600).issue("resp-n", "seed")
    resp = _post(client, f'{{"response_id": "resp-n", "feedback_token": "{token}", "rating": 4, '
                         f'"comment": "fine\\u0000 answer"}}')  # fmt: skip
    assert resp.status_code == 202, resp.text
    assert [e.comment for e in sink.events] == ["fine answer"]


# --- SQLite vs PostgreSQL --------------------------------------------------------------------------
def _feedback(**fields: Any) -> dict[str, Any]:
    return {"schema_version": 1, "kind": "feedback", "response_id": "r", "rating": 1, "rating_raw": 1, **fields}


@pytest.mark.parametrize(("field", "value"), [
    ("response_id", "a\x00b"), ("event_id", "e\x00"), ("policy_version", "v\x00"), ("user_hash", "\x00"),
    ("idempotency_key", "k\x00"),
    ("policy_version", "p" * 129), ("user_hash", "u" * 65), ("event_id", "e" * 129), ("idempotency_key", "k" * 257),
])  # fmt: skip
def test_identifiers_are_bounded_like_their_columns_and_nul_free(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Feedback.model_validate(_feedback(**{field: value}))
    with pytest.raises(Exception, match=f"schema: {field}"):
        decode_event(Feedback.model_construct(**_feedback(**{field: value})).model_dump_json())


def test_interaction_trace_id_and_chosen_index_fit_their_columns() -> None:
    with pytest.raises(ValidationError, match="trace_id"):
        Interaction(response_id="r", trace_id="t" * 65)
    with pytest.raises(ValidationError, match="trace_id"):
        Interaction(response_id="r", trace_id="t\x00")
    with pytest.raises(ValidationError, match="chosen_index"):
        Interaction(response_id="r", chosen_index=2**31)  # PostgreSQL INTEGER is 32-bit
    with pytest.raises(ValidationError, match="chosen_index"):
        Interaction(response_id="r", chosen_index=-1)
    assert Interaction(response_id="r", trace_id="t" * 32, policy_version="p" * 128).trace_id == "t" * 32


def test_times_are_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    event = Feedback.from_raw("r", "up", time=datetime(2026, 1, 1, 12, 0, tzinfo=plus2))
    assert event.time == datetime(2026, 1, 1, 10, 0, tzinfo=UTC) and event.time.utcoffset() == timedelta(0)
    assert Feedback.from_raw("r", "up", time=datetime(2026, 1, 1, 12, 0)).time == datetime(2026, 1, 1, 12, tzinfo=UTC)
    wire = decode_event(json.dumps(_feedback(time="2026-01-01T12:00:00-05:00")))
    assert wire.time == datetime(2026, 1, 1, 17, 0, tzinfo=UTC)


@pytest.fixture
def tokyo_engine(database_url: str) -> Iterator[Engine]:
    """The store; on PostgreSQL with a session time zone of +09:00, where a naive time would be read as Tokyo's."""
    url = database_url
    if url.startswith("postgresql"):
        url += "?options=-c%20TimeZone%3DAsia%2FTokyo"
    engine = make_engine(url)
    create_schema(engine)
    yield engine
    engine.dispose()


def _instant(iso: str) -> datetime:
    when = datetime.fromisoformat(iso)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when  # SQLite hands back naive UTC


def test_store_keeps_the_instant_and_drops_nul_on_both_backends(tokyo_engine: Engine) -> None:
    store = FeedbackStore(tokyo_engine)
    at = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    store.apply_batch([
        Interaction(response_id="r1", time=at, messages=[{"role": "user", "content": "hi\x00there"}]),
        Feedback.from_raw("r1", "up", time=at, comment="nul\x00inside"),
    ])  # fmt: skip
    stored = store.get_interaction("r1")
    assert stored is not None and stored["interaction"] is not None
    assert _instant(stored["interaction"]["time"]) == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert _instant(stored["feedback"][0]["time"]) == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert stored["feedback"][0]["comment"] == "nulinside"
    assert stored["interaction"]["messages"][0]["content"] == "hi\x00there"  # JSON columns escape it: kept


def test_export_since_naive_means_utc_on_both_backends(tokyo_engine: Engine) -> None:
    store = FeedbackStore(tokyo_engine)
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    store.apply_batch([
        Interaction(response_id="early", time=t0 - timedelta(hours=1)),
        Interaction(response_id="late", time=t0 + timedelta(hours=1)),
        Feedback.from_raw("early", "up", time=t0 - timedelta(hours=1)),
        Feedback.from_raw("late", "up", time=t0 + timedelta(hours=1)),
    ])  # fmt: skip
    for since in (t0.replace(tzinfo=None), t0, t0.astimezone(timezone(timedelta(hours=9))),
                  t0.astimezone(timezone(timedelta(hours=-7)))):  # fmt: skip
        interactions, ratings = load_records(tokyo_engine, ExportConfig(since=since))
        assert [i.response_id for i in interactions] == ["late"], since
        assert [r.response_id for r in ratings] == ["late"], since
