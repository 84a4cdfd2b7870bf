"""/api/v1/analytics: KPIs, analysts' SQL, the Parquet export and the report.

Served only by the process that owns the analytics DuckDB file (the analytics
projection's leader): elsewhere these routes answer 503 naming the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import AwareDatetime, ConfigDict, Field, field_validator

from commands.base import CheckedInput
from commands.application import Principal
from analytics import report, sandbox
from analytics.clv import lifetime_value_answer, utc_text
from analytics.schema import AS_OF_KPIS, KPI_VIEWS, macro_call
from analytics.store import AnalyticsProjection, Busy, NotLeader
from api.access import reach_of
from api.auth import PERSONAL_DATA_ROLES
from api.consistency import invalid
from api.problems import Problem
from api.services import Caller, services

#: Roles that may query the analytics database.
ANALYTICS_ROLES = frozenset({"analyst", "manager", "admin"})
#: Roles that may write a Parquet export (files on the owning process's machine).
EXPORT_ROLES = frozenset({"analyst", "admin"})
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
               "arrow": "application/vnd.apache.arrow.stream"}


class SqlQuery(CheckedInput):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000, description="One read-only query.")
    format: Literal["json", "csv", "arrow"] = "json"
    max_rows: int | None = Field(default=None, ge=1, le=1_000_000,
                                 description="Default and ceiling: the server's row limit.")
    reveal_customers: bool = Field(
        default=False,
        description="Add customer_id and customer_name beside a customer_key column (only "
                    "for roles that may see personal data).")


class ExportRequest(CheckedInput):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=sandbox.EXPORT_NAME_MAX,
                      description="The export's name: a directory of that name is written in "
                                  "the server's exports directory (a name, not a path: "
                                  "letters, digits, '.', '_', '-', no '..').",
                      json_schema_extra={"pattern": sandbox.EXPORT_NAME_PATTERN})

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return sandbox.check_export_name(value)


def _owner(request: Request, caller: Principal, roles: frozenset[str] = ANALYTICS_ROLES
           ) -> AnalyticsProjection:
    if caller.role not in roles:
        raise Problem(403, f"the {caller.role} role may not use analytics", code="forbidden")
    analytics = services(request).analytics
    if analytics is None or not analytics.is_open:
        raise Problem(503, "the analytics database is not open in this process (another "
                      "process owns it, or the projection is starting)",
                      code="analytics-unavailable", headers={"Retry-After": "5"})
    return analytics


def _cursor(analytics: AnalyticsProjection) -> Any:
    try:
        return analytics.cursor()
    except NotLeader as e:
        raise Problem(503, str(e), code="analytics-unavailable") from None


def _refused(e: sandbox.QueryRefused) -> Problem:
    if isinstance(e, sandbox.ResultTooLarge):
        return Problem(422, e.detail, code=e.code, field="sql", title="Result too large",
                       limit_bytes=e.limit)
    return Problem(400, e.detail, code=e.code, field="sql", title="Query refused")


@contextmanager
def _slot(analytics: AnalyticsProjection) -> Iterator[None]:
    """One of the process's slots for analysts' queries, waiting up to the query time
    limit for one; 503 if none frees up."""
    try:
        with analytics.query_slot(analytics.config.query_timeout_seconds):
            yield
    except Busy as e:
        raise Problem(503, f"{e}: try again shortly", code="analytics-busy",
                      headers={"Retry-After": "1"}) from None


def kpi_names(request: Request, caller: Caller) -> Any:
    _owner(request, caller)
    return {"kpis": [{"name": n, "view": f"kpi_{n}", "description": " ".join(d.split())}
                     for n, (_, d) in KPI_VIEWS.items()]}


AsOf = Annotated[AwareDatetime | None, Query(
    description="Cut-off (ISO 8601 with a time zone): only purchases and activity up to then "
                "count; default now.")]


def _cutoff(as_of: datetime | None, horizon_days: int | None = None
            ) -> tuple[datetime, datetime | None]:
    """The cut-off (default now) and the window's start (None: no window)."""
    if as_of is None:
        as_of = datetime.now(UTC)
    try:
        as_of = as_of.astimezone(UTC)
        return as_of, as_of - timedelta(days=horizon_days) if horizon_days else None
    except (OverflowError, ValueError):
        raise invalid("as_of", "is out of range (give a time between the years 1 and 9999, "
                      "far enough from both)") from None


