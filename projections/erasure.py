"""Erasing one customer's personal data from the PostgreSQL tables built from the log.

Called once the customer's key is destroyed (and no process can still hold it): every
event decoded from then on has the personal fields empty, so what is left to clean are
the copies already written: the read models' rows (every generation, each table's
``personal`` columns reset to their defaults, under the schema's tracking lock so no
batch of its runner interleaves, and the runner told to forget the rows it holds in
memory), the automation's notifications and survey links, parked events' error texts,
the analytics pseudonym's link to the customer, the e-mail reservations, the
fingerprints of earlier requests' Idempotency-Keys, and the record snapshots.

Each step says what it did (table, action, rows); all are safe to run again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg import sql

from projections.base import Projection, Table

log = structlog.get_logger("crm.erasure")

#: Each erasure's receipt (the first answer, for a repeat with the same Idempotency-Key).
ERASURES_TABLE = "crm_erasures"
ERASURES_DDL = (f"CREATE TABLE IF NOT EXISTS {ERASURES_TABLE} (customer_id uuid PRIMARY KEY,"
                " position bigint, requested_by text NOT NULL, requested_role text NOT NULL,"
                " requested_at timestamptz NOT NULL, completed_at timestamptz, receipt jsonb)")
#: Written where a text held personal data and the row itself must stay.
ERASED_TEXT = "(erased: the customer's personal data)"
#: An Idempotency-Key's request fingerprint (a digest of the request, personal data
#: included) after its customer's erasure: a repeat gets the first answer unchecked.
ERASED_FINGERPRINT = "erased"  # the same as commands.application.ERASED_FINGERPRINT


@dataclass
class Cleaned:
    """What one step did to one table."""

    store: str
    table: str
    action: str
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "table": self.table, "action": self.action, "rows": self.rows}


def customer_records(conn: psycopg.Connection[Any], customer_id: UUID, events_table: str = "crm_events",
                     ) -> list[UUID]:
    """The customer's own record and every record with an event about the customer."""
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT e.originator_id FROM crm_event_chain c"
                " JOIN {} e ON e.notification_id = c.notification_id WHERE c.subject_id = %s")
        .format(sql.Identifier(events_table)), (customer_id,)).fetchall()
    return sorted({customer_id, *(r[0] for r in rows)})


def _empty(column_type: str) -> sql.Composable:
    """The value a personal column takes once erased: its default, else NULL."""
    base, _, default = column_type.partition(" DEFAULT ")
    if not default:
        return sql.SQL("NULL")
    return sql.SQL("{}::{}").format(sql.SQL(default.strip()), sql.SQL(base.split()[0]))


def _table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()
    return bool(row and row[0])


def erase_table_rows(conn: psycopg.Connection[Any], schema: str, table: Table, customer_id: UUID) -> int:
    """Reset the personal columns of the customer's rows of one read table; rows changed."""
    if table.subject is None or not table.personal or not _table_exists(conn, schema, table.name):
        return 0
    sets: list[sql.Composable] = [sql.SQL("{} = {}").format(sql.Identifier(c), _empty(table.columns[c])) for c in table.personal]
    differs: list[sql.Composable] = [sql.SQL("{} IS DISTINCT FROM {}").format(sql.Identifier(c), _empty(table.columns[c]))
               for c in table.personal]
    if "personal_data_erased" in table.columns:
        sets.append(sql.SQL("personal_data_erased = true"))
        differs.append(sql.SQL("NOT personal_data_erased"))
    cur = conn.execute(
        sql.SQL("UPDATE {}.{} SET {} WHERE {} = %s AND ({})").format(
            sql.Identifier(schema), sql.Identifier(table.name), sql.SQL(", ").join(sets),
            sql.Identifier(table.subject), sql.SQL(" OR ").join(differs)),
        (customer_id,))
    return cur.rowcount


def erase_read_models(conninfo: str, projections: Iterable[type[Projection]],
                      customer_id: UUID) -> list[Cleaned]:
    """Every generation of every read model: the customer's rows anonymised."""
    out: list[Cleaned] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for projection in projections:
            if not any(t.personal and t.subject for t in projection.tables):
                continue
            schemas = [r[0] for r in conn.execute(
                "SELECT schema_name FROM crm_projection_tracking WHERE projection = %s ORDER BY 1",
                (projection.name,)).fetchall()] if _table_exists(conn, "public", "crm_projection_tracking") else []
            for schema in schemas:
                with conn.transaction():
                    # The runner takes this row's lock for each batch: no batch interleaves.
                    conn.execute("SELECT 1 FROM crm_projection_tracking WHERE schema_name = %s FOR UPDATE",
                                 (schema,))
                    for table in projection.tables:
                        if table.personal and table.subject:
                            rows = erase_table_rows(conn, schema, table, customer_id)
                            out.append(Cleaned("postgresql", f"{schema}.{table.name}", "anonymised", rows))
                    conn.execute("UPDATE crm_projection_tracking SET erasures = erasures + 1"
                                 " WHERE schema_name = %s", (schema,))
    return out


def _run(conn: psycopg.Connection[Any], store_table: str, action: str, statement: str,
         params: tuple[Any, ...]) -> Cleaned | None:
    """One statement on a table that may not exist (a feature not set up yet)."""
    if not _table_exists(conn, "public", store_table):
        return None
    return Cleaned("postgresql", store_table, action, conn.execute(statement, params).rowcount)


