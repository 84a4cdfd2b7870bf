"""The batch runner: follows the event log and applies it to one generation of a read
model, many events per transaction, each event exactly once.

One batch = read up to ``batch_size`` stored events after the tracked position (or as
many as arrive within ``max_batch_seconds``), decode them, prefetch the rows their
handlers need, apply them in memory, then write the changed rows, the parked events and
the new position in ONE transaction. A crash before the commit loses nothing (the batch
is read again); after it, nothing is applied twice (the position moved with the rows).

Writes go by binary COPY: rows new to the table straight into it, changed rows into a
temporary staging table merged with one ``INSERT … SELECT … ON CONFLICT``.

Catching up a long log, a second thread reads and decodes the next batches on its own
connection while the runner applies and writes the current one (the stored events
after the tracked position never change, so reading them ahead is safe; a batch read
ahead is used only if it starts exactly at the position the transaction locks).

A batch that fails with an error of its data (``projections.follow.classify``) is
applied again with its values cleaned (NUL and lone surrogates, which PostgreSQL cannot
hold, replaced by U+FFFD), and, if it still fails, split in halves until the event at
fault is isolated and parked; every other event of it is applied. An error of the
connection or the server is raised (nothing parked): ``run`` tries again after a pause
that doubles up to ``retry_max_seconds``. Nothing of this runs while batches succeed.

Leadership: a runner holds a session advisory lock on its generation's schema; a second
runner for the same schema waits, and takes over when the first one's connection dies.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import set_json_dumps, set_json_loads

from events.codec import EventCodec
from projections.follow import (MOMENT, Backoff, FollowerStats, LogFollower, Moment, apply_splitting, classify,
                                clean, clean_text)
from projections.memory import relaxed_gc
from projections.base import BatchResult, BatchView, ParkedEvent, Projection, Row, Table

log = structlog.get_logger("crm.projections")

_SELECT_AFTER = ("SELECT notification_id, originator_id, originator_version, topic, state"
                 ' FROM "{table}" WHERE notification_id > %s ORDER BY notification_id LIMIT %s')


def _json_dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


@dataclass
class _Decoded:
    """Stored events read after ``start``, decoded (those the projection handles)."""

    start: int
    count: int
    last: int
    events: list[tuple[int, Any]]
    parked: list[ParkedEvent] = field(default_factory=list)


class _StaleReadAhead(Moment):
    """The batch read ahead does not start at the tracked position."""


class _ReadAhead:
    """Reads and decodes the batches after ``position`` on its own thread and
    connection, a couple of batches ahead of the runner that applies them."""

    _END = object()

    def __init__(self, runner: BatchRunner, position: int, stop_at: int | None):
        self.runner = runner
        self.position = position
        self.stop_at = stop_at
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"read-ahead {runner.schema}",
                                       daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            with psycopg.connect(self.runner.conninfo, autocommit=True) as conn:
                position = self.position
                while not self.stopping.is_set():
                    limit = self.runner.catchup_batch_size
                    if self.stop_at is not None:
                        limit = min(limit, self.stop_at - position)
                    stored = self.runner._read(conn, position, limit) if limit > 0 else []
                    if not stored:
                        self._put(self._END)
                        return
                    batch = self.runner.decode(stored, start=position)
                    if not self._put(batch):
                        return
                    position = batch.last
        except BaseException as e:  # noqa: BLE001 -- handed to the runner's thread
            self._put(e)

    def next(self) -> _Decoded | None:
        """The next batch; None at the end of the log (or ``stop_at``)."""
        item = self.queue.get()
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, _Decoded)
        return item

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


#: the name the read models' callers know the frame's stats by
RunnerStats = FollowerStats


class BatchRunner(LogFollower):
    """Applies the event log to one schema (generation) of one projection (in the
    ``LogFollower`` frame)."""

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
        catchup_batch_size: int | None = None,
        cache_rows: int = 200_000,
        retry_max_seconds: float = 30.0,
    ):
        self.projection = projection
        self.name = f"projection {projection.name}"
        self._follow_active: Callable[[], str | None] | None = None
        self._schema = schema
        self.conninfo = conninfo
        self.codec = codec
        self.events_table = events_table
        self.batch_size = batch_size
        #: events per batch when catching up a long way (read ahead): larger batches
        #: write a busy customer's row once for several of its events
        self.catchup_batch_size = catchup_batch_size or 5 * batch_size
        self.max_batch_seconds = max_batch_seconds
        self.poll_seconds = poll_seconds
        #: pauses after an error of the connection or the server: poll_seconds, doubling
        self.backoff = Backoff(poll_seconds, retry_max_seconds)
        self.stats = RunnerStats()
        self._limit = batch_size  # shrinks when a batch takes longer than max_batch_seconds
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._topics = set(projection.topics())
        self._merges: dict[str, str] = {}
        self._copy_types: dict[str, list[int]] = {}
        self._stages: set[str] = set()
        #: Rows as committed, by table and key (None: known absent), kept across
        #: batches: the leader is the only writer of its schema. Dropped whenever
        #: that might not hold (a failed batch, a new connection or leadership, a switch).
        self.cache_rows = cache_rows
        self._cache: dict[str, dict[Any, Row | None]] = {
            t.name: {} for t in projection.tables if not t.append_only}
        #: the schema's erasure count when the cache was last trusted
        self._erasures: int | None = None
        #: while a failed batch is applied again: clean the rows it writes
        self._cleaning = False

    @property
    def schema(self) -> str:
        return self._schema

    @schema.setter
    def schema(self, schema: str) -> None:
        """Move to another generation: statements naming the old schema are forgotten."""
        self._schema = schema
        self._merges.clear()
        self._copy_types.clear()
        self._forget()

    # -- connection and leadership ---------------------------------------------
    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, row_factory=dict_row, autocommit=False)
            set_json_dumps(_json_dumps, self._conn)
            set_json_loads(orjson.loads, self._conn)
            self.stats.is_leader = False
            self._stages.clear()
            self._forget()
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
        self._forget()  # another leader may have written meanwhile
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
    def run_batch(self, *, stop_at: int | None = None, ahead: _Decoded | None = None) -> BatchResult:
        """Apply the next batch (if any); returns what it did. ``ahead``: the batch,
        already read and decoded (it must start at the tracked position)."""
        if not self.try_lead():
            raise Moment(f"another runner leads {self.schema}")
        conn = self.connect()
        started = time.perf_counter()
        result = BatchResult()
        batch: _Decoded | None = None
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT position, erasures FROM crm_projection_tracking"
                    " WHERE schema_name = %s FOR UPDATE",
                    (self.schema,),
                    prepare=True,
                ).fetchone()
                if row is None:
                    raise Moment(f"no tracking row for {self.schema}")
                position = int(row["position"])
                if row["erasures"] != self._erasures:
                    # An erasure changed rows behind this runner's back: what it holds in
                    # memory, or decoded ahead with a key since destroyed, is stale.
                    self._forget()
                    self._erasures = row["erasures"]
                    if ahead is not None:
                        raise _StaleReadAhead("an erasure cleaned the read model")
                if ahead is not None:
                    if ahead.start != position:
                        raise _StaleReadAhead(f"read from {ahead.start}, tracked at {position}")
                    batch = ahead
                else:
                    limit = self._limit
                    if stop_at is not None:
                        limit = max(0, min(limit, stop_at - position))
                    stored = self._read(conn, position, limit) if limit else []
                    if not stored:
                        result.position = position
                        return result
                    batch = self.decode(stored, start=position)
                view = self._apply(conn, batch, result)
                conn.execute(
                    "UPDATE crm_projection_tracking SET position = %s, updated_at = now()"
                    " WHERE schema_name = %s",
                    (batch.last, self.schema),
                    prepare=True,
                )
                result.position = batch.last
            self._remember(view)
        except BaseException as e:
            self._failed(conn)
            if batch is None or conn.closed or not isinstance(e, Exception) or classify(e) == MOMENT:
                raise
            # The batch's data: applied again, cleaned, and split down to the event at fault.
            log.warning("batch failed on its data; splitting it", projection=self.projection.name,
                        schema=self.schema, start=batch.start, last=batch.last,
                        error=clean_text(f"{type(e).__name__}: {e}"))
            result = self._split(conn, batch)
        elapsed = time.perf_counter() - started
        if ahead is None:
            if elapsed > self.max_batch_seconds and self._limit > 50:
                self._limit = max(50, self._limit // 2)
            elif elapsed < self.max_batch_seconds / 4 and self._limit < self.batch_size:
                self._limit = min(self.batch_size, self._limit * 2)
        self.note_batch(result.events, len(result.parked), result.position or 0, started)
        if result.parked:
            for p in result.parked:
                log.error("event parked", projection=self.projection.name, schema=self.schema,
                          position=p.position, event_type=p.event_type, error=p.error)
        return result

    def _failed(self, conn: psycopg.Connection[Any]) -> None:
        self._stages.clear()  # temporary tables made in the rolled-back transaction are gone
        self._forget()
        # A lost connection also loses leadership; the next batch re-checks.
        if conn.closed:
            self.stats.is_leader = False

    def _split(self, conn: psycopg.Connection[Any], batch: _Decoded) -> BatchResult:
        """Apply ``batch`` (which failed on its data) again with its values cleaned, in
        as few transactions as it allows: a part that still fails is halved, an event
        that fails alone is parked. Each part commits with its own position."""
        result = BatchResult(events=batch.count)
        events = batch.events
        index = {position: i for i, (position, _) in enumerate(events)}
        decode_parked = batch.parked
        state = {"at": batch.start}

        def last_of(i: int) -> int:
            # up to (not including) the next handled event: the positions in between are
            # events this projection does not handle or could not decode
            return int(events[i + 1][0]) - 1 if i + 1 < len(events) else batch.last

        def commit(part: list[tuple[int, Any]], parked: list[ParkedEvent]) -> None:
            start = state["at"]
            last = last_of(index[part[-1][0]])
            sub = _Decoded(start, 0, last, [] if parked else part,
                           [p for p in decode_parked if start < p.position <= last] + parked)
            sub_result = BatchResult()
            self._cleaning = True
            try:
                with conn.transaction():
                    row = conn.execute(
                        "SELECT position FROM crm_projection_tracking WHERE schema_name = %s FOR UPDATE",
                        (self.schema,), prepare=True).fetchone()
                    if row is None or int(row["position"]) != start:
                        raise Moment(f"{self.schema} moved while a batch was split")
                    view = self._apply(conn, sub, sub_result)
                    conn.execute(
                        "UPDATE crm_projection_tracking SET position = %s, updated_at = now()"
                        " WHERE schema_name = %s", (last, self.schema), prepare=True)
                self._remember(view)
            except BaseException:
                self._failed(conn)
                raise
            finally:
                self._cleaning = False
            state["at"] = last
            result.applied += sub_result.applied
            result.parked.extend(sub_result.parked)

        def park(item: tuple[int, Any], error: BaseException) -> None:
            position, event = item
            commit([item], [ParkedEvent(position, str(event.meta.event_id), event.type_name,
                                        str(event.originator_id), f"{type(error).__name__}: {error}")])

        if events:
            apply_splitting(events, lambda part: commit(list(part), []), park)
        if state["at"] < batch.last:  # no handled event (only undecodable ones)
            sub = _Decoded(state["at"], 0, batch.last, [], decode_parked)
            sub_result = BatchResult()
            with conn.transaction():
                self._apply(conn, sub, sub_result)
                conn.execute("UPDATE crm_projection_tracking SET position = %s, updated_at = now()"
                             " WHERE schema_name = %s", (batch.last, self.schema), prepare=True)
            result.parked.extend(sub_result.parked)
        result.parked.sort(key=lambda p: p.position)
        result.position = batch.last
        return result

    def decode(self, stored: list[tuple[Any, ...]], *, start: int) -> _Decoded:
        """Decode the stored events (tuples in ``_SELECT_AFTER``'s column order) this
        projection handles; one that cannot be decoded is parked."""
        topics = self._topics
        wanted = [r for r in stored if r[3] in topics]
        decoded = self.codec.decode_many([
            (r[1] if isinstance(r[1], UUID) else UUID(str(r[1])), r[2], r[3], r[4]) for r in wanted
        ])
        batch = _Decoded(start, len(stored), int(stored[-1][0]), [])
        for r, event in zip(wanted, decoded, strict=True):
            if isinstance(event, Exception):
                batch.parked.append(ParkedEvent(r[0], "", r[3], str(r[1]), f"cannot decode: {event}"))
            else:
                batch.events.append((r[0], event))
        return batch

    def _read(self, conn: psycopg.Connection[Any], position: int, limit: int) -> list[tuple[Any, ...]]:
        with conn.cursor(row_factory=tuple_row) as cur:
            rows: list[tuple[Any, ...]] = cur.execute(
                _SELECT_AFTER.format(table=self.events_table), (position, limit), prepare=True,
                binary=True,  # the stored state as raw bytes, not hex to decode
            ).fetchall()
        return rows

    def _apply(self, conn: psycopg.Connection[Any], batch: _Decoded, result: BatchResult) -> BatchView:
        result.events = batch.count
        result.parked.extend(batch.parked)
        view = BatchView(self.projection, lambda table, keys: self._load(conn, table, keys))
        wanted: dict[str, set[Any]] = {}
        for _, event in batch.events:
            for on in self.projection.handlers_for(event.type_name):
                for table, key in on.needs(event):
                    wanted.setdefault(table, set()).add(key)
        view.prefetch(wanted)
        for position, event in batch.events:
            view.begin_event()
            try:
                for on in self.projection.handlers_for(event.type_name):
                    on.handler(view, event)
                result.applied += 1
            except psycopg.Error:
                raise  # the transaction is lost: the batch is split (its data) or retried
            except Exception as e:  # noqa: BLE001 -- parked, logged and surfaced
                view.rollback_event()
                result.parked.append(ParkedEvent(position, str(event.meta.event_id), event.type_name,
                                                 str(event.originator_id), f"{type(e).__name__}: {e}"))
        if self._cleaning:
            _clean_view(view)
        self._flush(conn, view)
        if result.parked:
            result.parked.sort(key=lambda p: p.position)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO crm_parked_events (schema_name, projection, position, event_id,"
                    " event_type, aggregate_id, error) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(self.schema, self.projection.name, p.position, clean_text(p.event_id),
                      clean_text(p.event_type), clean_text(p.aggregate_id), clean_text(p.error[:2000]))
                     for p in result.parked],
                )
        return view

    def _load(self, conn: psycopg.Connection[Any], table: Table, keys: list[Any]) -> list[Row]:
        cache = self._cache.get(table.name)
        if cache is None:
            return self._select(conn, table, keys)
        out: list[Row] = []
        missing: list[Any] = []
        for k in keys:
            if k in cache:
                row = cache[k]
                if row is not None:
                    out.append(row)
            else:
                missing.append(k)
        if missing:
            loaded = self._select(conn, table, missing)
            out.extend(loaded)
            for row in loaded:
                cache[row[table.key]] = row
            for k in missing:
                cache.setdefault(k, None)
        return out

    def _select(self, conn: psycopg.Connection[Any], table: Table, keys: list[Any]) -> list[Row]:
        rows = conn.execute(
            f'SELECT * FROM "{self.schema}"."{table.name}" WHERE "{table.key}" = ANY(%s)',
            (keys,),
        ).fetchall()
        return list(rows)

    def _remember(self, view: BatchView) -> None:
        """After a commit: the rows the batch wrote are what the tables hold."""
        for name, cache in self._cache.items():
            rows = view.rows[name]
            for k in view.dirty[name]:
                cache.pop(k, None)  # re-inserted last: the oldest entries go first
                cache[k] = rows[k]
            excess = len(cache) - self.cache_rows
            if excess > 0:
                for k in list(itertools.islice(cache, excess + self.cache_rows // 4)):
                    del cache[k]

    def _forget(self) -> None:
        for cache in self._cache.values():
            cache.clear()

    def _flush(self, conn: psycopg.Connection[Any], view: BatchView) -> None:
        """Write the batch's changes: deletions, new rows by COPY into the table, changed
        rows by COPY into a staging table and one merge, appended rows by COPY."""
        with conn.cursor() as cur:
            for table in self.projection.tables:
                target = f'"{self.schema}"."{table.name}"'
                dirty = view.dirty[table.name]
                if dirty:
                    rows, absent = view.rows[table.name], view.absent[table.name]
                    gone = [k for k in dirty if rows[k] is None]
                    new: list[Row] = []
                    changed: list[Row] = []
                    for k in dirty:
                        r = rows[k]
                        if r is not None:
                            (new if k in absent else changed).append(r)
                    if gone:
                        cur.execute(f'DELETE FROM {target} WHERE "{table.key}" = ANY(%s)', (gone,))
                    if new:
                        self._copy(cur, table, target, new)
                    if changed:
                        stage = self._stage(cur, table, target)
                        self._copy(cur, table, f'"{stage}"', changed)
                        cur.execute(self._merge_sql(table, target, stage))
                appended = view.appended[table.name]
                if appended:
                    self._copy(cur, table, target, appended)

    def _copy(self, cur: psycopg.Cursor[Any], table: Table, into: str, rows: list[Row]) -> None:
        types = self._copy_types.get(table.name)
        if types is None:
            cur.execute(f'SELECT * FROM "{self.schema}"."{table.name}" LIMIT 0')
            by_name = {d.name: d.type_code for d in cur.description or ()}
            types = self._copy_types[table.name] = [by_name[c] for c in table.columns]
        columns = list(table.columns)
        quoted = ", ".join(f'"{c}"' for c in columns)
        with cur.copy(f"COPY {into} ({quoted}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for r in rows:
                copy.write_row([r.get(c) for c in columns])

    def _stage(self, cur: psycopg.Cursor[Any], table: Table, target: str) -> str:
        """This connection's staging table for ``table`` (emptied at every commit)."""
        stage = f"stage_{self.schema}_{table.name}"[:63]
        if stage not in self._stages:
            cur.execute(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{stage}"'
                        f" (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            self._stages.add(stage)
        return stage

    def _merge_sql(self, table: Table, target: str, stage: str) -> str:
        sql = self._merges.get(table.name)
        if sql is None:
            cols = ", ".join(f'"{c}"' for c in table.columns)
            sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in table.columns if c != table.key)
            sql = self._merges[table.name] = (
                f'INSERT INTO {target} ({cols}) SELECT {cols} FROM "{stage}"'
                f' ON CONFLICT ("{table.key}") DO UPDATE SET {sets}')
        return sql

    # -- loops ------------------------------------------------------------------
    def catch_up(self, *, stop_at: int | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None,
                 stop: threading.Event | None = None) -> int:
        """Apply batches until the log (or ``stop_at``) is reached; the position.

        After a full first batch (a long way to go), the following batches are read
        and decoded ahead, on a second thread, while each one is applied.
        """
        def done(result: BatchResult) -> bool:
            if on_batch is not None:
                on_batch(result)
            return (result.events == 0 or (stop_at is not None and (result.position or 0) >= stop_at)
                    or (stop is not None and stop.is_set()))

        while True:
            result = self.run_batch(stop_at=stop_at)
            if done(result):
                return result.position or 0
            if result.events < self._limit:
                continue
            with relaxed_gc():
                ahead = _ReadAhead(self, result.position or 0, stop_at)
                try:
                    while (batch := ahead.next()) is not None:
                        result = self.run_batch(stop_at=stop_at, ahead=batch)
                        if done(result):
                            return result.position or 0
                except _StaleReadAhead as e:
                    log.warning("read-ahead discarded", projection=self.projection.name, reason=str(e))
                    continue
                finally:
                    ahead.stop()
            return result.position or 0

    def run(self, stop: threading.Event, *, follow_active: Callable[[], str | None] | None = None) -> None:
        """Lead (or wait to lead), then follow the log until ``stop`` is set (the
        ``LogFollower`` loop). ``follow_active`` lets the runner move to a new generation
        after a blue/green switch."""
        self._follow_active = follow_active
        super().run(stop)

    def prepare(self) -> None:
        if self._follow_active is not None:
            active = self._follow_active()
            if active and active != self.schema:
                log.info("following the switch", projection=self.projection.name,
                         old=self.schema, new=active)
                self.close()
                self.schema = active

    def advance(self, stop: threading.Event) -> bool:
        result = self.run_batch()
        if result.events >= self._limit:
            self.catch_up(stop=stop)  # a long way behind: read ahead
            return True
        return False


def _clean_view(view: BatchView) -> None:
    """Replace what PostgreSQL cannot hold (``projections.follow.clean``) in every row the
    batch writes, in place, so that the rows kept in memory are the rows stored."""
    for name, keys in view.dirty.items():
        rows = view.rows[name]
        for k in keys:
            row = rows[k]
            if row is not None:
                rows[k] = clean(row)
    for appended in view.appended.values():
        appended[:] = [clean(r) for r in appended]
