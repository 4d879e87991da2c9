"""Settings that would only fail later, deep in a library, are refused when the settings are read."""

from __future__ import annotations

import pytest

from flywheel.settings import Settings


def test_settings_refuse_a_producer_linger_kafka_would_refuse() -> None:
    # kafka-python raises KafkaConfigurationError at connect time, which the producer would log as an
    # unreachable broker and spool forever
    with pytest.raises(ValueError, match="producer_delivery_timeout_ms .* must exceed"):
        Settings(producer_log_linger_ms=9_000, producer_request_timeout_ms=5_000, producer_delivery_timeout_ms=10_000)
    with pytest.raises(ValueError, match="must exceed"):
        Settings(producer_linger_ms=6_000, producer_request_timeout_ms=5_000, producer_delivery_timeout_ms=10_000)
    assert Settings(producer_log_linger_ms=4_000).producer_log_linger_ms == 4_000


def test_producer_compression_none_unknown_and_missing_codecs(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka import codec

    monkeypatch.setattr(codec, "has_zstd", lambda: False)  # as here, where python-zstd is not installed
    assert Settings(producer_compression="none").producer_compression is None  # what an env variable can say
    assert Settings(producer_compression="").producer_compression is None
    assert Settings().producer_compression == "gzip"
    with pytest.raises(ValueError, match="producer_compression"):
        Settings(producer_compression="brotli")  # kafka-python: "Not supported codec", in the producer thread
    with pytest.raises(ValueError, match="zstd compression needs the python-zstd library"):
        Settings(producer_compression="zstd")
