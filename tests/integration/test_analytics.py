"""The DuckDB analytics projection: KPI values against figures worked out by hand, the
SQL sandbox, the Parquet export, the report, and exactly-once after SIGKILL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import duckdb
import httpx
import psycopg
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from events import customer as ce
from events import interaction as ie
from events import opportunity as oe
from events import service_request as se
from events.base import Actor, CrmEvent, EventMeta
from events.codec import EventCodec
from events.values import PurchaseLine
from analytics import report, sandbox
from analytics.schema import DATA_TABLES
from tests.e2e.test_http import serving

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Log:
    """Writes events straight into the event log (encoded by the CRM's codec)."""

    def __init__(self, url: str, codec: EventCodec):
        self.conn = psycopg.connect(url, autocommit=True)
        self.codec = codec
        self.versions: dict[UUID, int] = {}

    def emit(self, cls: type[CrmEvent], originator: UUID, at: datetime, *,
             actor: str = "rep-1", role: str = "sales_rep", **fields: Any) -> None:
        version = self.versions.get(originator, 0) + 1
        self.versions[originator] = version
        meta = EventMeta(event_id=uuid4(), occurred_at=at, recorded_at=at,
                         actor=Actor(actor, role), correlation_id="c", causation_id="c",
                         command_id=uuid4())
        event = cls(originator_id=originator, originator_version=version,  # type: ignore[call-arg]
                    timestamp=at, meta=meta, **fields)
        topic, state = self.codec.encode(event)
        self.conn.execute("INSERT INTO crm_events (originator_id, originator_version, topic, state)"
                          " VALUES (%s, %s, %s, %s)", (originator, version, topic, state))

    def customer(self, cid: UUID, at: datetime, owner: str, stage: str) -> None:
        self.emit(ce.CustomerRegistered, cid, at, kind="person", name=None, contacts=None,
                  source="web", owner_id=owner, lifecycle_stage=stage, industry="retail",
                  country="DE", preferred_language="de", tags=())

    def purchase(self, cid: UUID, at: datetime, amount: str, currency: str = "EUR") -> None:
        self.emit(ce.PurchaseRecorded, cid, at, order_id=f"SO-{uuid4().hex[:8]}",
                  amount=Decimal(amount), currency=currency,
                  lines=(PurchaseLine("SKU-1", "Licence", Decimal(1), Decimal(amount)),),
                  purchased_at=at)

    def close(self) -> None:
        self.conn.close()


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


def small_history(log: Log) -> dict[str, UUID]:
    """Three customers, four opportunities, three service requests, five purchases."""
    a, b, c = uuid4(), uuid4(), uuid4()
    log.customer(a, T0, "rep-1", "customer")
    log.customer(b, T0, "rep-1", "customer")
    log.customer(c, T0, "rep-2", "lead")
    log.emit(ce.CustomerClassified, a, day(10), previous_segment=None, segment="gold")
    log.emit(ce.OwnerReassigned, a, day(20), previous_owner_id="rep-1", owner_id="rep-2")

    def opened(oid: UUID, cid: UUID, at: datetime, amount: str, cur: str, close: date) -> None:
        log.emit(oe.OpportunityOpened, oid, at, customer_id=cid, title=None, amount=Decimal(amount),
                 currency=cur, expected_close=close, pipeline="default", stage="qualification",
                 probability=10, owner_id="rep-1")

    o1, o2, o3, o4 = uuid4(), uuid4(), uuid4(), uuid4()
    opened(o1, a, T0, "1000", "EUR", date(2026, 3, 15))
    opened(o2, b, day(1), "2000", "EUR", date(2026, 3, 1))
    opened(o3, c, day(2), "4000", "EUR", date(2026, 3, 20))
    opened(o4, a, day(3), "500", "USD", date(2026, 4, 1))
    log.emit(oe.OpportunityStageChanged, o1, day(5), customer_id=a, from_stage="qualification",
             to_stage="proposal", probability=50)
    log.emit(oe.OpportunityWon, o1, day(10), customer_id=a, from_stage="proposal",
             amount=Decimal(1000), currency="EUR")
    log.emit(oe.OpportunityLost, o2, day(3), customer_id=b, from_stage="qualification",
             loss_reason="price")
    log.emit(oe.OpportunityStageChanged, o3, day(4), customer_id=c, from_stage="qualification",
             to_stage="needs_analysis", probability=25)

    def request(sid: UUID, cid: UUID, at: datetime, priority: str, channel: str) -> None:
        log.emit(se.ServiceRequestOpened, sid, at, customer_id=cid, channel=channel,
                 request_type="incident", priority=priority, subject=None, description=None)

    s1, s2, s3 = uuid4(), uuid4(), uuid4()
    request(s1, a, T0, "normal", "phone")
    log.emit(se.ServiceRequestAssigned, s1, hours(1), customer_id=a, previous_assignee_id=None,
             assignee_id="agent-1")
    log.emit(se.ServiceRequestStatusChanged, s1, hours(2), customer_id=a, from_status="open",
             to_status="in_progress")
    log.emit(se.ServiceRequestResolved, s1, hours(30), customer_id=a, from_status="in_progress",
             resolution=None)
    log.emit(se.SatisfactionRated, s1, hours(31), customer_id=a, rating=5, comment=None)
    request(s2, b, T0, "urgent", "email")
    log.emit(se.ServiceRequestAssigned, s2, hours(0.5), customer_id=b, previous_assignee_id=None,
             assignee_id="agent-2")
    log.emit(se.ServiceRequestCommented, s2, hours(3), customer_id=b, comment_id=uuid4(),
             visibility="customer", body=None)
    log.emit(se.ServiceRequestResolved, s2, hours(10), customer_id=b, from_status="open",
             resolution=None)
    log.emit(se.SatisfactionRated, s2, hours(11), customer_id=b, rating=2, comment=None)
    request(s3, c, datetime(2026, 2, 10, tzinfo=UTC), "normal", "web")

    log.emit(ie.InteractionLogged, uuid4(), day(1), customer_id=a, channel="call",
             direction="outbound", subject=None, body=None, participants=None,
             duration_minutes=15, opportunity_id=o1, service_request_id=None)
    log.purchase(a, datetime(2026, 1, 5, tzinfo=UTC), "100")
    log.purchase(a, datetime(2026, 1, 20, tzinfo=UTC), "300")
    log.purchase(a, datetime(2026, 2, 1, tzinfo=UTC), "200")
    log.purchase(b, datetime(2026, 1, 10, tzinfo=UTC), "50")
    log.purchase(c, datetime(2026, 1, 15, tzinfo=UTC), "80", "USD")
    # the latest event: KPIs are as of 2026-02-15
    log.emit(ce.LifecycleStageChanged, b, datetime(2026, 2, 15, tzinfo=UTC),
             from_stage="customer", to_stage="churned")
    return {"a": a, "b": b, "c": c}


@pytest.fixture
def analytics_system(make_system: Callable[..., Any], database_url: str) -> Any:
    system = make_system()
    log = Log(database_url, system.app.codec)
    system.ids = small_history(log)
    log.close()
    system.analytics.catch_up()
    return system


def q(system: Any, sql: str) -> list[tuple[Any, ...]]:
    con = system.analytics.cursor()
    try:
        return list(con.execute(sql).fetchall())
    finally:
        con.close()


def near(a: Any, b: float) -> bool:
    return a is not None and abs(float(a) - b) < 1e-9


def test_kpis_match_figures_worked_out_by_hand(analytics_system: Any) -> None:
    s = analytics_system
    assert q(s, "SELECT won, lost, win_rate FROM kpi_win_rate WHERE pipeline IS NULL") == [(1, 1, 0.5)]
    assert q(s, "SELECT avg_cycle_days FROM kpi_sales_cycle WHERE period IS NULL") == [(10.0,)]
    assert q(s, "SELECT stage, spells, avg_days FROM kpi_time_in_stage") == [
        ("qualification", 3, 3.0), ("proposal", 1, 5.0)]
    assert q(s, "SELECT stage, reached, conversion_from_start FROM kpi_funnel") == [
        ("qualification", 4, 1.0), ("needs_analysis", 2, 0.5), ("proposal", 1, 0.25),
        ("negotiation", 1, 0.25), ("won", 1, 0.25)]
    assert q(s, "SELECT CAST(close_month AS DATE), currency, pipeline_amount, weighted_amount"
                " FROM kpi_forecast_weighted") == [
        (date(2026, 3, 1), "EUR", Decimal("4000"), 1000.0),
        (date(2026, 4, 1), "USD", Decimal("500"), 50.0)]
    assert q(s, "SELECT stage, closed, won, historical_win_rate FROM kpi_stage_win_rates") == [
        ("proposal", 1, 1, 1.0), ("qualification", 2, 1, 0.5)]
    assert q(s, "SELECT currency, expected_amount FROM kpi_forecast_historical") == [
        ("EUR", 0.0), ("USD", 250.0)]
    # SLA as of 2026-02-15: S1 met both, S2 (urgent) missed both, S3 open 5 days: missed both
    (row,) = q(s, "SELECT requests, first_response_compliance, resolution_compliance,"
                  " avg_first_response_hours, avg_resolution_hours FROM kpi_sla WHERE period IS NULL")
    assert row[0] == 3 and near(row[1], 1 / 3) and near(row[2], 1 / 3)
    assert near(row[3], 2.5) and near(row[4], 20.0)
    assert q(s, "SELECT priority, status, requests, overdue, oldest_hours FROM kpi_backlog") == [
        ("normal", "open", 1, 1, 120.0)]
    assert q(s, "SELECT ratings, avg_rating, satisfied_share FROM kpi_csat"
                " WHERE period IS NULL AND agent_id IS NULL AND channel IS NULL"
                " AND request_type IS NULL") == [(2, 3.5, 0.5)]
    assert q(s, "SELECT agent_id, avg_rating FROM kpi_csat WHERE agent_id IS NOT NULL") == [
        ("agent-1", 5.0), ("agent-2", 2.0)]
    assert q(s, "SELECT channel, avg_rating FROM kpi_csat WHERE channel IS NOT NULL") == [
        ("email", 2.0), ("phone", 5.0)]
    assert q(s, "SELECT currency, average_order_value FROM kpi_aov WHERE period IS NULL") == [
        ("EUR", 162.5), ("USD", 80.0)]
    assert q(s, "SELECT currency, buyers, repeat_buyers_orders, repeat_purchase_rate_orders,"
                " repeat_buyers_days, repeat_purchase_rate_days FROM kpi_repeat_purchase") == [
        ("EUR", 2, 1, 0.5, 1, 0.5), ("USD", 1, 0, 0.0, 0, 0.0)]
    assert q(s, "SELECT CAST(period AS DATE), customers_at_start, churned, churn_rate"
                " FROM kpi_churn_rate") == [
        (date(2026, 1, 1), 2, 0, 0.0), (date(2026, 2, 1), 2, 1, 0.5)]
    # RFM and the classes as of the latest event, 2026-02-15 (the views are as of now)
    assert q(s, "SELECT customer_class, customers FROM customer_classes_at(TIMESTAMP '2026-02-15')"
                " ORDER BY customer_class") == [("churned", 1), ("high-value", 1), ("potential", 1)]
    (rfm,) = q(s, "SELECT orders, purchase_days, monetary, r_score, f_score, m_score, recency_days"
                  " FROM rfm_at(TIMESTAMP '2026-02-15') WHERE customer_class = 'high-value'")
    assert rfm == (3, 3, Decimal("600"), 5, 5, 5, 14)


def test_star_keeps_history_and_pseudonymous_keys(analytics_system: Any, database_url: str) -> None:
    s = analytics_system
    a = s.ids["a"]

    def owner_on(d: str) -> list[tuple[Any, ...]]:
        return q(s, f"SELECT owner_id, segment FROM dim_customer_history h"
                    f" JOIN (SELECT customer_key FROM fact_events WHERE aggregate_id = '{a}' LIMIT 1)"
                    f" USING (customer_key) WHERE valid_from <= TIMESTAMP '{d}'"
                    f" AND (valid_to > TIMESTAMP '{d}' OR valid_to IS NULL)")

    assert owner_on("2026-01-05") == [("rep-1", None)]
    assert owner_on("2026-01-15") == [("rep-1", "gold")]
    assert owner_on("2026-01-25") == [("rep-2", "gold")]
    keys = {r[0] for r in q(s, "SELECT DISTINCT customer_key FROM fact_events")}
    assert len(keys) == 3 and all(len(k) == 32 for k in keys)
    assert not any(str(i) in keys or str(i).replace("-", "") in keys for i in s.ids.values())
    assert q(s, "SELECT count(*) FROM fact_events WHERE customer_key IS NULL") == [(0,)]
    with psycopg.connect(database_url) as conn:
        mapped = conn.execute("SELECT customer_id FROM crm_analytics_customers").fetchall()
    assert {r[0] for r in mapped} == set(s.ids.values())
    (opp,) = q(s, "SELECT status, cycle_days, loss_reason FROM opportunities WHERE status = 'won'")
    assert opp == ("won", 10.0, None)
    (sr,) = q(s, "SELECT first_response_hours, resolution_hours, rating, assignee_id"
                 " FROM service_requests WHERE priority = 'urgent'")
    assert sr == (3.0, 10.0, 2, "agent-2")
    assert q(s, "SELECT count(*), sum(line_amount) FROM purchase_lines") == [(5, Decimal("730"))]
    comments = q(s, "SELECT count(*) FROM duckdb_tables() WHERE comment IS NOT NULL"
                    " AND comment <> ''")
    assert comments[0][0] >= len(DATA_TABLES)


def test_sql_over_http_is_read_only_and_sandboxed(analytics_system: Any) -> None:
    s = analytics_system
    with serving(s.http_app()) as base:
        with httpx.Client(base_url=base, timeout=30) as client:
            _sql_checks(s, client)


def _sql_checks(s: Any, client: httpx.Client) -> None:
    analyst = {"Authorization": "Bearer " + s.tokens.issue("ann", "analyst")}

    def post(body: dict[str, Any], headers: dict[str, str] = analyst) -> Any:
        return client.post("/api/v1/analytics/sql", json=body, headers=headers)

    r = post({"sql": "SELECT event_type, count(*) AS n FROM fact_events GROUP BY 1 ORDER BY 1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["position"] == 31 and body["columns"][0]["name"] == "event_type"
    assert {"event_type": "CustomerRegistered", "n": 3} in body["rows"]
    r = post({"sql": "SELECT currency, amount FROM purchases ORDER BY amount", "format": "csv"})
    assert r.status_code == 200 and r.text.splitlines()[:2] == ["currency,amount", "EUR,50.0000"]
    r = post({"sql": "SELECT * FROM purchases", "format": "arrow"})
    assert ipc.open_stream(io.BytesIO(r.content)).read_all().num_rows == 5
    r = post({"sql": "SELECT * FROM fact_events", "max_rows": 7})
    assert r.json()["row_count"] == 7 and r.json()["truncated"] is True

    refused = {
        "INSERT INTO dim_stage VALUES ('x', 'y', 9, 9)": "writes are not allowed",
        "DELETE FROM fact_events": "writes are not allowed",
        "CREATE TABLE t AS SELECT 1": "writes are not allowed",
        "ATTACH '/tmp/other.duckdb' AS other": "ATTACH is not allowed",
        "COPY fact_events TO '/tmp/leak.csv'": "COPY is not allowed",
        "SELECT * FROM read_csv('/etc/passwd')": "file and network access is not allowed",
        "SELECT * FROM read_parquet('/tmp/x.parquet')": "file and network access is not allowed",
        "SET memory_limit = '100GB'": "settings cannot be changed",
        "SET enable_external_access = true": "settings cannot be changed",
        "PRAGMA enable_profiling": "PRAGMA is not allowed",
        "SELECT 1; DROP TABLE fact_events": "exactly one statement",
        "SELEKT 1": "does not parse",
    }
    for sql, why in refused.items():
        r = post({"sql": sql})
        assert r.status_code == 400, (sql, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert why in r.json()["detail"] and r.json()["field"] == "sql", (sql, r.json())
    assert q(s, "SELECT count(*) FROM dim_stage WHERE pipeline = 'x'") == [(0,)]
    assert not Path("/tmp/leak.csv").exists()

    assert post({"sql": "SELECT 1", "format": "xml"}).json()["field"] == "format"
    assert post({"sql": "SELECT 1", "extra": 1}).status_code == 422
    rep = {"Authorization": "Bearer " + s.tokens.issue("rita", "sales_rep")}
    assert post({"sql": "SELECT 1"}, rep).status_code == 403
    r = post({"sql": "SELECT customer_key FROM purchases", "reveal_customers": True})
    assert r.status_code == 403 and r.json()["field"] == "reveal_customers"
    admin = {"Authorization": "Bearer " + s.tokens.issue("root", "admin")}
    r = post({"sql": "SELECT DISTINCT customer_key FROM purchases", "reveal_customers": True}, admin)
    assert {row["customer_id"] for row in r.json()["rows"]} == {str(i) for i in s.ids.values()}

    r = client.get("/api/v1/analytics/kpis/win_rate", headers=analyst)
    assert r.status_code == 200 and r.json()["rows"][0]["win_rate"] == 0.5
    r = client.get("/api/v1/analytics/kpis/nope", headers=analyst)
    assert r.status_code == 404 and r.json()["field"] == "name"
    assert len(client.get("/api/v1/analytics/kpis", headers=analyst).json()["kpis"]) >= 15
    r = client.get("/api/v1/analytics/clv", headers=analyst)
    assert r.status_code == 200 and "too few customers" in r.json()["currencies"]["EUR"]["error"]


def test_query_time_limit_interrupts(analytics_system: Any) -> None:
    con = analytics_system.analytics.cursor()
    started = time.perf_counter()
    with pytest.raises(sandbox.QueryTimeout):
        sandbox.run_query(con, "SELECT count(*) FROM range(1000000000000) a, range(10) b",
                          timeout=0.5, max_rows=10)
    assert time.perf_counter() - started < 5
    # the connection is usable again afterwards
    assert sandbox.run_query(con, "SELECT 42 AS x", timeout=5, max_rows=1).table.to_pylist() == [{"x": 42}]


def test_parquet_export_reads_back_equal(analytics_system: Any, tmp_path: Path) -> None:
    con = analytics_system.analytics.cursor()
    manifest = sandbox.export_parquet(con, tmp_path / "export")
    assert manifest["position"] == 31
    for name in DATA_TABLES:
        exported = pq.read_table(tmp_path / "export" / f"{name}.parquet")
        live = con.sql(f"SELECT * FROM {name}").to_arrow_table()
        assert exported.num_rows == manifest["tables"][name]["rows"] == live.num_rows
        assert exported.schema == live.schema, name
        assert exported.sort_by(_sort_keys(exported)).equals(live.sort_by(_sort_keys(live))), name


def _sort_keys(table: Any) -> list[tuple[str, str]]:
    import pyarrow.types as pt

    return [(f.name, "ascending") for f in table.schema
            if f.name != "payload" and not pt.is_list(f.type)]


def test_report_is_one_html_file_with_charts(analytics_system: Any) -> None:
    html = report.render(report.collect(analytics_system.analytics.cursor()))
    assert html.startswith("<!doctype html>") and "<script" not in html and "http" not in html.split("<body>")[1].replace('xmlns="http://www.w3.org/2000/svg"', "")
    for title in ("Pipeline by stage", "Funnel", "Forecast", "SLA", "CSAT", "Customer classes"):
        assert f"<h2>{title}</h2><svg" in html
    assert "50 %" in html  # the win rate tile


def test_crm_sql_opens_the_file_itself_when_no_process_owns_it(
        analytics_system: Any, database_url: str, tmp_path: Path) -> None:
    path = analytics_system.analytics.config.path
    analytics_system.analytics.close()
    env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_DATA_DIR": str(path.parent),
           "CRM_MASTER_KEY": "5e" * 32, "CRM_LOG_FORMAT": "console"}
    out = subprocess.run([sys.executable, "-m", "crm.cli", "sql", "-f", "csv",
                          "SELECT count(*) AS n FROM purchases"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", "5"]
    out = subprocess.run([sys.executable, "-m", "crm.cli", "sql", "DROP TABLE purchases"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "writes are not allowed" in out.stderr


# -- exactly once across SIGKILL ------------------------------------------------------------
CHILD = """
import sys
from pathlib import Path
from analytics.store import AnalyticsConfig, AnalyticsProjection
p = AnalyticsProjection(AnalyticsConfig(Path(sys.argv[1]), sys.argv[2], b"k" * 32,
                                        batch_size=int(sys.argv[3])))
while p.run_batch():
    print(p.stats.position, flush=True)
print("done", flush=True)
"""


def _table_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in (*DATA_TABLES, "analytics_parked")}


def test_exactly_once_after_sigkill(make_system: Callable[..., Any], database_url: str,
                                    tmp_path: Path) -> None:
    from analytics.store import AnalyticsConfig, AnalyticsProjection

    system = make_system()
    log = Log(database_url, system.app.codec)
    for _ in range(12):
        small_history(log)
    log.close()
    head = 31 * 12
    path = tmp_path / "killed.duckdb"
    kills = 0
    for stop_after in (3, 5, 9):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), database_url, "7"],
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        for _ in range(stop_after):
            if not child.stdout.readline():
                break
        os.kill(child.pid, signal.SIGKILL)  # mid-way through a batch, most likely
        child.wait(timeout=30)
        child.stdout.close()
        kills += 1
    finish = AnalyticsProjection(AnalyticsConfig(path, database_url, b"k" * 32, batch_size=50))
    assert finish.catch_up() == head
    finish.close()
    fresh = AnalyticsProjection(AnalyticsConfig(tmp_path / "fresh.duckdb", database_url, b"k" * 32,
                                                batch_size=1000))
    assert fresh.catch_up() == head
    fresh.close()
    killed, rebuilt = _table_rows(path), _table_rows(tmp_path / "fresh.duckdb")
    assert kills == 3
    assert len(killed["fact_events"]) == head
    for name in rebuilt:
        assert killed[name] == rebuilt[name], name


def test_crm_sql_calls_the_owning_process_when_the_file_is_in_use(
        analytics_system: Any, database_url: str) -> None:
    s = analytics_system
    path = s.analytics.config.path  # held open for writing by this process
    with serving(s.http_app()) as base:
        env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_DATA_DIR": str(path.parent),
               "CRM_MASTER_KEY": "5e" * 32, "CRM_JWT_SECRET": s.settings.jwt_secret.get_secret_value(),
               "CRM_ANALYTICS_URL": base, "CRM_LOG_FORMAT": "console"}
        out = subprocess.run([sys.executable, "-m", "crm.cli", "sql", "-f", "csv",
                              "SELECT count(*) AS n FROM purchases"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["n", "5"]
        out = subprocess.run([sys.executable, "-m", "crm.cli", "sql", "ATTACH 'x.db'"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "ATTACH is not allowed" in out.stderr