def kpi(name: str, request: Request, caller: Caller, as_of: AsOf = None,
        horizon_days: Annotated[int | None, Query(
            ge=1, le=36_500, description="rfm, customer_classes: only purchases in the "
                                         "days before the cut-off count; default all.")] = None,
        ) -> Any:
    analytics = _owner(request, caller)
    if name not in KPI_VIEWS:
        raise Problem(404, f"no KPI named {name!r}; see /api/v1/analytics/kpis",
                      code="not-found", field="name")
    at_kpi = AS_OF_KPIS.get(name)
    if at_kpi is None and as_of is not None:
        raise invalid("as_of", f"the KPI {name} has no cut-off; only "
                      f"{', '.join(AS_OF_KPIS)} take as_of")
    if (at_kpi is None or not at_kpi[1]) and horizon_days is not None:
        raise invalid("horizon_days", f"the KPI {name} has no look-back window; only "
                      f"{', '.join(n for n, (_, w) in AS_OF_KPIS.items() if w)} take horizon_days")
    cutoff, since = _cutoff(as_of, horizon_days)
    if at_kpi is None:
        sql = f"SELECT * FROM kpi_{name}"
    else:
        source = macro_call(at_kpi[0], cutoff, since)
        # how many customers the answer covers (before any row limit), as one more column
        if name == "customer_classes":
            counted = (f"(SELECT count(DISTINCT customer_key) FROM "
                       f"{macro_call('customer_value_at', cutoff, since)})")
        else:
            counted = "count(DISTINCT customer_key) OVER ()"
        sql = f"SELECT *, {counted} AS {_COUNT_COLUMN} FROM {source}"
    with _slot(analytics):
        con = _cursor(analytics)
        try:
            result = sandbox.run_query(con, sql, timeout=analytics.config.query_timeout_seconds,
                                       max_rows=analytics.config.max_rows)
        except sandbox.QueryRefused as e:
            raise _refused(e) from None
        finally:
            con.close()
    if at_kpi is None:
        return {"kpi": name, **sandbox.to_json(result)}
    counts = result.table.column(_COUNT_COLUMN).to_pylist()
    result.table = result.table.drop_columns([_COUNT_COLUMN])
    return {"kpi": name, "as_of": utc_text(cutoff), "time_unit": "day",
            "horizon_days": horizon_days,
            "customers": int(counts[0]) if counts else 0, **sandbox.to_json(result)}


_COUNT_COLUMN = "__customers_in_answer"


def clv(request: Request, caller: Caller, as_of: AsOf = None,
        horizon_weeks: Annotated[float, Query(gt=0, le=520)] = 52.0,
        top: Annotated[int, Query(ge=0, le=1000)] = 20) -> Any:
    analytics = _owner(request, caller)
    cutoff, _ = _cutoff(as_of)
    with _slot(analytics):
        con = _cursor(analytics)
        try:
            result = sandbox.run_query(con, f"SELECT * FROM {macro_call('clv_inputs_at', cutoff)}",
                                       timeout=analytics.config.query_timeout_seconds,
                                       max_rows=10_000_000)
        except sandbox.QueryRefused as e:
            raise _refused(e) from None
        finally:
            con.close()
        return lifetime_value_answer(sandbox.rows_of(result.table), position=result.position,
                                     horizon_weeks=horizon_weeks, as_of=cutoff, top=top)


def run_sql(body: SqlQuery, request: Request, caller: Caller) -> Any:
    analytics = _owner(request, caller)
    if body.reveal_customers and caller.role not in PERSONAL_DATA_ROLES:
        raise Problem(403, f"the {caller.role} role may not see who a customer key is",
                      code="forbidden", field="reveal_customers")
    limit = min(body.max_rows or analytics.config.max_rows, analytics.config.max_rows)

    def reveal(table: Any) -> Any:
        return _reveal(request, caller, table)

    with _slot(analytics):
        con = _cursor(analytics)
        try:
            result = sandbox.run_encoded(
                con, body.sql, format=body.format, timeout=analytics.config.query_timeout_seconds,
                max_rows=limit, max_bytes=analytics.config.max_result_bytes,
                transform=reveal if body.reveal_customers else None)
        except sandbox.QueryRefused as e:
            raise _refused(e) from None
        finally:
            con.close()
    headers = {"X-Log-Position": str(result.position),
               "X-Truncated": "true" if result.truncated else "false",
               "Content-Length": str(result.size)}
    # The body is already encoded (at most max_result_bytes), in pieces: sent as they are.
    return StreamingResponse(iter(result.pieces), media_type=MEDIA_TYPES[body.format],
                             headers=headers)


