"""Where read models live: one schema per build (generation), views in ``crm_read``.

The UI and the read API query ``crm_read.<table>``, views over the active generation's
tables. A rebuild fills a new generation beside the live one and then replaces the
views in one transaction: the switch is atomic and readers never see a half-built
table. Tracking positions and parked events are kept per generation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from projections.base import Projection
from projections.follow import recorded_at

READ_SCHEMA = "crm_read"
_SAFE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

SETUP = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f'CREATE SCHEMA IF NOT EXISTS "{READ_SCHEMA}"',
    "CREATE TABLE IF NOT EXISTS crm_projections ("
    " name text PRIMARY KEY,"
    " version int NOT NULL,"
    " active_schema text NOT NULL,"
    " generation int NOT NULL,"
    " switched_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS crm_projection_tracking ("
    " schema_name text PRIMARY KEY,"
    " projection text NOT NULL,"
    " version int NOT NULL,"
    " position bigint NOT NULL DEFAULT 0,"
    " updated_at timestamptz NOT NULL DEFAULT now())",
    # Bumped by each erasure that cleaned the schema's rows: its runner forgets the rows
    # it keeps in memory (and any batch decoded ahead) before its next batch. Added only
    # when missing: ALTER TABLE would wait for (and then block) every runner's batch.
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = 'crm_projection_tracking'"
    " AND column_name = 'erasures') THEN"
    " ALTER TABLE crm_projection_tracking ADD COLUMN erasures bigint NOT NULL DEFAULT 0;"
    " END IF; END $$",
    "CREATE TABLE IF NOT EXISTS crm_parked_events ("
    " id bigserial PRIMARY KEY,"
    " schema_name text NOT NULL,"
    " projection text NOT NULL,"
    " position bigint NOT NULL,"
    " event_id text NOT NULL,"
    " event_type text NOT NULL,"
    " aggregate_id text NOT NULL,"
    " error text NOT NULL,"
    " parked_at timestamptz NOT NULL DEFAULT now())",
]


@dataclass(frozen=True)
class Status:
    name: str
    version: int
    schema: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    parked: int
    updated_at: datetime | None


def schema_name(projection: type[Projection], generation: int) -> str:
    name = f"rm_{projection.name}_v{projection.version}_g{generation}"
    if not _SAFE.match(name):
        raise ValueError(f"bad projection name {projection.name!r}")
    return name


class ProjectionStore:
    """Registry, tracking and parked-event tables, and the generation schemas."""

    def __init__(self, conninfo: str, *, events_table: str = "crm_events"):
        self.conninfo = conninfo
        self.events_table = events_table

    @contextmanager
    def connect(self, *, autocommit: bool = True) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with psycopg.connect(self.conninfo, autocommit=autocommit, row_factory=dict_row) as conn:
            yield conn

    def setup(self) -> None:
        with self.connect() as conn:
            # Serialise concurrent set-ups (several processes starting at once).
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_projection_setup'))")
                for statement in SETUP:
                    conn.execute(statement)

    # -- generations -----------------------------------------------------------
    def active_schema(self, projection: type[Projection]) -> str | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT active_schema FROM crm_projections WHERE name = %s", (projection.name,)
            ).fetchone()
        return row["active_schema"] if row else None

    def ensure_active(self, projection: type[Projection]) -> str:
        """The live generation's schema, creating the first one if there is none."""
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_projection_setup'))")
            row = conn.execute(
                "SELECT active_schema FROM crm_projections WHERE name = %s FOR UPDATE",
                (projection.name,),
            ).fetchone()
            if row is not None:
                return str(row["active_schema"])
            schema = self._create_generation(conn, projection, 1)
            conn.execute(
                "INSERT INTO crm_projections (name, version, active_schema, generation)"
                " VALUES (%s, %s, %s, 1)",
                (projection.name, projection.version, schema),
            )
            self._point_views(conn, projection, schema)
            return schema

    def new_generation(self, projection: type[Projection], *, scratch: bool = False) -> str:
        """Fresh, empty tables for a rebuild (or a scratch copy for verify)."""
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_projection_setup'))")
            row = conn.execute(
                "SELECT max(generation) AS g FROM crm_projections WHERE name = %s", (projection.name,)
            ).fetchone()
            used = conn.execute(
                "SELECT schema_name FROM crm_projection_tracking"
                " WHERE projection = %s OR projection = %s",
                (projection.name, projection.name + ":scratch"),
            ).fetchall()
            generation = max([(row or {}).get("g") or 0]
                             + [int(r["schema_name"].rsplit("_g", 1)[1]) for r in used if "_g" in r["schema_name"]]) + 1
            schema = self._create_generation(conn, projection, generation)
            if scratch:
                conn.execute(
                    "UPDATE crm_projection_tracking SET projection = %s WHERE schema_name = %s",
                    (projection.name + ":scratch", schema),
                )
            return schema

    def _create_generation(self, conn: psycopg.Connection[Any], projection: type[Projection], generation: int) -> str:
        schema = schema_name(projection, generation)
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for table in projection.tables:
            for statement in table.create_statements(schema):
                conn.execute(statement)
        conn.execute(
            "INSERT INTO crm_projection_tracking (schema_name, projection, version, position)"
            " VALUES (%s, %s, %s, 0) ON CONFLICT (schema_name) DO UPDATE SET position = 0",
            (schema, projection.name, projection.version),
        )
        return schema

    def switch(self, projection: type[Projection], schema: str, *, attempts: int = 40) -> str:
        """Point the read views at ``schema`` (atomically); the old schema's name.

        All the projection's views are locked first, in one statement that gives up
        after a short wait (and is retried): the switch never holds one view while
        waiting for another, so a reader joining them cannot deadlock with it.
        """
        for attempt in range(attempts):
            try:
                with self.connect() as conn, conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '250ms'")
                    views = [r["name"] for r in conn.execute(
                        "SELECT format('%%I.%%I', table_schema, table_name) AS name"
                        " FROM information_schema.views WHERE table_schema = %s"
                        " AND table_name = ANY(%s) ORDER BY table_name",
                        (READ_SCHEMA, [t.name for t in projection.tables]),
                    ).fetchall()]
                    if views:
                        conn.execute(f"LOCK TABLE {', '.join(views)} IN ACCESS EXCLUSIVE MODE")
                    row = conn.execute(
                        "SELECT active_schema FROM crm_projections WHERE name = %s FOR UPDATE",
                        (projection.name,),
                    ).fetchone()
                    old = row["active_schema"] if row else ""
                    generation = int(schema.rsplit("_g", 1)[1])
                    conn.execute(
                        "INSERT INTO crm_projections (name, version, active_schema, generation)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
                        " version = EXCLUDED.version, active_schema = EXCLUDED.active_schema,"
                        " generation = EXCLUDED.generation, switched_at = now()",
                        (projection.name, projection.version, schema, generation),
                    )
                    self._point_views(conn, projection, schema)
                    return str(old)
            except psycopg.errors.LockNotAvailable:
                if attempt == attempts - 1:
                    raise
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        raise AssertionError("unreachable")

    def _point_views(self, conn: psycopg.Connection[Any], projection: type[Projection], schema: str) -> None:
        for table in projection.tables:
            conn.execute(f'DROP VIEW IF EXISTS "{READ_SCHEMA}"."{table.name}"')
            conn.execute(
                f'CREATE VIEW "{READ_SCHEMA}"."{table.name}" AS SELECT * FROM "{schema}"."{table.name}"'
            )

    def drop_schema(self, schema: str) -> None:
        with self.connect() as conn, conn.transaction():
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute("DELETE FROM crm_projection_tracking WHERE schema_name = %s", (schema,))
            conn.execute("DELETE FROM crm_parked_events WHERE schema_name = %s", (schema,))

    # -- positions -------------------------------------------------------------
    def position(self, schema: str) -> int:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT position FROM crm_projection_tracking WHERE schema_name = %s", (schema,)
            ).fetchone()
        return int(row["position"]) if row else 0

    def head(self) -> int:
        with self.connect() as conn:
            row = conn.execute(f'SELECT max(notification_id) AS m FROM "{self.events_table}"').fetchone()
        return int(row["m"] or 0) if row else 0

    def status(self, projections: list[type[Projection]],
               conn: psycopg.Connection[Any] | None = None) -> list[Status]:
        """Position, lag and parked events of each read model (on ``conn`` if given,
        e.g. a pooled connection, else on a new one)."""
        if conn is None:
            with self.connect() as own:
                return self.status(projections, own)
        out = []
        head_row = conn.execute(f'SELECT max(notification_id) AS m FROM "{self.events_table}"').fetchone()
        head = int((head_row or {}).get("m") or 0)
        for p in projections:
            reg = conn.execute(
                "SELECT r.active_schema, t.position, t.updated_at,"
                " (SELECT count(*) FROM crm_parked_events e WHERE e.schema_name = r.active_schema) AS parked"
                " FROM crm_projections r JOIN crm_projection_tracking t ON t.schema_name = r.active_schema"
                " WHERE r.name = %s",
                (p.name,),
            ).fetchone()
            if reg is None:
                out.append(Status(p.name, p.version, "", 0, head, head, 0.0, 0, None))
                continue
            position = int(reg["position"])
            lag_seconds = 0.0
            if position < head:
                lag_seconds = self._lag_seconds(conn, position)
            out.append(Status(p.name, p.version, reg["active_schema"], position, head,
                              head - position, lag_seconds, int(reg["parked"]), reg["updated_at"]))
        return out

    def _lag_seconds(self, conn: psycopg.Connection[Any], position: int) -> float:
        """How long the oldest unapplied event has been waiting (by its recording time)."""
        return lag_seconds(conn, self.events_table, position)

    def parked(self, schema: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return list(conn.execute(
                "SELECT position, event_id, event_type, aggregate_id, error, parked_at"
                " FROM crm_parked_events WHERE schema_name = %s ORDER BY position LIMIT %s",
                (schema, limit),
            ).fetchall())


def lag_seconds(conn: psycopg.Connection[Any], events_table: str, position: int) -> float:
    """How long the first event after ``position`` has waited since it was recorded (0
    if there is none). Its document is read here, not by PostgreSQL, whose jsonb refuses
    some documents the log may hold (a NUL or a lone surrogate escaped in a text)."""
    row = conn.execute(
        f'SELECT state, now() AS now FROM "{events_table}"'
        " WHERE notification_id > %s ORDER BY notification_id LIMIT 1",
        (position,),
    ).fetchone()
    if row is None:
        return 0.0
    state, now = (row["state"], row["now"]) if isinstance(row, dict) else row
    at = recorded_at(state)
    if at is None:
        return 0.0
    waited: float = (now - at).total_seconds()
    return max(0.0, waited)
