"""The read routes of /api/v1, served from the read models in ``crm_read``.

Lists (``GET /customers``, ``/opportunities``, ``/interactions``, ``/service-requests``,
``/tasks``, ``/activity``, ``/customers/{id}/activity``) are declared as ``ListSpec``s
and served by ``readapi.listing``; records (``GET /{collection}/{id}``) are the read
model's row with the aggregate's version as ETag; ``GET /opportunities/board`` sums the
pipeline per stage. Every route takes ``min_position`` / ``X-Min-Position`` and
``wait_ms`` (``api.consistency``). Personal columns are masked for roles outside
``PERSONAL_DATA_ROLES``; searching or sorting by personal data is refused to them (its
results, and a name-sorted cursor, would reveal what the mask hides).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Request
from api.encoding import JSONResponse

from commands import PIPELINES
from commands.application import Principal
from projections.base import Table
from projections.customers import CUSTOMERS as CUSTOMER_ROWS
from projections.interactions import INTERACTIONS as INTERACTION_ROWS
from projections.pipeline import OPPORTUNITIES as OPPORTUNITY_ROWS
from projections.service import ReadSide
from projections.service_queue import SERVICE_REQUESTS as SERVICE_REQUEST_ROWS
from projections.tasks import TASKS as TASK_ROWS
from api.access import reach_of
from api.consistency import OPENAPI_PARAMETERS, ReadAfter, ensure, invalid, read_after, require_read
from readapi.listing import (
    Filter,
    ListSpec,
    Sort,
    SortKey,
    col,
    list_parameters,
    parse_query,
    run_query,
)
from api.problems import Problem
from readapi.replay_routes import AS_OF_PARAMETERS, as_of_record
from api.services import Caller, services
from readapi.schemas_read import PipelineBoard, RecordAsOf, page_of, row_of



def masked(table: Table, hidden: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The columns a list masks: its table's personal columns (those filled from a
    personal event field), less the ones it never returns."""
    return tuple(c for c in table.personal if c not in hidden)


_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_RANGE = "inclusive"
_UNTIL = "exclusive"

CUSTOMERS = ListSpec(
    name="customers",
    view="customers",
    filters=(
        Filter("owner_id", "owner_id", repeatable=True),
        Filter("lifecycle_stage", "lifecycle_stage", repeatable=True),
        Filter("segment", "segment", repeatable=True),
        Filter("tag", "tags", op="contains", repeatable=True,
               description="Repeatable: customers carrying every given tag."),
        Filter("created_from", "created_at", "datetime", ">=", description=f"created_at, {_RANGE}"),
        Filter("created_to", "created_at", "datetime", "<", description=f"created_at, {_UNTIL}"),
        Filter("active_from", "last_activity_at", "datetime", ">=", description=f"last_activity_at, {_RANGE}"),
        Filter("active_to", "last_activity_at", "datetime", "<", description=f"last_activity_at, {_UNTIL}"),
        Filter("q", "search_text", op="search", personal=True,
               description="A fragment of the name, an e-mail, a phone number (any punctuation) "
                           "or a contact person's name; case-insensitive."),
    ),
    sorts=(
        Sort("name", (col("name", "text", nullable=True),), personal=True),
        Sort("created_at", (col("created_at", "timestamptz"),)),
        Sort("last_activity_at", (col("last_activity_at", "timestamptz"),)),
    ),
    default_sort="-last_activity_at",
    personal=masked(CUSTOMER_ROWS, hidden=("search_text",)),
    hidden=("search_text",),
)

OPPORTUNITIES = ListSpec(
    name="opportunities",
    view="opportunities",
    filters=(
        Filter("pipeline", "pipeline", repeatable=True),
        Filter("stage", "stage", repeatable=True),
        Filter("status", "status", repeatable=True, description="open, won or lost"),
        Filter("owner_id", "owner_id", repeatable=True),
        Filter("customer_id", "customer_id", "uuid"),
    ),
    sorts=(
        Sort("updated_at", (col("updated_at", "timestamptz"),)),
        Sort("amount", (col("amount", "numeric"),)),
        Sort("expected_close", (col("expected_close", "date", nullable=True),)),
    ),
    default_sort="-updated_at",
    personal=masked(OPPORTUNITY_ROWS),
)

