"""The analytics projection: the event log applied to a DuckDB file in large batches.

One batch = up to ``batch_size`` stored events after the tracked position, read from
PostgreSQL as one Arrow table and handed to DuckDB whole: DuckDB parses the JSON
documents, flattens them into ``fact_events`` and refreshes the star's tables with set
operations (no row-by-row inserts, no Python per event except a keyed hash per new
customer). The rows and the new position commit in ONE DuckDB transaction, so a crash
at any moment loses nothing and applies nothing twice.

Personal fields are never read: the sealed part of a stored event is not opened, so no
name or address reaches DuckDB, and destroying a customer's key (erasure) needs no
change here. Customers appear as ``customer_key``, an HMAC of their id under a key of
the deployment; the pairs (key, id) go to the PostgreSQL table ``crm_analytics_customers``
so that the HTTP API can show a role that may see personal data who a key is.

A batch that fails on its data (``projections.follow.classify``) is split in halves until
the event at fault is isolated; it is parked in ``analytics_parked`` and every other event
of the batch is applied. A document DuckDB cannot parse because it escapes a lone
surrogate is written again with U+FFFD in its place; one that is not JSON at all is
parked. An error of the file or the connection (I/O, out of memory) parks nothing:
``run`` tries again after a pause that doubles up to ``retry_max_seconds``.

Leadership: the process holding the PostgreSQL advisory lock ``crm_analytics`` is the
only one that writes; it keeps the DuckDB file open for as long as it leads, and so is
also the process that answers analysts' SQL (``analytics.sandbox``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import psycopg
import pyarrow as pa
import structlog

from events.base import all_event_types
from analytics import schema
from projections.follow import (MOMENT, Backoff, FollowerStats, LogFollower, apply_splitting, classify, clean_json,
                                clean_text)

log = structlog.get_logger("crm.analytics")

LOCK_NAME = "crm_analytics"
TRACKING_NAME = "crm_events"
DERIVED_NAME = "derived"
#: Default service-level targets (hours to first response, hours to resolution).
DEFAULT_SLA_TARGETS: dict[str, tuple[float, float]] = {
    "urgent": (1.0, 8.0),
    "high": (4.0, 24.0),
    "normal": (8.0, 72.0),
    "low": (24.0, 120.0),
}
_DOC_STRUCTURE = (
    '{"type": "VARCHAR", "version": "INTEGER", "event_id": "UUID", "occurred_at": "VARCHAR",'
    ' "recorded_at": "VARCHAR", "actor": {"id": "VARCHAR", "role": "VARCHAR"},'
    ' "reason": "VARCHAR", "correlation_id": "VARCHAR", "causation_id": "VARCHAR",'
    ' "command_id": "VARCHAR", "data": "JSON"}'
)
_STAGE = f"""
    CREATE OR REPLACE TEMP TABLE new_events AS
    WITH s AS (
      SELECT b.position, CAST(b.aggregate_id AS UUID) AS aggregate_id, b.aggregate_version,
             b.topic, AGGREGATE_TYPE AS aggregate_type,
             from_json(b.state, '{_DOC_STRUCTURE}') AS d
      FROM batch b WHERE_CLAUSE),
    c AS (
      SELECT *, CASE WHEN aggregate_type = 'customer' THEN CAST(aggregate_id AS VARCHAR)
                     ELSE d.data->>'customer_id' END AS customer_id FROM s)
    SELECT position, CAST(d.event_id AS UUID) AS event_id, coalesce(d.type, topic) AS event_type,
           coalesce(d.version, 1) AS event_version, aggregate_type, aggregate_id,
           aggregate_version,
           -- HMAC-SHA256(key, customer id): H(key ^ opad || H(key ^ ipad || id))
           left(sha256(unhex('OPAD') || unhex(sha256(unhex('IPAD') || encode(customer_id)))), 32)
             AS customer_key,
           {schema._ts('d.occurred_at')} AS occurred_at,
           {schema._ts('d.recorded_at')} AS recorded_at,
           d.actor.id AS actor_id, d.actor.role AS actor_role, d.reason, d.correlation_id,
           d.causation_id, TRY_CAST(d.command_id AS UUID) AS command_id, d.data AS payload,
           customer_id
    FROM c"""  # no join, no sort: rows stay in log order (DuckDB keeps insertion order)
_PG_DDL = """
CREATE TABLE IF NOT EXISTS crm_analytics_customers (
    customer_key text PRIMARY KEY, customer_id uuid NOT NULL)
