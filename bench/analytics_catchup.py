"""Analytics: how fast the DuckDB projection catches up with the event log, beside the
PostgreSQL read projection on the same events, and how long each KPI query takes on a
database of 10,000,000 events.

``catch-up``
    ``projection_catchup.generate`` streams a realistic generated log (customers,
    opportunities moving and closing, interactions, purchases; personal data sealed)
    into ``crm_events``. Then, on that same log in the same run: the analytics
    projection (``AnalyticsProjection.catch_up`` into a new DuckDB file, batches of
    100,000) and the customer list read model (``BatchRunner`` on a fresh PostgreSQL
    generation, as ``projection_catchup``'s "ours"). Each is timed from position 0 to
    the head.
``kpis``
    Writing 10,000,000 events through the log and the projection would take most of an
    hour on the shared 2-core machine, so the star's tables are generated directly in
    DuckDB (SQL over ``range``), shaped like a CRM with 1,000,000 customers: fact_events
    with the given number of rows, and the derived tables in the proportions the
    generated log has (1 opportunity and 1 purchase per 10 events, 3 interactions, ...).
    Every KPI view is then queried through the analysts' path (``sandbox.run_query``:
    read-only transaction, Arrow result): one warm-up, then ``reps`` timed runs; the
    median is reported.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from bench.projection_catchup import generate, run_ours
from bench.write_throughput import environment, log, throwaway_database
from commands import PIPELINES
from commands.application import CrmApplication
from crm.bootstrap import postgres_env
from analytics import sandbox, schema
from analytics.store import AnalyticsConfig, AnalyticsProjection, open_database
from projections.customers import CustomerList
from projections.store import ProjectionStore

STAGES = tuple((p.name, s.name, i, s.probability)
               for p in PIPELINES.values() for i, s in enumerate(p.stages))


@dataclass(frozen=True)
class Settings:
    events: int = 1_000_000
    kpi_events: int = 10_000_000
    reps: int = 3
    batch_size: int = 100_000
    seed: int = 20261123
    server: str | None = None
    embedded: bool = False


FULL = Settings()
QUICK = Settings(events=50_000, kpi_events=500_000)


def catch_up(settings: Settings) -> dict[str, Any]:
    kek = secrets.token_bytes(32)
    with throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        CrmApplication(postgres_env(db.url, pool_size=2), kek=kek).close()
        ProjectionStore(db.url).setup()
        log(f"generating {settings.events:,} events")
        gen = generate(db.url, settings.events, kek, settings.seed)
        log(f"generated {gen.events:,} events in {gen.seconds:.1f} s")
        with tempfile.TemporaryDirectory(prefix="crm-bench-analytics-") as tmp:
            projection = AnalyticsProjection(AnalyticsConfig(
                Path(tmp) / "analytics.duckdb", db.url, secrets.token_bytes(32), stages=STAGES,
                batch_size=settings.batch_size, memory_limit="4GB"))
            try:
                started = time.perf_counter()
                position = projection.catch_up()
                duck_seconds = time.perf_counter() - started
                con = projection.cursor()
                rows = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
                        for t in schema.DATA_TABLES}
                con.close()
            finally:
                projection.close()
            size = (Path(tmp) / "analytics.duckdb").stat().st_size
        log(f"duckdb:   {position:,} events in {duck_seconds:.1f} s "
            f"({position / duck_seconds:,.0f} events/s)")
        pg, _ = run_ours(db.url, kek, CustomerList, None)
        log(f"postgres: {pg.events:,} events in {pg.seconds:.1f} s ({pg.rate:,.0f} events/s)")
        return {
            "generated": asdict(gen),
            "duckdb": {"events": position, "seconds": duck_seconds,
                       "events_per_second": position / duck_seconds, "rows": rows,
                       "file_bytes": size, "batch_size": settings.batch_size},
            "postgres_read_model": {"projection": "customers", "events": pg.events,
                                    "seconds": pg.seconds, "events_per_second": pg.rate,
                                    "rows": pg.rows},
            "server": db.server_version,
        }


# -- KPI queries on a generated star of N events ----------------------------------------------
def _r(i: str, salt: int, n: int) -> str:
    """A pseudo-random integer in [0, n) from row number ``i``: deterministic."""
    return f"CAST(hash({i}, {salt}) % {n} AS BIGINT)"


def generate_star(db: duckdb.DuckDBPyConnection, events: int) -> dict[str, int]:
    """Fill the star's tables as if ``events`` events had been projected."""
    customers = max(events // 10, 10)
    opps = max(events // 10, 10)
    t0 = "TIMESTAMP '2024-01-01'"
    statements = [
        f"""INSERT INTO fact_events SELECT i, uuid(), t, 1, a, uuid(), 1,
              'k' || {_r('i % ' + str(customers), 1, customers)},
              {t0} + INTERVAL (i * 6) SECOND, {t0} + INTERVAL (i * 6) SECOND,
              'rep-' || {_r('i', 2, 40)}, 'sales_rep', NULL, 'c', 'c', NULL,
              '{{"channel": "call"}}'::JSON
            FROM (SELECT i, ['CustomerRegistered', 'OpportunityOpened', 'OpportunityStageChanged',
                   'InteractionLogged', 'InteractionLogged', 'InteractionLogged',
                   'CustomerPurchaseRecorded', 'OpportunityWon', 'ServiceRequestOpened',
                   'CustomerTagged'][1 + {_r('i', 3, 10)}] AS t,
                  'customer' AS a FROM range({events}) r(i))""",
        f"""INSERT INTO dim_customer_history
            SELECT 'k' || c, {t0} + INTERVAL (c * 60) SECOND,
                   CASE WHEN {_r('c', 4, 2)} = 0 THEN {t0} + INTERVAL (c * 60 + 86400 * 30) SECOND END,
                   {_r('c', 4, 2)} <> 0, c, 'person', 'web', 'rep-' || {_r('c', 2, 40)},
                   ['lead', 'prospect', 'customer', 'customer'][1 + {_r('c', 5, 4)}],
                   NULL, 'retail', 'DE'
            FROM range({customers}) r(c)
            UNION ALL
            SELECT 'k' || c, {t0} + INTERVAL (c * 60 + 86400 * 30) SECOND, NULL, true, c + 1,
                   'person', 'web', 'rep-' || {_r('c', 6, 40)},
                   ['customer', 'churned'][1 + {_r('c', 7, 2)}], 'gold', 'retail', 'DE'
            FROM range({customers}) r(c) WHERE {_r('c', 4, 2)} = 0""",
        f"""INSERT INTO opportunities
            SELECT uuid(), 'k' || {_r('o', 8, customers)}, p, 'rep-' || {_r('o', 2, 40)},
                   (1 + {_r('o', 9, 400)}) * 50, ['EUR', 'EUR', 'USD', 'GBP'][1 + {_r('o', 10, 4)}],
                   CAST({t0} + INTERVAL ({_r('o', 11, 900)}) DAY AS DATE),
                   CASE WHEN p = 'default' THEN ['qualification', 'needs_analysis', 'proposal',
                        'negotiation'][1 + {_r('o', 12, 4)}]
                        ELSE ['review', 'offer', 'commitment'][1 + {_r('o', 12, 3)}] END,
                   50, s, CASE WHEN s = 'lost' THEN 'price' END, opened,
                   CASE WHEN s <> 'open' THEN opened + INTERVAL (1 + {_r('o', 13, 120)}) DAY END,
                   CASE WHEN s <> 'open' THEN 1.0 + {_r('o', 13, 120)} END, NULL, NULL
            FROM (SELECT o, ['default', 'default', 'default', 'renewal'][1 + {_r('o', 14, 4)}] AS p,
                         ['open', 'open', 'won', 'lost', 'won'][1 + {_r('o', 15, 5)}] AS s,
                         {t0} + INTERVAL (o * 60) SECOND AS opened FROM range({opps}) r(o))""",
        """INSERT INTO stage_transitions
            SELECT o.opportunity_id, o.customer_key, o.pipeline, 0, 'OpportunityStageChanged',
                   NULL, d.stage, d.probability, o.owner_id,
                   o.opened_at + INTERVAL (d.stage_order * 7) DAY,
                   o.opened_at + INTERVAL (d.stage_order * 7 + 7) DAY, 7.0
            FROM opportunities o JOIN dim_stage d ON d.pipeline = o.pipeline
            WHERE d.stage_order <= (SELECT stage_order FROM dim_stage x
                                    WHERE x.pipeline = o.pipeline AND x.stage = o.stage)""",
        """UPDATE opportunities o SET furthest_stage_order = v.furthest, stages_visited = v.visited
            FROM (SELECT t.opportunity_id, max(d.stage_order) AS furthest,
                         list_sort(list(t.stage)) AS visited
                  FROM stage_transitions t JOIN dim_stage d USING (pipeline, stage) GROUP BY 1) v
            WHERE v.opportunity_id = o.opportunity_id""",
        "UPDATE opportunities SET furthest_stage_order = 1000 WHERE status = 'won'",
        f"""INSERT INTO interactions
            SELECT uuid(), i, 'k' || {_r('i', 16, customers)}, {t0} + INTERVAL (i * 20) SECOND,
                   ['call', 'email', 'meeting', 'note'][1 + {_r('i', 17, 4)}], 'outbound', 15,
                   NULL, NULL, 'rep-' || {_r('i', 2, 40)}
            FROM range({events * 3 // 10}) r(i)""",
        f"""INSERT INTO service_requests
            SELECT uuid(), 'k' || {_r('s', 18, customers)}, ['phone', 'email', 'web'][1 + {_r('s', 19, 3)}],
                   ['question', 'incident', 'complaint'][1 + {_r('s', 20, 3)}],
                   ['low', 'normal', 'high', 'urgent'][1 + {_r('s', 21, 4)}],
                   'agent-' || {_r('s', 22, 12)},
                   ['open', 'resolved', 'closed', 'in_progress'][1 + {_r('s', 23, 4)}],
                   {t0} + INTERVAL (s * 200) SECOND, {t0} + INTERVAL (s * 200 + 3600) SECOND,
                   {t0} + INTERVAL (s * 200 + 86400) SECOND, 0, 1 + {_r('s', 24, 5)}, 1.0, 24.0
            FROM range({events * 3 // 100}) r(s)""",
        """INSERT INTO satisfaction_ratings
            SELECT service_request_id, 0, customer_key, resolved_at, rating, channel, request_type,
                   assignee_id FROM service_requests WHERE status IN ('resolved', 'closed')""",
        f"""INSERT INTO purchases
            SELECT 'SO-' || p, p, 'k' || {_r('p', 25, customers // 2)},
                   {t0} + INTERVAL (p * 60) SECOND, (1 + {_r('p', 26, 2000)}) * 0.5,
                   ['EUR', 'EUR', 'USD', 'GBP'][1 + {_r('p', 10, 4)}], 1, 'rep-1'
            FROM range({events // 10}) r(p)""",
        """INSERT INTO purchase_lines
            SELECT order_id, position, 1, customer_key, purchased_at, 'SKU-1', 'Licence', 1,
                   amount, amount, currency FROM purchases""",
    ]
    value = next(t for t in schema.TABLES if t.name == "customer_value")
    statements += [
        "CREATE OR REPLACE TEMP TABLE touched AS"
        " SELECT DISTINCT customer_key AS k FROM dim_customer_history",
        f"INSERT INTO customer_value {value.select}",
    ]
    db.execute("BEGIN")
    for sql in statements:
        db.execute(sql)
    db.execute("UPDATE analytics_tracking SET position = ?", [events])  # both rows
    db.execute("COMMIT")
    db.execute("CHECKPOINT")
    return {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
            for t in schema.DATA_TABLES}


def kpi_times(settings: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crm-bench-kpi-") as tmp:
        config = AnalyticsConfig(Path(tmp) / "kpi.duckdb", "", b"k" * 32, stages=STAGES,
                                 memory_limit="4GB")
        db = open_database(config.path, config)
        try:
            started = time.perf_counter()
            rows = generate_star(db, settings.kpi_events)
            log(f"generated the star for {settings.kpi_events:,} events in "
                f"{time.perf_counter() - started:.1f} s")
            times: dict[str, Any] = {}
            for name in schema.KPI_NAMES:
                con = db.cursor()
                samples = []
                result = None
                for rep in range(settings.reps + 1):
                    result = sandbox.run_query(con, f"SELECT * FROM kpi_{name}", timeout=600,
                                               max_rows=10_000_000)
                    if rep:
                        samples.append(result.seconds)
                con.close()
                assert result is not None
                times[name] = {"median_ms": statistics.median(samples) * 1000,
                               "max_ms": max(samples) * 1000, "rows": result.table.num_rows}
                log(f"kpi_{name:20} {times[name]['median_ms']:8.1f} ms  ({result.table.num_rows:,} rows)")
            # The floor: one plain scan and aggregation of the whole fact table.
            con = db.cursor()
            scans = []
            for rep in range(settings.reps + 1):
                result = sandbox.run_query(
                    con, "SELECT event_type, count(*), max(occurred_at) FROM fact_events GROUP BY 1",
                    timeout=600, max_rows=1000)
                if rep:
                    scans.append(result.seconds)
            con.close()
            scan_ms = statistics.median(scans) * 1000
            log(f"plain scan of fact_events   {scan_ms:8.1f} ms")
        finally:
            db.close()
    return {"events": settings.kpi_events, "table_rows": rows, "kpis": times, "scan_ms": scan_ms}


def measure(settings: Settings) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    doc: dict[str, Any] = {"settings": asdict(settings), "started_at": started_at.isoformat()}
    doc["catch_up"] = catch_up(settings)
    doc["kpi_queries"] = kpi_times(settings)
    doc["seconds"] = time.perf_counter() - started
    doc["environment"] = environment(doc["catch_up"].pop("server"),
                                     duckdb=duckdb.__version__)
    return doc


def markdown(doc: dict[str, Any]) -> str:
    c, k = doc["catch_up"], doc["kpi_queries"]
    lines = [
        f"# Analytics: catch-up and KPI queries ({doc['started_at'][:10]})", "",
        f"Generated log: {c['generated']['events']:,} events "
        f"({c['generated']['customers']:,} customers).", "",
        "| projection | events | seconds | events/s |", "|---|---:|---:|---:|",
        f"| DuckDB analytics (batches of {c['duckdb']['batch_size']:,}) | {c['duckdb']['events']:,} "
        f"| {c['duckdb']['seconds']:.1f} | {c['duckdb']['events_per_second']:,.0f} |",
        f"| PostgreSQL read model `customers` (BatchRunner) | {c['postgres_read_model']['events']:,} "
        f"| {c['postgres_read_model']['seconds']:.1f} "
        f"| {c['postgres_read_model']['events_per_second']:,.0f} |", "",
        f"DuckDB file: {c['duckdb']['file_bytes'] / 1e6:,.0f} MB; rows: "
        + ", ".join(f"{t} {n:,}" for t, n in c["duckdb"]["rows"].items()), "",
        f"KPI queries on a star of {k['events']:,} events (tables generated directly): "
        + ", ".join(f"{t} {n:,}" for t, n in k["table_rows"].items()), "",
        f"| KPI view | median ms ({doc['settings']['reps']} runs) | max ms | rows |",
        "|---|---:|---:|---:|",
    ]
    for name, t in k["kpis"].items():
        lines.append(f"| kpi_{name} | {t['median_ms']:.1f} | {t['max_ms']:.1f} | {t['rows']:,} |")
    env = doc["environment"]
    lines += ["", f"{env['cpus']} CPUs, Python {env['python']}, DuckDB {env['duckdb']}, "
              f"PostgreSQL {env['postgres']}; {doc['seconds']:.0f} s in all.", ""]
    return "\n".join(lines)