def _reveal(request: Request, caller: Principal, table: Any) -> Any:
    """customer_id and customer_name beside customer_key, from the CRM's own tables; only
    for customers within the caller's reach (others stay keys: null id and name). Called
    for each batch of the result."""
    import pyarrow as pa

    if "customer_key" not in table.column_names:
        raise Problem(400, "reveal_customers needs a customer_key column in the result",
                      code="validation", field="reveal_customers")
    read = services(request).read
    if read is None:
        raise Problem(503, "the read models are not available", code="unavailable")
    keys = [k for k in set(table.column("customer_key").to_pylist()) if k is not None]
    reach = reach_of(request, caller).condition("customers")
    if reach is None:
        sql = ("SELECT a.customer_key, a.customer_id::text AS customer_id, c.name"
               " FROM crm_analytics_customers a LEFT JOIN crm_read.customers c ON c.id = a.customer_id"
               " WHERE a.customer_key = ANY(%s)")
        params: list[Any] = [keys]
    else:  # only customers in reach: the others stay keys
        sql = ("SELECT a.customer_key, c.id::text AS customer_id, c.name FROM crm_analytics_customers a"
               f" JOIN (SELECT id, name FROM crm_read.customers WHERE {reach[0]}) c ON c.id = a.customer_id"
               " WHERE a.customer_key = ANY(%s)")
        params = [*reach[1], keys]
    rows: list[Any] = []
    if keys:
        with read.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
    found = {r["customer_key"]: r for r in rows}
    column = table.column("customer_key").to_pylist()
    table = table.append_column("customer_id", pa.array(
        [found.get(k, {}).get("customer_id") for k in column], pa.string()))
    return table.append_column("customer_name", pa.array(
        [found.get(k, {}).get("name") for k in column], pa.string()))


def export(body: ExportRequest, request: Request, caller: Caller) -> Any:
    analytics = _owner(request, caller, EXPORT_ROLES)
    root = analytics.config.exports_dir
    if root is None:
        raise Problem(503, "no exports directory is configured in this process",
                      code="analytics-unavailable")
    try:
        directory = sandbox.export_directory(root, body.name)
    except ValueError as e:
        raise Problem(422, str(e), code="validation", field="name") from None
    with _slot(analytics):
        con = _cursor(analytics)
        try:
            manifest = sandbox.export_parquet(con, directory,
                                              record_to=analytics.config.exports_ledger)
        except OSError as e:
            raise Problem(500, f"the export could not be written: {e.strerror or e}",
                          code="export-failed") from None
        finally:
            con.close()
    return {"name": body.name, "directory": str(directory), **manifest}


def html_report(request: Request, caller: Caller, as_of: AsOf = None,
                horizon_weeks: Annotated[float, Query(gt=0, le=520)] = 52.0) -> Any:
    analytics = _owner(request, caller)
    cutoff = _cutoff(as_of)[0]
    with _slot(analytics):
        con = _cursor(analytics)
        try:
            return HTMLResponse(report.render(report.collect(con, as_of=cutoff, horizon_weeks=horizon_weeks)))
        finally:
            con.close()


def status(request: Request, caller: Caller) -> Any:
    analytics = _owner(request, caller)
    return {"position": analytics.stats.position or analytics.position(),
            "batches": analytics.stats.batches, "events": analytics.stats.events,
            "parked": analytics.stats.parked, "path": str(analytics.config.path)}


def build_analytics_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])
    r.add_api_route("/status", status, methods=["GET"], summary="The analytics database's position")
    r.add_api_route("/kpis", kpi_names, methods=["GET"], summary="The KPIs there are")
    r.add_api_route("/kpis/{name}", kpi, methods=["GET"], summary="One KPI's rows")
    r.add_api_route("/clv", clv, methods=["GET"],
                    summary="Customer lifetime value (BG/NBD + Gamma-Gamma) per currency")
    r.add_api_route("/sql", run_sql, methods=["POST"],
                    summary="Run one read-only SQL query (JSON, CSV or Arrow)")
    r.add_api_route("/export", export, methods=["POST"],
                    summary="Write a consistent Parquet snapshot, by name, into the server's "
                            "exports directory")
    r.add_api_route("/report", html_report, methods=["GET"], response_class=HTMLResponse,
                    summary="The analytics report (one HTML page)")
    return r