"""


class NotLeader(RuntimeError):
    """Another process owns the analytics database."""


class Busy(RuntimeError):
    """Every slot for analysts' queries stayed taken for as long as the caller would wait."""


#: Counters for status and /metrics: those of the read models' runners.
AnalyticsStats = FollowerStats


@dataclass
class AnalyticsConfig:
    """What the composition root decides: where the file is, limits, stages, targets."""

    path: Path
    conninfo: str
    pseudonym_key: bytes
    #: (pipeline, stage, order, probability) of every configured stage
    stages: tuple[tuple[str, str, int, int], ...] = ()
    sla_targets: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_SLA_TARGETS))
    batch_size: int = 100_000
    memory_limit: str = "1GB"
    threads: int = 2
    query_timeout_seconds: float = 10.0
    max_rows: int = 100_000
    poll_seconds: float = 1.0
    events_table: str = "crm_events"
    #: largest encoded result of an analyst's query (JSON, CSV or Arrow), in bytes
    max_result_bytes: int = 16 * 1024 * 1024
    #: analysts' queries (and exports) running at once in this process; more wait
    max_concurrent_queries: int = 2
    #: where each Parquet export is recorded (one JSON line each), so an erasure finds them
    exports_ledger: Path | None = None
    #: the longest pause between attempts after an error of the file or the connection
    retry_max_seconds: float = 30.0
    #: the directory Parquet exports are written into, one directory per export name
    exports_dir: Path | None = None


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def give_back_memory() -> None:
    """Hand the memory freed in the process's malloc arenas back to the system (glibc).

    A query over wide rows allocates and frees a lot in the thread that ran it; glibc
    keeps such memory in that thread's arena for the next allocation there, and each
    request thread has its own, so without this a process that answered large queries
    on many threads keeps their peaks added up."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def customer_key(pseudonym_key: bytes, customer_id: str) -> str:
    """The pseudonymous key analysts see for a customer (128 bits of an HMAC-SHA256)."""
    return hmac.new(pseudonym_key, customer_id.encode(), hashlib.sha256).hexdigest()[:32]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class AnalyticsProjection(LogFollower):
    """Owns the analytics DuckDB file while it leads; applies the log to it (in the
    ``LogFollower`` frame)."""

    def __init__(self, config: AnalyticsConfig):
        self.config = config
        self.name = "analytics-projection"
        self.conninfo = config.conninfo
        self.events_table = config.events_table
        self.poll_seconds = config.poll_seconds
        self.backoff = Backoff(config.poll_seconds, config.retry_max_seconds)
        self.stats = AnalyticsStats()
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self.db: duckdb.DuckDBPyConnection | None = None
        self._db_lock = threading.Lock()
        self._query_slots = threading.BoundedSemaphore(config.max_concurrent_queries)

    # -- leadership and the file ---------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.db is not None

    def try_lead(self) -> bool:
        """Take the analytics leadership if free (held until ``close``)."""
        if self._lock_conn is not None and not self._lock_conn.closed:
            return True
        conn = psycopg.connect(self.config.conninfo, autocommit=True)
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (LOCK_NAME,)).fetchone()
        if not (row and row[0]):
            conn.close()
            return False
        self._lock_conn = conn
        self.stats.is_leader = True
        return True

    def open(self) -> duckdb.DuckDBPyConnection:
        """Lead, open the file for writing and lock it down; the write connection."""
        if self.db is not None:
            return self.db
        if not self.try_lead():
            raise NotLeader("another process owns the analytics database")
        self.db = open_database(self.config.path, self.config)
        derive_all(self.db)  # after a crash during a catch-up
        return self.db

    def close(self) -> None:
        with self._db_lock:
            if self.db is not None:
                self.db.close()
                self.db = None
        for conn in (self._pg, self._lock_conn):
            if conn is not None and not conn.closed:
                conn.close()
        self._pg = self._lock_conn = None
        self.stats.is_leader = False

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the open database (for a query thread)."""
        with self._db_lock:
            if self.db is None:
                raise NotLeader("the analytics database is not open in this process")
            return self.db.cursor()

    @contextmanager
    def query_slot(self, wait: float) -> Iterator[None]:
        """One of the ``max_concurrent_queries`` slots for an analyst's query, held for the
        block; ``Busy`` if none frees up within ``wait`` seconds."""
        if not self._query_slots.acquire(timeout=wait):
            raise Busy(f"{self.config.max_concurrent_queries} analytics queries are running;"
                       f" none finished within {wait:g} s")
        try:
            yield
        finally:
            self._query_slots.release()
            give_back_memory()

    def _pg_conn(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed:
            self._pg = psycopg.connect(self.config.conninfo, autocommit=True)
            self._pg.execute(_PG_DDL)
        return self._pg

    # -- batches -----------------------------------------------------------------------
    def position(self) -> int:
        return tracked_position(self.open())

    def head(self) -> int:
        row = self._pg_conn().execute(
            f'SELECT coalesce(max(notification_id), 0) FROM "{self.config.events_table}"'
        ).fetchone()
        return int(row[0]) if row else 0

    def run_batch(self, *, stop_at: int | None = None) -> int:
        """Apply the next batch; how many events it held (0: the log is reached)."""
        db = self.open()
        position = tracked_position(db)
        batch = fetch_batch(self._pg_conn(), self.config.events_table, position,
                            self._limit(position, stop_at))
        return self._apply(db, batch)

    def _limit(self, position: int, stop_at: int | None) -> int:
        if stop_at is None:
            return self.config.batch_size
        return max(0, min(self.config.batch_size, stop_at - position))

    def _apply(self, db: duckdb.DuckDBPyConnection, batch: pa.Table | None,
               *, derive: bool = True) -> int:
        if batch is None:
            return 0
        started = time.perf_counter()
        last = int(batch.column("position")[-1].as_py())
        try:
            parked = apply_batch(db, batch, self.config.pseudonym_key, last,
                                 on_new_customers=self._record_customers, derive=derive)
        except Exception as e:
            if classify(e) == MOMENT:
                raise
            log.warning("analytics batch failed on its data; splitting it",
                        first=int(batch.column("position")[0].as_py()), last=last,
                        error=clean_text(f"{type(e).__name__}: {e}"))
            parked = self._split(db, batch, derive=derive)
        self.note_batch(batch.num_rows, parked, last, started)
        return int(batch.num_rows)

    def _split(self, db: duckdb.DuckDBPyConnection, batch: pa.Table, *, derive: bool) -> int:
        """Apply ``batch`` (which failed on its data) in as few parts as it allows: a
        part that fails is halved, an event that fails alone is parked. Each part
        commits with its own position. How many events were parked."""
        positions = batch.column("position").to_pylist()
        topics = batch.column("topic").to_pylist()
        parked = 0

        def apply(part: Any) -> None:
            nonlocal parked
            sub = batch.slice(part[0], len(part))
            parked += apply_batch(db, sub, self.config.pseudonym_key, int(positions[part[-1]]),
                                  on_new_customers=self._record_customers, derive=derive)

        def park(i: int, error: BaseException) -> None:
            park_event(db, int(positions[i]), str(topics[i]), f"{type(error).__name__}: {error}")
            log.error("analytics parked an event", position=int(positions[i]), topic=topics[i],
                      error=clean_text(f"{type(error).__name__}: {error}"))

        return parked + apply_splitting(range(batch.num_rows), apply, park)

    def _record_customers(self, pairs: pa.Table) -> None:
        keys = pairs.column("customer_key").to_pylist()
        ids = pairs.column("customer_id").to_pylist()
        if keys:
            # Never for a customer whose key was destroyed: an erasure removed that link.
            self._pg_conn().execute(
                "INSERT INTO crm_analytics_customers (customer_key, customer_id)"
                " SELECT p.k, p.c FROM unnest(%s::text[], %s::uuid[]) AS p(k, c)"
                " WHERE NOT EXISTS (SELECT 1 FROM crm_subject_keys s"
                "  WHERE s.subject_id = p.c AND s.wrapped_key IS NULL)"
                " ON CONFLICT DO NOTHING",
                (keys, ids),
            )

    def catch_up(self, *, stop_at: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 stop: threading.Event | None = None) -> int:
        """Apply batches until the log's head (or ``stop_at``); the position.

        The next batch is read from PostgreSQL (on a connection of its own) while DuckDB
        applies the current one."""
        db = self.open()
        head = self.head() if stop_at is None else stop_at
        position = tracked_position(db)
        with psycopg.connect(self.config.conninfo, autocommit=True) as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="analytics-read") as pool:
            def read(after: int) -> pa.Table | None:
                return fetch_batch(reader, self.config.events_table, after,
                                   self._limit(after, stop_at))

            pending = pool.submit(read, position)
            batch = pending.result()
            while batch is not None:
                pending = pool.submit(read, int(batch.column("position")[-1].as_py()))
                # While full batches come, the keyed tables wait: they are derived once,
                # with the last (short) batch or by derive_all below.
                self._apply(db, batch, derive=batch.num_rows < self.config.batch_size)
                if progress is not None:
                    head = max(head, self.stats.position)
                    progress(self.stats.position, head)
                batch = pending.result()
                if stop is not None and stop.is_set():
                    break
        derive_all(db)
        db.execute("CHECKPOINT")  # the WAL into the file now, not at the next start
        position = tracked_position(db)
        if progress is not None:
            progress(position, max(head, position))
        return position

    # -- following the log ---------------------------------------------------------------
    def advance(self, stop: threading.Event) -> bool:
        """One batch; after a full one (a backlog) the catch-up path, which is faster."""
        if self.run_batch() >= self.config.batch_size:
            self.catch_up(stop=stop)
            return True
        return False

    # -- rebuild -------------------------------------------------------------------------
    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Build a new file from position 0 beside the live one, then replace it."""
        if not self.try_lead():
            raise NotLeader("another process owns the analytics database")
        with self._db_lock:
            if self.db is not None:
                self.db.close()
                self.db = None
        target = self.config.path
        fresh = target.with_name(target.name + ".rebuild")
        for p in (fresh, Path(str(fresh) + ".wal")):
            p.unlink(missing_ok=True)
        self.config.path = fresh
        try:
            position = self.catch_up(progress=progress)
            with self._db_lock:
                if self.db is not None:
                    self.db.execute("CHECKPOINT")
                    self.db.close()
                    self.db = None
        finally:
            self.config.path = target
        Path(str(target) + ".wal").unlink(missing_ok=True)
        os.replace(fresh, target)
        return position


# -- the database itself ---------------------------------------------------------------------
#: Set on every DuckDB connection the CRM opens: no extension is installed or loaded
#: behind a query's back (DuckDB would otherwise fetch one from the network, or load one
#: from ~/.duckdb, when a query names a function of it); a query naming such a function
#: fails instead.
NO_EXTENSIONS: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}


def connect(path: Path, config: AnalyticsConfig, *, read_only: bool = False
            ) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``path`` with the configured memory limit and threads and
    no automatic extensions (``lock_down`` it before analysts' SQL runs on it)."""
    return duckdb.connect(str(path), read_only=read_only, config={
        "memory_limit": config.memory_limit, "threads": config.threads, **NO_EXTENSIONS})