def erase_other_tables(conninfo: str, customer_id: UUID, *, erasure_version: int | None = None,
                       ) -> list[Cleaned]:
    """The tables beside the read models that can hold copies of the customer's data.
    ``erasure_version``: the customer's version the erasure was recorded at; the erasure's
    own Idempotency-Key record keeps its fingerprint (it holds no personal data), so a
    different request with that key is still refused."""
    out: list[Cleaned] = []
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        records = customer_records(conn, customer_id)
        positions = [r[0] for r in conn.execute(
            "SELECT notification_id FROM crm_event_chain WHERE subject_id = %s", (customer_id,)).fetchall()]
        ids = [str(r) for r in records]
        steps: list[tuple[str, str, str, tuple[Any, ...]]] = [
            ("crm_automation_notifications", "message replaced",
             "UPDATE crm_automation_notifications SET message = %s"
             " WHERE related_id = ANY(%s) AND message <> %s", (ERASED_TEXT, records, ERASED_TEXT)),
            ("crm_automation_surveys", "deleted",
             "DELETE FROM crm_automation_surveys WHERE request_id = ANY(%s)", (records,)),
            ("crm_automation_timers", "outcome replaced",
             "UPDATE crm_automation_timers SET outcome = %s WHERE outcome IS NOT NULL AND outcome <> %s"
             " AND (payload->>'task_id' = ANY(%s) OR payload->>'request_id' = ANY(%s))",
             (ERASED_TEXT, ERASED_TEXT, ids, ids)),
            ("crm_automation_parked", "error replaced",
             "UPDATE crm_automation_parked SET error = %s WHERE position = ANY(%s) AND error <> %s",
             (ERASED_TEXT, positions, ERASED_TEXT)),
            ("crm_parked_events", "error replaced",
             "UPDATE crm_parked_events SET error = %s WHERE aggregate_id = ANY(%s) AND error <> %s",
             (ERASED_TEXT, ids, ERASED_TEXT)),
            ("crm_kafka_parked", "error replaced",
             "UPDATE crm_kafka_parked SET error = %s WHERE aggregate_id = ANY(%s) AND error <> %s",
             (ERASED_TEXT, ids, ERASED_TEXT)),
            ("crm_analytics_customers", "pseudonym link deleted",
             "DELETE FROM crm_analytics_customers WHERE customer_id = %s", (customer_id,)),
            ("crm_email_reservations", "deleted",
             "DELETE FROM crm_email_reservations WHERE customer_id = %s", (customer_id,)),
            ("crm_idempotency", "request fingerprint erased",
             "UPDATE crm_idempotency SET fingerprint = %s WHERE body->>'id' = ANY(%s) AND fingerprint <> %s"
             " AND NOT (body->>'id' = %s AND (body->>'version')::int >= %s)",
             (ERASED_FINGERPRINT, ids, ERASED_FINGERPRINT, str(customer_id),
              erasure_version if erasure_version is not None else 2**31 - 1)),
            ("crm_snapshots", "deleted",
             "DELETE FROM crm_snapshots WHERE subject_id = %s OR aggregate_id = ANY(%s)",
             (customer_id, records)),
        ]
        for table, action, statement, params in steps:
            done = _run(conn, table, action, statement, params)
            if done is not None:
                out.append(done)
    return out


def wait_out_older_snapshots(conn: psycopg.Connection[Any], timeout: float = 30.0) -> bool:
    """Wait until no other session of this database holds a snapshot taken before now
    (one that may still see the old row versions: VACUUM keeps those, even FULL); True
    when none is left, False when ``timeout`` ran out first."""
    row = conn.execute("SELECT xid(pg_current_xact_id())::text").fetchone()
    assert row is not None
    cutoff = row[0]
    deadline = time.monotonic() + timeout
    while True:
        older = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL"
            " AND age(backend_xmin) > age(%s::xid)", (cutoff,)).fetchone()
        if older is None or older[0] == 0:
            return True
        if time.monotonic() >= deadline:
            log.warning("erasure vacuum: sessions with older snapshots still open", sessions=older[0])
            return False
        time.sleep(0.05)


def vacuum(conninfo: str, tables: Iterable[str], *, full: bool = False) -> list[str]:
    """VACUUM the tables an erasure changed: the old row versions (dead tuples) holding
    the personal data leave the tables and their indexes. ``full`` rewrites each table
    into a new file (the old bytes go with the old file) but locks it while it does."""
    done = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        wait_out_older_snapshots(conn)
        for name in sorted(set(tables)):
            schema, _, table = name.rpartition(".")
            conn.execute(sql.SQL("VACUUM ({} ANALYZE) {}.{}").format(
                sql.SQL("FULL," if full else ""), sql.Identifier(schema or "public"), sql.Identifier(table)))
            done.append(name)
    return done


def refresh_statistics(conninfo: str, tables: Iterable[str], *, full: bool = False,
                       values: Iterable[str] = ()) -> list[str]:
    """ANALYZE the tables (their planner statistics keep sample values, the customer's
    among them), and any table whose statistics still show one of ``values`` (an
    autovacuum ANALYZE may have sampled before the cleaning committed), then vacuum
    pg_statistic, where the replaced statistics' old versions stay otherwise (a database
    owner may; others get a warning, and it is skipped)."""
    tables = set(tables)
    patterns = [f"%{v.lower()}%" for v in values]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if patterns:
            tables |= {f"{r[0]}.{r[1]}" for r in conn.execute(
                "SELECT DISTINCT schemaname, tablename FROM pg_stats"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                " AND (lower(most_common_vals::text) LIKE ANY(%s)"
                "  OR lower(histogram_bounds::text) LIKE ANY(%s))", (patterns, patterns)).fetchall()}
        for name in sorted(tables):
            schema, _, table = name.rpartition(".")
            conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema or "public"),
                                                         sql.Identifier(table)))
        conn.execute(sql.SQL("VACUUM ({}) pg_catalog.pg_statistic").format(
            sql.SQL("FULL" if full else "ANALYZE")))
    return [*sorted(set(tables)), "pg_catalog.pg_statistic"]
