"""Operating read models: run their runners, rebuild them blue/green, verify them.

``rebuild``
    Builds a new generation of a read model beside the live one while the live one
    keeps serving, switches the read views to it when it has caught up, and drops the
    old generation once no runner writes there any more.
``verify``
    Builds a scratch generation up to the live generation's position and compares the
    two row for row; returns the differences (none when the live tables are right).
``run_projections``
    Runs the runners of some read models in threads of this process until told to
    stop (`crm projections run`); each follows its read model to a new generation after
    a rebuild's switch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import dict_row

from events.codec import EventCodec
from projections.base import BatchResult, Projection, Row, Table
from projections.runner import BatchRunner
from projections.store import ProjectionStore

log = structlog.get_logger("crm.projections")

#: ``progress(position, head)``: called after every batch of a rebuild or verify.
Progress = Callable[[int, int], None]


def leadership_key(schema: str) -> str:
    """The text whose ``hashtext`` is a generation's advisory lock (see ``BatchRunner``)."""
    return "crm_projection:" + schema


class Busy(RuntimeError):
    """Another rebuild or verify of the same read model is under way."""


@contextmanager
def _exclusive(conninfo: str, projection: type[Projection]) -> Iterator[None]:
    """One rebuild or verify per read model at a time (held for the whole operation).

    Their generations would otherwise collide: ``ProjectionStore.new_generation`` does
    not count scratch generations when numbering, so a rebuild started during a verify
    would get (and drop) the verify's scratch schema.
    """
    key = "crm_projection_ops:" + projection.name
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        if row is None or not row[0]:
            raise Busy(f"another rebuild or verify of {projection.name} is under way")
        try:
            yield
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def run_projections(store: ProjectionStore, projections: Sequence[type[Projection]],
                    codec: EventCodec, conninfo: str, stop: threading.Event, *,
                    batch_size: int = 2000, poll_seconds: float = 1.0) -> bool:
    """Run these read models' runners (one thread each) until ``stop`` is set.

    Each runner leads its generation or waits as a standby until the leader's
    connection dies. Returns False if a runner thread died of an error (``stop`` is
    then set, so the others end too), True after a clean stop.
    """
    failed: list[str] = []
    threads: list[threading.Thread] = []

    def target(runner: BatchRunner, projection: type[Projection]) -> None:
        try:
            runner.run(stop, follow_active=runner.active_schema)
        except BaseException as e:  # noqa: BLE001 -- logged, and ends the process's runners
            log.error("projection runner failed", projection=projection.name,
                      error=f"{type(e).__name__}: {e}")
            failed.append(projection.name)
            stop.set()

    for p in projections:
        schema = store.ensure_active(p)
        runner = BatchRunner(p, schema, conninfo, codec, batch_size=batch_size,
                             poll_seconds=poll_seconds)
        t = threading.Thread(target=target, args=(runner, p), name=f"projection-{p.name}",
                             daemon=True)
        t.start()
        threads.append(t)
    log.info("projection runners started", projections=[p.name for p in projections])
    while not stop.is_set():
        stop.wait(0.5)
    for t in threads:
        t.join(30)
    log.info("projection runners stopped", projections=[p.name for p in projections])
    return not failed


# -- rebuild ------------------------------------------------------------------------
@dataclass(frozen=True)
class RebuildSummary:
    projection: str
    old_schema: str
    new_schema: str
    #: events read by the rebuild's runner (including those no handler wanted)
    events: int
    position: int
    seconds: float
    #: False if the old generation was left in place (a runner still held it)
    old_dropped: bool

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class RebuildError(RuntimeError):
    pass


def rebuild(store: ProjectionStore, projection: type[Projection], codec: EventCodec,
            conninfo: str, progress: Progress | None = None, *, batch_size: int = 2000,
            switch_lag: int = 500, lock_timeout: float = 60.0) -> RebuildSummary:
    """Rebuild ``projection`` blue/green while the live generation keeps serving.

    1. A new generation's runner catches up from 0, in rounds to the head as it was at
       the start of each round, until it is within ``switch_lag`` events of the head.
    2. It catches up to the head once more, and the read views are switched to it in
       one transaction. Events after that point are tracked in the new generation, so
       whoever applies them next (this runner, then the live runner that follows the
       switch) continues exactly where the rebuild stopped: nothing is lost.
    3. This runner keeps applying new events until the old generation's advisory lock
       can be taken (no runner writes there any more; the live runners moved to the
       new generation), then hands the new generation to the live runner and drops the
       old one. After ``lock_timeout`` seconds the old generation is left in place and
       the summary says so.

    A failure before the switch drops the new generation and re-raises. Raises ``Busy``
    if another rebuild or verify of the read model is under way.
    """
    with _exclusive(conninfo, projection):
        return _rebuild(store, projection, codec, conninfo, progress, batch_size=batch_size,
                        switch_lag=switch_lag, lock_timeout=lock_timeout)


