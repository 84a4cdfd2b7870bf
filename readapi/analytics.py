"""/api/v1/analytics: KPIs, analysts' SQL, the Parquet export and the report.

Served only by the process that owns the analytics DuckDB file (the analytics
projection's leader): elsewhere these routes answer 503 naming the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ConfigDict, Field

from commands.base import CheckedInput
from commands.application import Principal
from projections.analytics import report, sandbox
from projections.analytics.clv import customer_lifetime_values
from projections.analytics.schema import KPI_VIEWS
from projections.analytics.store import AnalyticsProjection, NotLeader
from readapi.encoding import JSONResponse
from readapi.access import reach_of
from readapi.auth import PERSONAL_DATA_ROLES
from readapi.problems import Problem
from readapi.routes import Caller, services

#: Roles that may query the analytics database.
ANALYTICS_ROLES = frozenset({"analyst", "manager", "admin"})
#: Roles that may write a Parquet export (files on the owning process's machine).
EXPORT_ROLES = frozenset({"analyst", "admin"})
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "arrow": "application/vnd.apache.arrow.stream"}


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

    directory: str = Field(min_length=1, description="Absolute path on the server's machine.")


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
    return Problem(400, e.detail, code=e.code, field="sql", title="Query refused")


def kpi_names(request: Request, caller: Caller) -> Any:
    _owner(request, caller)
    return {"kpis": [{"name": n, "view": f"kpi_{n}", "description": " ".join(d.split())}
                     for n, (_, d) in KPI_VIEWS.items()]}


def kpi(name: str, request: Request, caller: Caller) -> Any:
    analytics = _owner(request, caller)
    if name not in KPI_VIEWS:
        raise Problem(404, f"no KPI named {name!r}; see /api/v1/analytics/kpis",
                      code="not-found", field="name")
    con = _cursor(analytics)
    try:
        result = sandbox.run_query(con, f"SELECT * FROM kpi_{name}",
                                   timeout=analytics.config.query_timeout_seconds,
                                   max_rows=analytics.config.max_rows)
    except sandbox.QueryRefused as e:
        raise _refused(e) from None
    finally:
        con.close()
    return {"kpi": name, **sandbox.to_json(result)}


def clv(request: Request, caller: Caller,
        horizon_weeks: Annotated[float, Query(gt=0, le=520)] = 52.0,
        top: Annotated[int, Query(ge=0, le=1000)] = 20) -> Any:
    analytics = _owner(request, caller)
    con = _cursor(analytics)
    try:
        result = sandbox.run_query(con, "SELECT * FROM kpi_clv_inputs",
                                   timeout=analytics.config.query_timeout_seconds,
                                   max_rows=10_000_000)
    except sandbox.QueryRefused as e:
        raise _refused(e) from None
    finally:
        con.close()
    out = customer_lifetime_values(sandbox.rows_of(result.table), horizon_weeks=horizon_weeks)
    for entry in out["currencies"].values():
        if "customer_values" in entry:
            entry["customer_values"] = entry["customer_values"][:top]
    return {"position": result.position, **out}


def run_sql(body: SqlQuery, request: Request, caller: Caller) -> Any:
    analytics = _owner(request, caller)
    if body.reveal_customers and caller.role not in PERSONAL_DATA_ROLES:
        raise Problem(403, f"the {caller.role} role may not see who a customer key is",
                      code="forbidden", field="reveal_customers")
    limit = min(body.max_rows or analytics.config.max_rows, analytics.config.max_rows)
    con = _cursor(analytics)
    try:
        result = sandbox.run_query(con, body.sql, timeout=analytics.config.query_timeout_seconds,
                                   max_rows=limit)
    except sandbox.QueryRefused as e:
        raise _refused(e) from None
    finally:
        con.close()
    if body.reveal_customers:
        result.table = _reveal(request, caller, result.table)
    headers = {"X-Log-Position": str(result.position),
               "X-Truncated": "true" if result.truncated else "false"}
    if body.format == "csv":
        return Response(sandbox.to_csv(result.table), media_type=MEDIA_TYPES["csv"],
                        headers=headers)
    if body.format == "arrow":
        return Response(sandbox.to_arrow(result.table), media_type=MEDIA_TYPES["arrow"],
                        headers=headers)
    return JSONResponse(sandbox.to_json(result), headers=headers)


def _reveal(request: Request, caller: Principal, table: Any) -> Any:
    """customer_id and customer_name beside customer_key, from the CRM's own tables; only
    for customers within the caller's reach (others stay keys: null id and name)."""
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
    directory = Path(body.directory)
    if not directory.is_absolute():
        raise Problem(400, "give an absolute path", code="validation", field="directory")
    con = _cursor(analytics)
    try:
        return sandbox.export_parquet(con, directory, record_to=analytics.config.exports_ledger)
    except OSError as e:
        raise Problem(400, f"cannot write there: {e}", code="validation", field="directory") from None
    finally:
        con.close()


def html_report(request: Request, caller: Caller) -> Any:
    analytics = _owner(request, caller)
    con = _cursor(analytics)
    try:
        return HTMLResponse(report.render(report.collect(con)))
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
                    summary="Write a consistent Parquet snapshot to a directory of the server")
    r.add_api_route("/report", html_report, methods=["GET"], response_class=HTMLResponse,
                    summary="The analytics report (one HTML page)")
    return r
