"""Fixtures shared by the integration and end-to-end tests: a real PostgreSQL.

``database_url`` (session): a throw-away database on the PostgreSQL server at
127.0.0.1:5432 (user ``postgres``, trust auth) when one answers there, else an
embedded server of our own (``crm.bootstrap.EmbeddedPostgres``). Neither: the tests
that need a database fail loudly -- never skip. Set ``CRM_TEST_EMBEDDED=1`` to use the
embedded server even when a local one answers.

``pg_env`` (function): the eventsourcing settings of that database; the CRM's tables
are emptied after every test (and before, should a previous test have left rows).

``system`` / ``make_system``: the CRM built by ``crm.bootstrap.build`` on that
database, closed at teardown.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

LOCAL_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
CRM_TABLES = ("crm_events", "crm_email_reservations", "crm_idempotency", "crm_subject_keys",
              "crm_credentials", "crm_api_keys", "crm_web_sessions",  # identity: password, key and session hashes
              "crm_analytics_customers",
              "crm_event_chain", "crm_chain_checkpoints", "crm_snapshots",  # audit and replay
              "crm_automation_tracking", "crm_automation_timers", "crm_automation_notifications",
              "crm_automation_surveys", "crm_automation_load", "crm_automation_customers",
              "crm_automation_purchases", "crm_automation_parked", "crm_erasures")
#: 64 hex digits: the key-encryption key of every system the tests build.
MASTER_KEY = "5e" * 32
JWT_SECRET = "test-jwt-secret-" + "x" * 32
#: The Bearer token of /metrics in every system the tests build.
METRICS_TOKEN = "test-metrics-token-" + "m" * 24
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def _local_server_answers() -> bool:
    try:
        with psycopg.connect(LOCAL_SERVER, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL database of this test session, dropped at its end."""
    problems: list[str] = []
    if os.environ.get("CRM_TEST_EMBEDDED") == "1":
        problems.append("CRM_TEST_EMBEDDED=1 asks for the embedded server")
    elif _local_server_answers():
        name = f"crm_test_{secrets.token_hex(6)}"
        with psycopg.connect(LOCAL_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            with psycopg.connect(LOCAL_SERVER, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    else:
        problems.append("no PostgreSQL server answers on 127.0.0.1:5432 (user postgres)")

    from crm.bootstrap import EmbeddedPostgres

    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg"))
    url = None
    try:
        with warnings.catch_warnings():
            # platformdirs warns about a missing XDG_RUNTIME_DIR; the suite runs -W error.
            warnings.simplefilter("ignore")
            url = embedded.start()
    except Exception as e:  # noqa: BLE001 -- reported below, loudly
        problems.append(f"the embedded PostgreSQL did not start: {type(e).__name__}: {e}")
        embedded.stop()
    if url is None:
        # Never skip: a suite that silently skips its database tests proves nothing.
        pytest.fail(
            f"These tests need PostgreSQL and none is available (CI={os.environ.get('CI', '')!r}): "
            + "; ".join(problems),
            pytrace=False,
        )
    try:
        yield url
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedded.stop()


def connect(database_url: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the test database, for raw SQL."""
    return psycopg.connect(database_url, autocommit=True)


def _existing_crm_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_name = ANY(%s)",
        (list(CRM_TABLES),),
    ).fetchall()
    return sorted(r[0] for r in rows)


def truncate_crm_tables(database_url: str) -> None:
    """Empty the event store and forget every read model (schemas, views, registry):
    a read model left from another test would be ahead of the restarted log."""
    with connect(database_url) as conn:
        tables = _existing_crm_tables(conn)
        if tables:
            # The log's tables are append-only (a trigger); their owner may empty them
            # in a session that says so.
            conn.execute("SET crm.log_maintenance = on")
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rm\\_%' OR nspname = 'crm_read'"
        ).fetchall()]
        for schema in schemas:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.execute("DROP TABLE IF EXISTS crm_projections, crm_projection_tracking, crm_parked_events,"
                     " crm_follower_tracking, crm_follower_parked")


@pytest.fixture
def pg_env(database_url: str) -> Iterator[dict[str, str]]:
    """eventsourcing settings of the test database, with empty CRM tables."""
    from crm.bootstrap import postgres_env

    truncate_crm_tables(database_url)
    yield postgres_env(database_url, pool_size=4)
    truncate_crm_tables(database_url)


@pytest.fixture
def db(database_url: str, pg_env: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    """A raw autocommit connection to the (clean) test database."""
    with connect(database_url) as conn:
        yield conn


def settings_for(database_url: str, data_dir: Path, **overrides: Any) -> Any:
    from crm.settings import Settings

    values: dict[str, Any] = {
        "database_url": database_url,
        "master_key": MASTER_KEY,
        "jwt_secret": JWT_SECRET,
        "metrics_token": METRICS_TOKEN,
        "data_dir": data_dir,
        "db_pool_size": 4,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_system(
    database_url: str, pg_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """make_system(**settings) -> a System on the test database; all closed at teardown.

    Each call builds a new one, as a restarted process (or a second process) would.
    """
    from crm.bootstrap import build

    built: list[Any] = []

    def make(**overrides: Any) -> Any:
        system = build(settings_for(database_url, tmp_path / "data", **overrides))
        built.append(system)
        return system

    yield make
    for system in reversed(built):
        system.close()


@pytest.fixture
def system(make_system: Callable[..., Any]) -> Any:
    """The CRM built from settings on the test database (closed at teardown)."""
    return make_system()


@pytest.fixture
def no_kafka_tracking(database_url: str) -> Iterator[None]:
    """The Kafka publisher's tables go with the log that is emptied around each test
    (a module that publishes uses it: ``pytest.mark.usefixtures("no_kafka_tracking")``)."""
    def drop() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS crm_kafka_tracking, crm_kafka_parked")

    drop()
    yield
    drop()


@pytest.fixture
def broker() -> Iterator[Any]:
    """A Kafka-protocol broker (librdkafka's mock cluster in a subprocess)."""
    from tests.kafka_broker import MockBroker

    b = MockBroker()
    yield b
    b.stop()