def drop_leftovers(store: ProjectionStore, projection: type[Projection]) -> list[str]:
    """Drop the generations of ``projection`` that are neither active nor held by a
    runner: left by a rebuild or verify that died, or by a rebuild that timed out
    waiting for a runner to leave the old generation. Call it only while no rebuild or
    verify of the read model runs (``rebuild`` and ``verify`` do, under their lock)."""
    active = store.ensure_active(projection)
    with store.connect() as conn:
        schemas = [str(r["schema_name"]) for r in conn.execute(
            "SELECT schema_name FROM crm_projection_tracking"
            " WHERE projection IN (%s, %s) AND schema_name <> %s ORDER BY schema_name",
            (projection.name, projection.name + ":scratch", active),
        ).fetchall()]
        dropped = []
        for schema in schemas:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS ok",
                               (leadership_key(schema),)).fetchone()
            if row is None or not row["ok"]:
                continue  # a runner still works there
            try:
                store.drop_schema(schema)
                dropped.append(schema)
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (leadership_key(schema),))
    if dropped:
        log.info("dropped leftover projection schemas", projection=projection.name,
                 schemas=dropped)
    return dropped


def _rebuild(store: ProjectionStore, projection: type[Projection], codec: EventCodec,
             conninfo: str, progress: Progress | None, *, batch_size: int, switch_lag: int,
             lock_timeout: float) -> RebuildSummary:
    store.setup()
    drop_leftovers(store, projection)
    old = store.ensure_active(projection)
    new = store.new_generation(projection)
    runner = BatchRunner(projection, new, conninfo, codec, batch_size=batch_size)
    started = time.perf_counter()
    events = 0
    head = store.head()

    def on_batch(result: BatchResult) -> None:
        nonlocal events
        events += result.events
        if progress is not None:
            progress(result.position or 0, max(head, result.position or 0))

    switched = False
    try:
        if not runner.try_lead():
            raise RebuildError(f"another runner leads {new}")
        if progress is not None:
            progress(0, head)
        while True:
            position = runner.catch_up(stop_at=head, on_batch=on_batch)
            head = store.head()
            if head - position <= switch_lag:
                break
        head = store.head()
        position = runner.catch_up(on_batch=on_batch)
        store.switch(projection, new)
        switched = True
        log.info("projection switched", projection=projection.name, old=old, new=new,
                 position=position)
        dropped = _retire(store, old, runner, on_batch, lock_timeout)
        position = store.position(new)
    except BaseException:
        runner.close()
        if not switched:
            store.drop_schema(new)
        raise
    seconds = time.perf_counter() - started
    log.info("projection rebuilt", projection=projection.name, schema=new, events=events,
             seconds=round(seconds, 2), old_dropped=dropped)
    return RebuildSummary(projection.name, old, new, events, position, seconds, dropped)


def _retire(store: ProjectionStore, old: str, runner: BatchRunner,
            on_batch: Callable[[BatchResult], None], lock_timeout: float) -> bool:
    """Wait until no runner holds ``old``, keeping the new generation current meanwhile;
    then let the live runners have the new one and drop ``old``."""
    deadline = time.monotonic() + lock_timeout
    with psycopg.connect(store.conninfo, autocommit=True) as lock_conn:
        while True:
            row = lock_conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                    (leadership_key(old),)).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() >= deadline:
                runner.close()
                log.warning("old projection schema still held by a runner; not dropped",
                            schema=old, waited_seconds=lock_timeout)
                return False
            result = runner.run_batch()
            on_batch(result)
            if result.events == 0:
                time.sleep(0.05)
        # Nobody writes in the old generation now, and nobody will: every runner that
        # looks at the registry sees the new one. Hand the new generation over.
        runner.close()
        store.drop_schema(old)
        lock_conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (leadership_key(old),))
    return True


# -- verify -------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """One row that differs between the live tables and a fresh build."""

    table: str
    key: str
    #: "missing": only in the fresh build; "extra": only in the live tables;
    #: "changed": in both with other values
    kind: str
    columns: tuple[str, ...] = ()
    live: dict[str, str | None] | None = None
    rebuilt: dict[str, str | None] | None = None


@dataclass
class VerifyResult:
    schema: str
    position: int
    differences: list[Difference] = field(default_factory=list)


def _text_columns(table: Table) -> sql.Composed:
    """Every column cast to text (comparable whatever its type), named as itself."""
    return sql.SQL(", ").join(
        sql.SQL("{0}::text AS {0}").format(sql.Identifier(c)) for c in table.columns
    )


def _temp_name(table: Table) -> str:
    return f"verify_live_{table.name}"


