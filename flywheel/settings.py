"""The one typed settings object.

Built once at a process's entry point (CLI command, test fixture) and passed in; nothing deeper
in the code reads the environment. Sources, highest priority first: constructor arguments,
``FLYWHEEL_*`` environment variables, a ``.env`` file, a ``flywheel.toml`` file, defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _split_csv(value: object) -> object:
    """Accept ``"a,b"`` from the environment as well as a real list from TOML or code."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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
    port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="chat keys")
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="operator keys")
    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_tokens_cap: int = 2048
    max_n: int = 16
    upstream_timeout_s: float = 120.0
    registry_cache_s: float = Field(1.0, description="how stale a gateway's view of the registry may be")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; unset = no export")
    log_level: str = "INFO"

    # --- storage ---------------------------------------------------------------------------
    var_dir: Path = Path("var")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite under var/")

    # --- broker ----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(None, description="external broker; unset = embedded Tansu")
    kafka_port: int = 9092

    # --- policy server (vLLM) --------------------------------------------------------------
    vllm_url: str | None = Field(None, description="external vLLM; unset = `flywheel up` starts one")
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8100
    vllm_startup_timeout_s: float = 300.0
    vllm_max_loras: int = 4
    vllm_max_lora_rank: int = 16
    vllm_max_model_len: int = 1024
    vllm_kv_cache_gb: int = 1
    seed_model_name: str = "seed"

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
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
        return self.models_dir / self.seed_model_name

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
    def effective_vllm_url(self) -> str:
        return self.vllm_url or f"http://{self.vllm_host}:{self.vllm_port}"
