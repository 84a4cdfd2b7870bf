"""All configuration, from CRM_ environment variables. Nothing else reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of the event store. Unset: start an embedded server.",
    )
    data_dir: Path = Field(default=Path(".crm-data"), description="Embedded server data and local secrets.")
    db_pool_size: int = 10
    host: str = "127.0.0.1"
    port: int = 8000
    run_projections: bool = Field(
        default=True,
        description="Run the read models' runners as threads of `crm serve`. Turn off when "
        "`crm projections run` workers keep them up to date (the at-scale shape).",
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 secret; unset: one kept in data_dir.")
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_issuer: str = "crm-core"
    jwt_audience: str = "crm-api"
    jwt_public_key_file: Path | None = None
    jwt_private_key_file: Path | None = None
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a process trusts a customer's key before re-reading it: the "
        "longest another process may still read personal data after an erasure.",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="64 hex digits: wraps the per-customer data keys. Unset: one kept in data_dir.",
    )

    # -- analytics (DuckDB) --------------------------------------------------------------
    analytics_enabled: bool = Field(
        default=True, description="Run the analytics projection in `crm serve` (with the "
        "read models' runners): the process that leads it owns the DuckDB file and answers SQL.")
    analytics_path: Path | None = Field(default=None, description="Default: data_dir/analytics.duckdb")
    analytics_pseudonym_key: SecretStr | None = Field(
        default=None, description="64 hex digits: key of the customer keys' HMAC. Unset: "
        "derived from the master key.")
    analytics_batch_size: int = Field(default=100_000, ge=1)
    analytics_memory_limit: str = "1GB"
    analytics_threads: int = Field(default=2, ge=1)
    analytics_query_timeout_seconds: float = Field(default=10.0, gt=0)
    analytics_max_rows: int = Field(default=100_000, ge=1)
    analytics_url: str | None = Field(
        default=None, description="Where `crm sql` and `crm analytics` reach the owning "
        "process when the file is in use. Default: http://CRM_HOST:CRM_PORT")
