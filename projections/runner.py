"""The batch runner: follows the event log and applies it to one generation of a read
model, many events per transaction, each event exactly once.

One batch = read up to ``batch_size`` stored events after the tracked position (or as
many as arrive within ``max_batch_seconds``), decode them, prefetch the rows their
handlers need, apply them in memory, then write the changed rows, the parked events and
the new position in ONE transaction. A crash before the commit loses nothing (the batch
is read again); after it, nothing is applied twice (the position moved with the rows).

Leadership: a runner holds a session advisory lock on its generation's schema; a second
runner for the same schema waits, and takes over when the first one's connection dies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from events.codec import EventCodec
from projections.base import BatchResult, BatchView, ParkedEvent, Projection, Row, Table

log = structlog.get_logger("crm.projections")


@dataclass
class RunnerStats:
    """Counters for /metrics and `crm projections status`."""

    batches: int = 0
    events: int = 0
    parked: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0
    position: int = 0
    is_leader: bool = False


class BatchRunner:
    """Applies the event log to one schema (generation) of one projection."""

    def __init__(
        self,
        projection: type[Projection],
        schema: str,
        conninfo: str,
        codec: EventCodec,
        *,
        events_table: str = "crm_events",
        batch_size: int = 2000,
        max_batch_seconds: float = 1.0,
        poll_seconds: float = 1.0,
    ):
        self.projection = projection
        self._schema = schema
        self.conninfo = conninfo
        self.codec = codec
        self.events_table = events_table
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.poll_seconds = poll_seconds
        self.stats = RunnerStats()
        self._limit = batch_size  # shrinks when a batch takes longer than max_batch_seconds
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._topics = set(projection.topics())
        self._upserts: dict[str, str] = {}
        self._inserts: dict[str, str] = {}
        self._jsonb: dict[str, set[str]] = {
            t.name: {c for c, typ in t.columns.items() if typ.lower().startswith("jsonb")}
            for t in projection.tables
        }

    @property
    def schema(self) -> str:
        return self._schema

    @schema.setter
    def schema(self, schema: str) -> None:
        """Move to another generation: statements naming the old schema are forgotten."""
        self._schema = schema
        self._upserts.clear()
        self._inserts.clear()

    # -- connection and leadership ---------------------------------------------
    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, row_factory=dict_row, autocommit=False)
            self.stats.is_leader = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        self.stats.is_leader = False

    def try_lead(self) -> bool:
        """Take this schema's leadership if free (held until the connection closes)."""
        if self.stats.is_leader:
            return True
        conn = self.connect()
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s)) AS ok", ("crm_projection:" + self.schema,)
        ).fetchone()
        conn.commit()
        self.stats.is_leader = bool(row and row["ok"])
        return self.stats.is_leader

    def active_schema(self) -> str | None:
        """The read model's live generation (it moves on a blue/green switch); read on
        the runner's own connection, as ``follow_active`` for ``run``."""
        conn = self.connect()
        row = conn.execute(
            "SELECT active_schema FROM crm_projections WHERE name = %s",
            (self.projection.name,),
            prepare=True,
        ).fetchone()
        conn.commit()
        return str(row["active_schema"]) if row else None

    def position(self) -> int:
        conn = self.connect()
        row = conn.execute(
            "SELECT position FROM crm_projection_tracking WHERE schema_name = %s", (self.schema,)
        ).fetchone()
        conn.commit()
        return int(row["position"]) if row else 0

    # -- one batch ---------------------------------------------------------------
    def run_batch(self, *, stop_at: int | None = None) -> BatchResult:
        """Apply the next batch (if any); returns what it did."""
        if not self.try_lead():
            raise RuntimeError(f"another runner leads {self.schema}")
        conn = self.connect()
        started = time.perf_counter()
        result = BatchResult()
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT position FROM crm_projection_tracking WHERE schema_name = %s FOR UPDATE",
                    (self.schema,),
                ).fetchone()
                if row is None:
                    raise RuntimeError(f"no tracking row for {self.schema}")
                position = int(row["position"])
                limit = self._limit
                if stop_at is not None:
                    limit = max(0, min(limit, stop_at - position))
                if limit == 0:
                    result.position = position
                    return result
                stored = conn.execute(
                    f'SELECT notification_id, originator_id, originator_version, topic, state'
                    f' FROM "{self.events_table}" WHERE notification_id > %s'
                    " ORDER BY notification_id LIMIT %s",
                    (position, limit),
                    prepare=True,
                ).fetchall()
                if not stored:
                    result.position = position
                    return result
                self._apply(conn, stored, result)
                last = int(stored[-1]["notification_id"])
                conn.execute(
                    "UPDATE crm_projection_tracking SET position = %s, updated_at = now()"
                    " WHERE schema_name = %s",
                    (last, self.schema),
                    prepare=True,
                )
                result.position = last
        except BaseException:
            # A lost connection also loses leadership; the next batch re-checks.
            if conn.closed:
                self.stats.is_leader = False
            raise
        elapsed = time.perf_counter() - started
        if elapsed > self.max_batch_seconds and self._limit > 50:
            self._limit = max(50, self._limit // 2)
        elif elapsed < self.max_batch_seconds / 4 and self._limit < self.batch_size:
            self._limit = min(self.batch_size, self._limit * 2)
        self.stats.batches += 1
        self.stats.events += result.events
        self.stats.parked += len(result.parked)
        self.stats.last_batch_size = result.events
        self.stats.last_batch_seconds = time.perf_counter() - started
        self.stats.position = result.position or self.stats.position
        if result.parked:
            for p in result.parked:
                log.error("event parked", projection=self.projection.name, schema=self.schema,
                          position=p.position, event_type=p.event_type, error=p.error)
        return result

    def _apply(self, conn: psycopg.Connection[Any], stored: list[dict[str, Any]], result: BatchResult) -> None:
        events: list[tuple[int, Any]] = []
        result.events = len(stored)
        wanted_rows = [row for row in stored if row["topic"] in self._topics]
        decoded = self.codec.decode_many([
            (r["originator_id"] if isinstance(r["originator_id"], UUID) else UUID(str(r["originator_id"])),
             r["originator_version"], r["topic"], bytes(r["state"]))
            for r in wanted_rows
        ])
        for row, event in zip(wanted_rows, decoded, strict=True):
            if isinstance(event, Exception):
                result.parked.append(ParkedEvent(row["notification_id"], "", row["topic"],
                                                 str(row["originator_id"]), f"cannot decode: {event}"))
                continue
            events.append((int(row["notification_id"]), event))

        view = BatchView(self.projection, lambda table, keys: self._load(conn, table, keys))
        wanted: dict[str, set[Any]] = {}
        for _, event in events:
            for on in self.projection.handlers_for(event.type_name):
                for table, key in on.needs(event):
                    wanted.setdefault(table, set()).add(key)
        view.prefetch(wanted)
        for position, event in events:
            view.begin_event()
            try:
                for on in self.projection.handlers_for(event.type_name):
                    on.handler(view, event)
                result.applied += 1
            except Exception as e:  # noqa: BLE001 -- parked, logged and surfaced
                view.rollback_event()
                result.parked.append(ParkedEvent(position, str(event.meta.event_id), event.type_name,
                                                 str(event.originator_id), f"{type(e).__name__}: {e}"))
        self._flush(conn, view)
        if result.parked:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO crm_parked_events (schema_name, projection, position, event_id,"
                    " event_type, aggregate_id, error) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(self.schema, self.projection.name, p.position, p.event_id, p.event_type,
                      p.aggregate_id, p.error[:2000]) for p in result.parked],
                )

    def _load(self, conn: psycopg.Connection[Any], table: Table, keys: list[Any]) -> list[Row]:
        rows = conn.execute(
            f'SELECT * FROM "{self.schema}"."{table.name}" WHERE "{table.key}" = ANY(%s)',
            (keys,),
        ).fetchall()
        return list(rows)

    def _flush(self, conn: psycopg.Connection[Any], view: BatchView) -> None:
        with conn.cursor() as cur:
            for table in self.projection.tables:
                dirty = view.dirty[table.name]
                if dirty:
                    live = [r for k in dirty if (r := view.rows[table.name][k]) is not None]
                    gone = [k for k in dirty if view.rows[table.name][k] is None]
                    if gone:
                        cur.execute(
                            f'DELETE FROM "{self.schema}"."{table.name}" WHERE "{table.key}" = ANY(%s)',
                            (gone,),
                        )
                    if live:
                        cur.executemany(self._upsert_sql(table), [self._params(table, r) for r in live])
                appended = view.appended[table.name]
                if appended:
                    cur.executemany(self._insert_sql(table), [self._params(table, r) for r in appended])

    def _params(self, table: Table, row: Row) -> list[Any]:
        jsonb = self._jsonb[table.name]
        return [Jsonb(row.get(c)) if c in jsonb and row.get(c) is not None else row.get(c)
                for c in table.columns]

    def _insert_sql(self, table: Table) -> str:
        sql = self._inserts.get(table.name)
        if sql is None:
            cols = ", ".join(f'"{c}"' for c in table.columns)
            marks = ", ".join(["%s"] * len(table.columns))
            sql = f'INSERT INTO "{self.schema}"."{table.name}" ({cols}) VALUES ({marks})'
            self._inserts[table.name] = sql
        return sql

    def _upsert_sql(self, table: Table) -> str:
        sql = self._upserts.get(table.name)
        if sql is None:
            sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in table.columns if c != table.key)
            sql = self._insert_sql(table) + f' ON CONFLICT ("{table.key}") DO UPDATE SET {sets}'
            self._upserts[table.name] = sql
        return sql

    # -- loops ------------------------------------------------------------------
    def catch_up(self, *, stop_at: int | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None) -> int:
        """Apply batches until the log (or ``stop_at``) is reached; the position."""
        while True:
            result = self.run_batch(stop_at=stop_at)
            if on_batch is not None:
                on_batch(result)
            if result.events == 0 or (stop_at is not None and (result.position or 0) >= stop_at):
                return result.position or 0

    def run(self, stop: threading.Event, *, follow_active: Callable[[], str | None] | None = None) -> None:
        """Lead (or wait to lead), then follow the log until ``stop`` is set.

        Woken by LISTEN/NOTIFY on the events table's channel, and polls every
        ``poll_seconds`` in case a notification is missed. ``follow_active`` lets the
        runner move to a new generation after a blue/green switch.
        """
        listener: psycopg.Connection[Any] | None = None
        try:
            while not stop.is_set():
                try:
                    if follow_active is not None:
                        active = follow_active()
                        if active and active != self.schema:
                            log.info("following the switch", projection=self.projection.name,
                                     old=self.schema, new=active)
                            self.close()
                            self.schema = active
                    if not self.try_lead():
                        stop.wait(self.poll_seconds)
                        continue
                    if listener is None or listener.closed:
                        listener = psycopg.connect(self.conninfo, autocommit=True)
                        listener.execute(f'LISTEN "{self.events_table}"')
                    result = self.run_batch()
                    if result.events >= self._limit:
                        continue  # more waiting: no need to sleep
                    deadline = time.monotonic() + self.poll_seconds
                    while not stop.is_set() and time.monotonic() < deadline:
                        if any(True for _ in listener.notifies(timeout=0.1, stop_after=1)):
                            break
                except Exception as e:  # noqa: BLE001 -- logged; the runner must not die
                    log.exception("projection runner failed; retrying",
                                  projection=self.projection.name, schema=self.schema, error=str(e))
                    self.close()
                    if listener is not None:
                        listener.close()
                        listener = None
                    stop.wait(self.poll_seconds)
        finally:
            if listener is not None:
                listener.close()
            self.close()