INTERACTIONS = ListSpec(
    name="interactions",
    view="interactions",
    filters=(
        Filter("customer_id", "customer_id", "uuid"),
        Filter("channel", "channel", repeatable=True),
        Filter("from", "occurred_at", "datetime", ">=", description=f"occurred_at, {_RANGE}"),
        Filter("to", "occurred_at", "datetime", "<", description=f"occurred_at, {_UNTIL}"),
    ),
    sorts=(Sort("occurred_at", (col("occurred_at", "timestamptz"),)),),
    default_sort="-occurred_at",
    personal=masked(INTERACTION_ROWS),
)

#: Most urgent first; an unknown priority after the known ones.
_PRIORITY_RANK = SortKey(
    "coalesce(array_position(ARRAY['urgent','high','normal','low']::text[], \"priority\"), 99)", "int"
)
SERVICE_REQUESTS = ListSpec(
    name="service requests",
    view="service_requests",
    filters=(
        Filter("status", "status", repeatable=True),
        Filter("priority", "priority", repeatable=True),
        Filter("assignee_id", "assignee_id", repeatable=True),
        Filter("customer_id", "customer_id", "uuid"),
    ),
    sorts=(
        # The queue's order: most urgent first, then the soonest SLA due (none last), then the oldest.
        Sort("priority", (_PRIORITY_RANK, col("sla_due_at", "timestamptz", nullable=True),
                          col("opened_at", "timestamptz"))),
        Sort("sla_due_at", (col("sla_due_at", "timestamptz", nullable=True), col("opened_at", "timestamptz"))),
        Sort("opened_at", (col("opened_at", "timestamptz"),)),
        Sort("updated_at", (col("updated_at", "timestamptz"),)),
    ),
    default_sort="priority",
    personal=masked(SERVICE_REQUEST_ROWS),
)

TASKS = ListSpec(
    name="tasks",
    view="tasks",
    filters=(
        Filter("assignee_id", "assignee_id", repeatable=True),
        Filter("mine", "assignee_id", "bool", "caller", description="true: the caller's tasks"),
        Filter("status", "status", repeatable=True, description="open, completed or cancelled"),
        Filter("due_before", "due_at", "datetime", "<"),
        Filter("customer_id", "customer_id", "uuid"),
        Filter("related_id", "related_id", "uuid"),
    ),
    sorts=(
        Sort("due_at", (col("due_at", "timestamptz", nullable=True),)),
        Sort("created_at", (col("created_at", "timestamptz"),)),
        Sort("updated_at", (col("updated_at", "timestamptz"),)),
    ),
    default_sort="due_at",
    personal=masked(TASK_ROWS),
)

ACTIVITY = ListSpec(
    name="activity",
    view="activities",
    key="event_id",
    filters=(
        Filter("owner_id", "owner_id"),
        Filter("customer_id", "customer_id", "uuid"),
        Filter("aggregate_type", "aggregate_type", repeatable=True),
        Filter("event_type", "event_type", repeatable=True),
        Filter("actor_id", "actor_id"),
        Filter("from", "occurred_at", "datetime", ">=", description=f"occurred_at, {_RANGE}"),
        Filter("to", "occurred_at", "datetime", "<", description=f"occurred_at, {_UNTIL}"),
    ),
    sorts=(Sort("occurred_at", (col("occurred_at", "timestamptz"),)),),
    default_sort="-occurred_at",
)
CUSTOMER_ACTIVITY = ListSpec(
    name="customer activity",
    view="activities",
    key="event_id",
    filters=tuple(f for f in ACTIVITY.filters if f.param not in ("customer_id", "owner_id")),
    sorts=ACTIVITY.sorts,
    default_sort=ACTIVITY.default_sort,
)

#: collection path -> (list spec, aggregate type) of the records served from read models
RECORDS: tuple[tuple[str, ListSpec, str], ...] = (
    ("/customers", CUSTOMERS, "customer"),
    ("/opportunities", OPPORTUNITIES, "opportunity"),
    ("/interactions", INTERACTIONS, "interaction"),
    ("/service-requests", SERVICE_REQUESTS, "service_request"),
    ("/tasks", TASKS, "task"),
)
LISTS: tuple[tuple[str, ListSpec, str], ...] = (
    *((path, spec, f"List {spec.name}") for path, spec, _ in RECORDS),
    ("/activity", ACTIVITY, "The activity feed, newest first (e.g. ?owner_id= for my customers)"),
)