def lock_down(db: duckdb.DuckDBPyConnection) -> None:
    """From here on: no file or network access from SQL, no setting can change."""
    db.execute("SET enable_external_access = false")
    db.execute("SET lock_configuration = true")


def open_database(path: Path, config: AnalyticsConfig) -> duckdb.DuckDBPyConnection:
    """Open (creating if new) the analytics file for writing, set up and locked down."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path, config)
    try:
        setup(db, config)
        lock_down(db)
    except BaseException:
        db.close()
        raise
    return db


def setup(db: duckdb.DuckDBPyConnection, config: AnalyticsConfig) -> None:
    """Tables, views, comments, and the configured stages and SLA targets."""
    db.execute("SET TimeZone = 'UTC'")
    db.execute("SET enable_progress_bar = false")
    # Checkpoint (compress into the file) every 1 GB of WAL rather than every 16 MB: a
    # catch-up commits many large batches; it checkpoints once at its end.
    db.execute("SET checkpoint_threshold = '1GB'")
    db.execute("BEGIN")
    db.execute(schema.TRACKING_DDL)
    db.execute(schema.FACT_EVENTS_DDL)
    for t in schema.TABLES:
        db.execute(f"CREATE TABLE IF NOT EXISTS {t.name} ({t.columns})")
    db.execute("CREATE TABLE IF NOT EXISTS analytics_parked ("
               "position BIGINT, topic VARCHAR, error VARCHAR)")
    for name in (TRACKING_NAME, DERIVED_NAME):
        if not db.execute("SELECT count(*) FROM analytics_tracking WHERE name = ?",
                          [name]).fetchall()[0][0]:
            db.execute("INSERT INTO analytics_tracking VALUES (?, 0, ?)", [name, _utcnow()])
    db.execute("DELETE FROM dim_stage")
    if config.stages:
        db.executemany("INSERT INTO dim_stage VALUES (?, ?, ?, ?)", list(config.stages))
    db.execute("DELETE FROM sla_target")
    db.executemany("INSERT INTO sla_target VALUES (?, ?, ?)",
                   [(p, fr, rs) for p, (fr, rs) in sorted(config.sla_targets.items())])
    for ddl in schema.view_ddl():
        db.execute(ddl)
    for ddl in schema.comment_ddl():
        db.execute(ddl)
    db.execute("COMMIT")


def derive_all(db: duckdb.DuckDBPyConnection) -> None:
    """Recompute the keyed tables if batches left them behind the facts."""
    if tracked_position(db, DERIVED_NAME) >= tracked_position(db):
        return
    db.execute("BEGIN")
    try:
        for t in schema.TABLES:
            if t.kind == "keyed":
                db.execute(f"CREATE OR REPLACE TEMP TABLE touched AS "
                           f"{t.touched.replace('new_events', 'fact_events')}")
                db.execute(f"DELETE FROM {t.name}")
                db.execute(f"INSERT INTO {t.name} {t.select}")
        db.execute("UPDATE analytics_tracking SET position = (SELECT position FROM"
                   " analytics_tracking WHERE name = ?), updated_at = ? WHERE name = ?",
                   [TRACKING_NAME, _utcnow(), DERIVED_NAME])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def fetch_batch(conn: psycopg.Connection[Any], events_table: str, after: int, limit: int
                ) -> pa.Table | None:
    """Up to ``limit`` stored events after position ``after``, as one Arrow table."""
    if limit <= 0:
        return None
    with conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT notification_id, originator_id::text, originator_version, topic, state"
            f' FROM "{events_table}" WHERE notification_id > %s'
            " ORDER BY notification_id LIMIT %s",
            (after, limit),
        )
        rows = cur.fetchall()
    if not rows:
        return None
    cols = list(zip(*rows, strict=True))
    del rows
    state = pa.array(cols[4], pa.binary())
    try:
        text = state.cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8: replaced, and parked as not JSON
        text = pa.array([bytes(b).decode("utf-8", "replace") for b in cols[4]], pa.string())
    return pa.table({
        "position": pa.array(cols[0], pa.int64()),
        "aggregate_id": pa.array(cols[1], pa.string()),
        "aggregate_version": pa.array(cols[2], pa.int64()),
        "topic": pa.array(cols[3], pa.string()),
        "state": text,
    })


def _repaired(batch: pa.Table) -> pa.Table | None:
    """``batch`` with each document DuckDB cannot parse but Python can (a lone surrogate
    escaped in a text) written again with U+FFFD in its place; None if there is none."""
    states = batch.column("state").to_pylist()
    changed = False
    for i, text in enumerate(states):
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            cleaned = clean_json(text)
            if cleaned is not None:
                states[i] = cleaned
                changed = True
    if not changed:
        return None
    return batch.set_column(batch.schema.get_field_index("state"), "state", pa.array(states, pa.string()))


def park_event(db: duckdb.DuckDBPyConnection, position: int, topic: str, error: str) -> None:
    """Record an event the projection cannot apply and move past it, in one transaction
    (the keyed tables stay current: a parked event adds no facts)."""
    db.execute("BEGIN")
    try:
        current = tracked_position(db, DERIVED_NAME) >= tracked_position(db)
        db.execute("INSERT INTO analytics_parked VALUES (?, ?, ?)",
                   [position, clean_text(topic), clean_text(error[:2000])])
        names = [TRACKING_NAME, DERIVED_NAME] if current else [TRACKING_NAME]
        for name in names:
            db.execute("UPDATE analytics_tracking SET position = ?, updated_at = ? WHERE name = ?",
                       [position, _utcnow(), name])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def tracked_position(db: duckdb.DuckDBPyConnection, name: str = TRACKING_NAME) -> int:
    """The log position the database reflects (``derived``: its keyed tables)."""
    rows = db.execute("SELECT position FROM analytics_tracking WHERE name = ?",
                      [name]).fetchall()
    return int(rows[0][0]) if rows else 0


@lru_cache(maxsize=1)
def _aggregate_type_case() -> str:
    whens = " ".join(f"WHEN '{name}' THEN '{cls.aggregate_type}'"
                     for name, cls in sorted(all_event_types().items()))
    return f"CASE b.topic {whens} ELSE 'unknown' END"


def _hmac_pads(key: bytes) -> tuple[str, str]:
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return bytes(b ^ 0x5C for b in block).hex(), bytes(b ^ 0x36 for b in block).hex()


def apply_batch(db: duckdb.DuckDBPyConnection, batch: pa.Table,
                pseudonym_key: bytes, last: int,
                on_new_customers: Callable[[pa.Table], None] | None = None,
                *, derive: bool = True) -> int:
    """Apply one Arrow batch of stored events and move the position, in one transaction;
    the number of events parked (undecodable).

    ``derive=False`` (a catch-up with more batches to come) appends the facts but leaves
    the keyed tables behind (their position, ``derived``, stays); the next batch with
    ``derive=True`` recomputes them whole, in its transaction."""
    opad, ipad = _hmac_pads(pseudonym_key)
    stage = (_STAGE.replace("OPAD", opad).replace("IPAD", ipad)
             .replace("AGGREGATE_TYPE", _aggregate_type_case()))
    db.register("batch", batch)
    try:
        # Parsed into a temporary table outside the transaction: a failed parse must not
        # abort the transaction that writes the batch.
        bad = False
        try:
            db.execute(stage.replace("WHERE_CLAUSE", ""))
        except (duckdb.InvalidInputException, duckdb.ConversionException):
            repaired = _repaired(batch)
            if repaired is not None:
                # A lone surrogate escaped in a text: the documents written again.
                batch = repaired
                db.register("batch", batch)
            try:
                db.execute(stage.replace("WHERE_CLAUSE", ""))
            except (duckdb.InvalidInputException, duckdb.ConversionException):
                # Some stored state is not a JSON document: park those, apply the rest.
                bad = True
                db.execute(stage.replace("WHERE_CLAUSE", "WHERE json_valid(b.state)"))
        db.execute("BEGIN")
        parked = 0
        if bad:
            parked = db.execute("""
                INSERT INTO analytics_parked SELECT position, topic, 'not a JSON document'
                FROM batch WHERE NOT json_valid(state)""").fetchall()[0][0]
        db.execute("INSERT INTO fact_events SELECT * EXCLUDE (customer_id) FROM new_events")
        # Tables folding an entity's history are refreshed for the keys this batch
        # touched -- or, after batches that deferred it, recomputed whole.
        stale = derive and tracked_position(db, DERIVED_NAME) < tracked_position(db)
        for t in schema.TABLES:
            if t.kind == "append":
                db.execute(f"INSERT INTO {t.name} {t.select}")
                continue
            if not derive:
                continue
            source = "fact_events" if stale else "new_events"
            db.execute(f"CREATE OR REPLACE TEMP TABLE touched AS "
                       f"{t.touched.replace('new_events', source)}")
            if stale:
                db.execute(f"DELETE FROM {t.name}")
            elif db.execute("SELECT count(*) FROM touched").fetchall()[0][0] == 0:
                continue
            else:
                db.execute(f"DELETE FROM {t.name} WHERE {t.key} IN (SELECT k FROM touched)")
            db.execute(f"INSERT INTO {t.name} {t.select}")
        if derive:
            db.execute("UPDATE analytics_tracking SET position = ?, updated_at = ? WHERE name = ?",
                       [last, _utcnow(), DERIVED_NAME])
        if on_new_customers is not None:
            new = db.sql("""
                SELECT customer_key, customer_id FROM new_events
                WHERE event_type = 'CustomerRegistered'""").to_arrow_table()
            on_new_customers(new)
        db.execute("UPDATE analytics_tracking SET position = ?, updated_at = ? WHERE name = ?",
                   [last, _utcnow(), TRACKING_NAME])
        db.execute("COMMIT")
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    finally:
        for name in ("batch",):
            try:
                db.unregister(name)
            except duckdb.Error:
                pass
    return int(parked)
