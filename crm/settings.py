"""All configuration, from CRM_ environment variables. Nothing else reads the environment."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of the event store. Unset: start an embedded server.",
    )
    data_dir: Path = Field(default=Path(".crm-data"), description="Embedded server data and local secrets.")
    db_pool_size: int = 10
    db_timeout_seconds: int = Field(
        default=2, ge=1, le=60,
        description="How long a request waits for a database connection (a free one from the "
        "pool, or a new one being made) before it is answered 503 with Retry-After.")
    shutdown_timeout_seconds: float = Field(
        default=8.0, gt=0, le=300,
        description="How long `crm serve` may take to stop after SIGTERM or Ctrl-C (requests, "
        "runners, pools, the embedded server); then it exits anyway.")
    command_cache_size: int = Field(
        default=10_000, ge=0,
        description="Records each process keeps in memory between commands (0: every "
        "command rebuilds its records from the log).",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    run_projections: bool = Field(
        default=True,
        description="Run the read models' runners as threads of `crm serve`. Turn off when "
        "`crm projections run` workers keep them up to date (the at-scale shape).",
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    web_dir: Path | None = Field(
        default=None,
        description="The built web UI served at / (index.html and assets/). Unset: web/dist "
        "of this repository, built by scripts/setup.")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 secret; unset: one kept in data_dir.")
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_issuer: str = "crm-core"
    jwt_audience: str = "crm-api"
    jwt_public_key_file: Path | None = None
    jwt_private_key_file: Path | None = None
    jwt_max_lifetime_hours: float = Field(
        default=24.0, gt=0, description="The longest a token may be valid for (exp - iat): a longer "
        "one is refused even if signed, and none longer is issued.")
    jwt_clock_skew_seconds: int = Field(
        default=60, ge=0, le=600, description="Clock difference allowed between the token's issuer and "
        "the API: on exp, and on iat and auth_time in the future (a token issued later than now plus "
        "this is refused).")
    # -- signing in and limits -------------------------------------------------------------
    access_token_minutes: float = Field(
        default=15.0, gt=0, description="Lifetime of the tokens POST /api/v1/auth/token hands out.")
    session_max_hours: float = Field(
        default=12.0, gt=0, description="How long after signing in POST /api/v1/auth/refresh still hands "
        "out a new token; then the user signs in again.")
    session_cookie_secure: bool | None = Field(
        default=None, description="Mark the web UI's session cookies Secure: always (true), never "
        "(false), or when the request came over HTTPS (unset).")
    metrics_token: SecretStr | None = Field(
        default=None, description="The Bearer token GET /metrics asks for; unset: /metrics is off (404).")
    auth_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a process trusts a user's sign-in state (active or "
        "deactivated, and the generation of their tokens) before re-reading it: the longest a "
        "deactivated user's token, or one issued before a change of their role, team or password, "
        "still works in another process.")
    api_key_touch_seconds: float = Field(
        default=60.0, ge=0, description="At most one write of an API key's last-used time per interval.")
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=0, description="Largest request body accepted (413 above it); 0: no limit.")
    max_header_bytes: int = Field(
        default=16 * 1024, ge=0, description="Largest request head accepted: the request line and all "
        "header names and values (431 above it); 0: no limit.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses and networks (CIDR) of the reverse proxies whose "
        "X-Forwarded-For is believed, comma-separated or a JSON list; empty: none (the client address "
        "is the connection's peer).")
    rate_limit_per_second: float = Field(
        default=100.0, ge=0, description="Requests per second each caller (user, API key, or client "
        "address when unauthenticated) may make, per API process; 0: no limit (load tests).")
    rate_limit_burst: float = Field(
        default=1000.0, ge=1, description="How many requests a caller may make at once before the "
        "per-second rate applies.")
    login_rate_limit_per_minute: float = Field(
        default=12.0, ge=0, description="Sign-in attempts per minute for one username from one "
        "address, after a burst of login_rate_limit_burst; 0: no limit.")
    login_rate_limit_burst: float = Field(default=10.0, ge=1)
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

    # -- publishing to Kafka (off while kafka_bootstrap_servers is empty) --
    kafka_bootstrap_servers: str = Field(
        default="", description="host:port[,host:port...] of the Kafka brokers; empty: no publishing.")
    kafka_topics: dict[str, str] = Field(
        default_factory=dict,
        description='Topic per aggregate type, JSON, e.g. {"customer": "crm.customer.v1"}; '
        "types not named get crm.<type>.v1.")
    kafka_personal_topics: list[str] = Field(
        default_factory=list,
        description="Topics that carry personal fields (JSON list); all others leave them out.")
    kafka_source: str = Field(default="/crm-core", description="CloudEvents source of the events.")
    kafka_schema_base_url: str | None = Field(
        default=None,
        description="Base of the envelopes' dataschema URIs; unset: http://HOST:PORT/api/v1/schemas.")
    kafka_batch_size: int = Field(default=5000, ge=1, le=100_000)
    # -- audit: the signed hash chain -------------------------------------------------
    audit_signing_key: SecretStr | None = Field(
        default=None,
        description="64 hex digits: the Ed25519 key that signs chain checkpoints and audit "
        "exports. Unset: one kept in data_dir.",
    )
    audit_checkpoint_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often `crm serve` signs the chain head (0: not by time; `crm audit "
        "checkpoint` signs on demand).",
    )
    audit_checkpoint_events: int = Field(
        default=1000,
        ge=0,
        description="`crm serve` also signs the chain head as soon as this many events were "
        "appended by the process since its last checkpoint (0: not by count).",
    )
    audit_heads_file: Path | None = Field(
        default=None,
        description="A file every checkpoint this process signs is appended to (JSON lines), "
        "for the operator to ship off the machine; `crm audit verify --heads FILE` checks the "
        "log against it. Unset: none.",
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
    analytics_memory_limit: str = Field(
        default="1GB", description="DuckDB's memory limit for the analytics file (the "
        "projection and analysts' queries together).")
    analytics_threads: int = Field(default=2, ge=1)
    analytics_query_timeout_seconds: float = Field(default=10.0, gt=0)
    analytics_max_rows: int = Field(default=100_000, ge=1)
    analytics_max_result_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest encoded result (JSON, CSV or "
        "Arrow) of an analyst's query; a larger one is refused (422, code result-too-large).")
    analytics_max_concurrent_queries: int = Field(
        default=2, ge=1, description="Analysts' queries and exports running at once in the "
        "process that owns the analytics file; more wait up to the query time limit, then 503.")
    analytics_exports_dir: Path | None = Field(
        default=None, description="The directory Parquet exports are written into, one "
        "directory per export name. Default: data_dir/exports")
    analytics_url: str | None = Field(
        default=None, description="Where `crm sql` and `crm analytics` reach the owning "
        "process when the file is in use. Default: http://CRM_HOST:CRM_PORT")
    # -- automation (process managers: playbooks, routing, SLAs, reminders) --------------
    automation_enabled: bool = Field(
        default=True, description="Run the automation runner in `crm serve` (with the read "
        "models' runners); `crm automation run` runs it as a worker instead.")
    automation_rules_file: Path | None = Field(
        default=None, description="JSON rules: playbooks, teams, routes, SLAs, reminders. "
        "Unset: automation/default_rules.json")
    automation_poll_seconds: float = Field(default=1.0, gt=0)
    automation_survey_days: float = Field(default=14.0, gt=0, description="How long a survey link works.")
    smtp_host: str = Field(default="", description="SMTP server for notification e-mail; empty: none sent.")
    smtp_port: int = 25
    smtp_sender: str = "crm@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    # -- erasure (right to be forgotten) and backups --------------------------------------
    erasure_ledger_path: Path | None = Field(
        default=None, description="The erasure ledger: customers whose key was destroyed, kept "
        "outside the database so `crm restore` destroys them again. Default: "
        "data_dir/erasure-ledger.jsonl")
    erasure_kafka_wait_seconds: float = Field(
        default=10.0, ge=0, description="How long an erasure waits for the Kafka publisher to "
        "publish its event before the receipt says `queued`.")
    erasure_vacuum_full: bool = Field(
        default=True, description="VACUUM FULL the tables an erasure touched: rewrites their "
        "files, so no old row version or freed space keeps the personal data (a plain VACUUM "
        "leaves those bytes in the pages), but locks each table while it does. false: plain VACUUM.")
    analytics_exports_ledger: Path | None = Field(
        default=None, description="Where Parquet exports are recorded (found again by erasures). "
        "Default: data_dir/analytics-exports.jsonl")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p for p in text.split(",") if p.strip()]
        if isinstance(value, list):
            for p in value:
                ipaddress.ip_network(str(p).strip(), strict=False)  # ValueError: not an address or network
            return [str(p).strip() for p in value]
        return value

    @model_validator(mode="after")
    def _token_lifetimes(self) -> Settings:
        if self.access_token_minutes > self.jwt_max_lifetime_hours * 60:
            raise ValueError("access_token_minutes is longer than jwt_max_lifetime_hours allows")
        return self