@contextmanager
def reading(read: ReadSide | None, after: ReadAfter) -> Iterator[psycopg.Connection[Any]]:
    """A read-pool connection once the read models reflect ``after`` (else 503)."""
    side = require_read(read)
    ensure(side, after)
    try:
        with side.pool.connection() as conn:
            yield conn
    except psycopg.errors.UndefinedTable as e:
        raise Problem(503, f"a read model is not built yet: {e.diag.message_primary}",
                      code="read-model-missing", headers={"Retry-After": "5"}) from None


_PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or bad token"},
    403: {"description": "The role may not search or sort by personal data"},
    422: {"description": "A bad query parameter (named in `field`)"},
    503: {"description": "The read models are behind min_position, or not built"},
}


def _page(spec: ListSpec, request: Request, caller: Principal, fixed: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    after = read_after(request)
    q = parse_query(spec, request.query_params.multi_items(), caller, fixed)
    with reading(services(request).read, after) as conn:
        reach = reach_of(request, caller, conn).condition(spec.view)
        if reach is not None:
            q.where.append(reach)
        return run_query(conn, q, caller).body()


def add_list_route(router: APIRouter, path: str, spec: ListSpec, summary: str) -> None:
    def endpoint(request: Request, caller: Caller) -> JSONResponse:
        return JSONResponse(_page(spec, request, caller))

    endpoint.__name__ = "list_" + spec.view
    router.add_api_route(path, endpoint, methods=["GET"], summary=summary, operation_id=endpoint.__name__,
                         dependencies=[Depends(list_parameters(spec))], response_model=page_of(spec),
                         openapi_extra={"parameters": OPENAPI_PARAMETERS}, responses=_PAGE_RESPONSES)


def add_record_route(router: APIRouter, path: str, spec: ListSpec, aggregate_type: str) -> None:
    label = aggregate_type.replace("_", " ")

    def get_row(id: UUID, caller: Caller, request: Request) -> JSONResponse:
        if "as_of" in request.query_params or "as_known_at" in request.query_params:
            return as_of_record(request, caller, aggregate_type, id)  # from the events
        after = read_after(request)
        with reading(services(request).read, after) as conn:
            reach = reach_of(request, caller, conn).condition(spec.view) or ("true", [])
            row = conn.execute(f'SELECT * FROM {spec.table} WHERE "{spec.key}" = %s AND {reach[0]}',
                               (id, *reach[1])).fetchone()
        if row is None:
            raise Problem(404, f"no {label} {id} in the read model", code="not-found")
        return JSONResponse(spec.view_row(row, caller), headers={"ETag": f'"{row["version"]}"'})

    get_row.__name__ = f"get_{aggregate_type}"
    router.add_api_route(
        f"{path}/{{id}}", get_row, methods=["GET"], operation_id=get_row.__name__,
        response_model=row_of(spec) | RecordAsOf,  # the row; rebuilt from events with as_of / as_known_at
        summary=f"The {label} as the read model has it (ETag: its version); "
                f"{path}/{{id}}/current rebuilds it from its events",
        openapi_extra={"parameters": [*OPENAPI_PARAMETERS, *AS_OF_PARAMETERS]},
        responses={404: {"description": "No such record (yet: see min_position)"}},
    )


def _customer_activity(id: UUID, caller: Caller, request: Request) -> JSONResponse:
    body = _page(CUSTOMER_ACTIVITY, request, caller, {"customer_id": id})
    if not body["items"]:
        with reading(services(request).read, ReadAfter(None, 0)) as conn:
            reach = reach_of(request, caller, conn).condition(CUSTOMERS.view) or ("true", [])
            known = conn.execute(f"SELECT 1 FROM {CUSTOMERS.table} WHERE id = %s AND {reach[0]}",
                                 (id, *reach[1])).fetchone()
        if known is None:
            raise Problem(404, f"no customer {id} in the read model", code="not-found")
    return JSONResponse(body)


# -- the pipeline board -------------------------------------------------------------------


def _money(totals: dict[str, Decimal]) -> dict[str, str]:
    return {currency: str(amount) for currency, amount in sorted(totals.items())}


def _board(request: Request, caller: Caller) -> JSONResponse:
    """Per stage of one pipeline: how many deals, their amounts and weighted amounts per
    currency. Every stage of the pipeline is listed in its order (empty ones too), then
    won and lost."""
    after = read_after(request)
    given: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in ("pipeline", "owner_id", "min_position", "wait_ms"):
            raise invalid(name, "unknown parameter; the board takes pipeline, owner_id, min_position, wait_ms")
        if name in given:
            raise invalid(name, "give it once")
        given[name] = value.strip()
    pipeline = given.get("pipeline", "default")
    if pipeline not in PIPELINES:
        raise invalid("pipeline", f"no such pipeline; pipelines: {', '.join(sorted(PIPELINES))}")
    sql = ("SELECT stage, status, currency, count(*) AS n, sum(amount) AS total,"
           " sum(weighted_amount) AS weighted, min(probability) AS probability"
           f" FROM {OPPORTUNITIES.table} WHERE pipeline = %s")
    params: list[Any] = [pipeline]
    owner = given.get("owner_id")
    if owner:
        sql += " AND owner_id = %s"
        params.append(owner)
    with reading(services(request).read, after) as conn:
        reach = reach_of(request, caller, conn).condition(OPPORTUNITIES.view)
        if reach is not None:
            sql += f" AND {reach[0]}"
            params += reach[1]
        rows = conn.execute(sql + " GROUP BY stage, status, currency", params).fetchall()

    columns: dict[str, dict[str, Any]] = {
        stage.name: {"stage": stage.name, "probability": stage.probability, "closed": False,
                     "count": 0, "totals": {}, "weighted_totals": {}}
        for stage in PIPELINES[pipeline].stages
    }
    for r in sorted(rows, key=lambda r: (r["status"] != "open", r["probability"], r["stage"])):
        closed = r["status"] != "open"
        c = columns.setdefault(r["stage"], {"stage": r["stage"], "probability": int(r["probability"]),
                                            "closed": closed, "count": 0, "totals": {}, "weighted_totals": {}})
        c["count"] += int(r["n"])
        for key, value in (("totals", r["total"]), ("weighted_totals", r["weighted"])):
            c[key][r["currency"]] = c[key].get(r["currency"], Decimal(0)) + Decimal(value)
    for outcome, probability in (("won", 100), ("lost", 0)):
        columns.setdefault(outcome, {"stage": outcome, "probability": probability, "closed": True,
                                     "count": 0, "totals": {}, "weighted_totals": {}})
    board = sorted(columns.values(), key=lambda c: (c["closed"], c["stage"] == "lost", c["probability"]))
    open_totals: dict[str, Decimal] = {}
    open_weighted: dict[str, Decimal] = {}
    for c in board:
        if not c["closed"]:
            for cur, amount in c["totals"].items():
                open_totals[cur] = open_totals.get(cur, Decimal(0)) + amount
            for cur, amount in c["weighted_totals"].items():
                open_weighted[cur] = open_weighted.get(cur, Decimal(0)) + amount
    return JSONResponse({
        "pipeline": pipeline,
        "owner_id": owner or None,
        "stages": [{**c, "totals": _money(c["totals"]), "weighted_totals": _money(c["weighted_totals"])}
                   for c in board],
        "open": {"count": sum(c["count"] for c in board if not c["closed"]),
                 "totals": _money(open_totals), "weighted_totals": _money(open_weighted)},
    })


def build_read_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["read"])
    # Fixed paths before /{collection}/{id}, or "board" would be taken for an id.
    r.add_api_route("/opportunities/board", _board, methods=["GET"], operation_id="pipeline_board",
                    response_model=PipelineBoard,
                    summary="The pipeline board: count, totals and weighted totals per stage",
                    openapi_extra={"parameters": [
                        {"name": "pipeline", "in": "query", "required": False,
                         "schema": {"type": "string", "default": "default"}},
                        {"name": "owner_id", "in": "query", "required": False, "schema": {"type": "string"}},
                        *OPENAPI_PARAMETERS,
                    ]},
                    responses=_PAGE_RESPONSES)
    for path, spec, summary in LISTS:
        add_list_route(r, path, spec, summary)
    for path, spec, aggregate_type in RECORDS:
        add_record_route(r, path, spec, aggregate_type)
    r.add_api_route("/customers/{id}/activity", _customer_activity, methods=["GET"],
                    operation_id="list_customer_activity",
                    summary="What happened around one customer, newest first",
                    dependencies=[Depends(list_parameters(CUSTOMER_ACTIVITY))],
                    response_model=page_of(CUSTOMER_ACTIVITY),
                    openapi_extra={"parameters": OPENAPI_PARAMETERS}, responses=_PAGE_RESPONSES)
    return r