def verify(store: ProjectionStore, projection: type[Projection], codec: EventCodec,
           conninfo: str, progress: Progress | None = None, *, batch_size: int = 2000,
           limit: int = 1000) -> list[Difference]:
    """The rows in which the live generation differs from a fresh build at the same
    position (at most ``limit`` per table and side); empty when they are equal."""
    return verify_detailed(store, projection, codec, conninfo, progress,
                           batch_size=batch_size, limit=limit).differences


def verify_detailed(store: ProjectionStore, projection: type[Projection], codec: EventCodec,
                    conninfo: str, progress: Progress | None = None, *,
                    batch_size: int = 2000, limit: int = 1000) -> VerifyResult:
    """``verify`` with the live schema and position it compared at."""
    with _exclusive(conninfo, projection):
        return _verify(store, projection, codec, conninfo, progress, batch_size=batch_size,
                       limit=limit)


def _verify(store: ProjectionStore, projection: type[Projection], codec: EventCodec,
            conninfo: str, progress: Progress | None, *, batch_size: int,
            limit: int) -> VerifyResult:
    store.setup()
    drop_leftovers(store, projection)
    with psycopg.connect(conninfo, autocommit=False, row_factory=dict_row) as conn:
        # One snapshot: the live rows and the position they were built to, copied
        # while the live runner keeps going.
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            reg = conn.execute(
                "SELECT r.active_schema, t.position FROM crm_projections r"
                " JOIN crm_projection_tracking t ON t.schema_name = r.active_schema"
                " WHERE r.name = %s",
                (projection.name,),
            ).fetchone()
            if reg is None:
                raise RuntimeError(f"{projection.name} has no active generation")
            live, position = str(reg["active_schema"]), int(reg["position"])
            for table in projection.tables:
                conn.execute(sql.SQL("CREATE TEMP TABLE {0} AS SELECT * FROM {1}.{2}").format(
                    sql.Identifier(_temp_name(table)), sql.Identifier(live),
                    sql.Identifier(table.name)))
        scratch = store.new_generation(projection, scratch=True)
        runner = BatchRunner(projection, scratch, conninfo, codec, batch_size=batch_size)
        try:
            if progress is not None:
                progress(0, position)
            runner.catch_up(
                stop_at=position,
                on_batch=None if progress is None
                else (lambda r: progress(r.position or 0, position)),
            )
            runner.close()
            result = VerifyResult(live, position)
            for table in projection.tables:
                result.differences += _compare(conn, table, sql.Identifier(_temp_name(table)),
                                               sql.SQL("{0}.{1}").format(
                                                   sql.Identifier(scratch),
                                                   sql.Identifier(table.name)),
                                               limit)
            conn.commit()
        finally:
            runner.close()
            store.drop_schema(scratch)
    return result


def _compare(conn: psycopg.Connection[dict[str, Any]], table: Table, live: sql.Composable,
             rebuilt: sql.Composable, limit: int) -> list[Difference]:
    cols = _text_columns(table)
    query = sql.SQL("SELECT * FROM (SELECT {0} FROM {1} EXCEPT SELECT {0} FROM {2}) d"
                    " ORDER BY {3} LIMIT %s")
    key = sql.Identifier(table.key)
    live_only = {r[table.key]: r for r in conn.execute(query.format(cols, live, rebuilt, key),
                                                        (limit,)).fetchall()}
    rebuilt_only = {r[table.key]: r for r in conn.execute(query.format(cols, rebuilt, live, key),
                                                           (limit,)).fetchall()}
    out: list[Difference] = []
    for k in sorted(set(live_only) | set(rebuilt_only), key=str):
        a, b = live_only.get(k), rebuilt_only.get(k)
        if a is not None and b is not None:
            changed = tuple(c for c in table.columns if a[c] != b[c])
            out.append(Difference(table.name, str(k), "changed", changed, _strs(a), _strs(b)))
        elif a is not None:
            out.append(Difference(table.name, str(k), "extra", (), _strs(a), None))
        else:
            assert b is not None
            out.append(Difference(table.name, str(k), "missing", (), None, _strs(b)))
    return out


def _strs(row: Row) -> dict[str, str | None]:
    return {k: (None if v is None else str(v)) for k, v in row.items()}


def describe(differences: Iterable[Difference]) -> list[str]:
    """One line per difference, for people."""
    lines = []
    for d in differences:
        if d.kind == "changed":
            assert d.live is not None and d.rebuilt is not None
            changes = "; ".join(f"{c}: live {d.live[c]!r} != rebuilt {d.rebuilt[c]!r}"
                                for c in d.columns)
            lines.append(f"{d.table} {d.key}: changed ({changes})")
        elif d.kind == "extra":
            lines.append(f"{d.table} {d.key}: only in the live table")
        else:
            lines.append(f"{d.table} {d.key}: missing from the live table")
    return lines
