"""Audit and time-travel routes: timelines, records as of a time, history, exports.

All of them read the event store (never the read models). Any role may read timelines,
history and past states (personal data masked for roles that may not read it); audit
exports are for auditors (and admins). None of them writes, except that an export is
itself recorded as an event.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from commands import AGGREGATE_TYPES, Aggregate, no_record
from commands.application import Principal
from commands.base import DATE_RANGE, check_datetime
from commands.base import When as BoundedTime
from api.encoding import JSONResponse
from api.access import READABLE, reach_of, readable
from api.auth import PERSONAL_DATA_ROLES
from api.consistency import invalid
from api.encoding import mask_value
from api.problems import Problem
from readapi.records import PERSONAL_STATE, record_view
from api.services import Caller, services
from commands.audit import record_export
from replay.export import ExportRequest, export_customer
from replay.state import Replayer, field_changes, fields_of, history, positions
from replay.timeline import (
    MAX_PAGE,
    TimelineQuery,
    event_entry,
    jsonable,
    known_type,
    personal_fields,
    timeline,
)

#: Roles that may take an audit export.
EXPORT_ROLES = frozenset({"auditor", "admin"})
_TIME: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)
_COLLECTIONS = (
    ("/customers", "customer"),
    ("/opportunities", "opportunity"),
    ("/interactions", "interaction"),
    ("/service-requests", "service_request"),
    ("/tasks", "task"),
)
#: The time-travel parameters of ``GET /{collection}/{id}`` (given: rebuilt from events).
AS_OF_PARAMETERS: list[dict[str, Any]] = [
    {"name": "as_of", "in": "query", "required": False,
     "schema": {"type": "string", "format": "date-time"},
     "description": "Business time: the record as it was then, rebuilt from the events that "
                    "had taken effect by then (a back-dated correction counts)."},
    {"name": "as_known_at", "in": "query", "required": False,
     "schema": {"type": "string", "format": "date-time"},
     "description": "Recording time: only what the system had recorded by then."},
]
When = Annotated[BoundedTime | None, Query(description=f"ISO 8601 with a time zone; {DATE_RANGE}")]


def replayer(request: Request) -> Replayer:
    app = services(request).app
    return Replayer(app.factory.datastore.get_connection, app.codec)  # type: ignore[attr-defined]


def parse_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = _TIME.validate_python(raw)
    except ValidationError:
        raise invalid(name, "must be an ISO 8601 date-time with a time zone, e.g. "
                      "2026-03-01T00:00:00Z") from None
    try:
        return check_datetime(value)
    except ValueError as e:
        raise invalid(name, str(e)) from None


def _mask_entry(entry: dict[str, Any], caller: Principal) -> dict[str, Any]:
    if caller.role in PERSONAL_DATA_ROLES:
        return entry
    for name in personal_fields(entry["type"]):
        if entry["data"].get(name) is not None:
            entry["data"][name] = mask_value(entry["data"][name])
    personal_state = PERSONAL_STATE.get(entry["aggregate_type"], ())
    for change in entry["changes"] or ():
        if change["field"].split(".")[0] in personal_state:
            change["before"] = mask_value(change["before"])
            change["after"] = mask_value(change["after"])
    return entry


def require_current(request: Request, caller: Principal, aggregate_type: str, id: UUID) -> None:
    """404 unless the record, as it is now, is within the caller's reach: who may read a
    record's past is decided by who it belongs to now."""
    readable(caller, aggregate_type)
    reach = reach_of(request, caller)
    if reach.unlimited:
        return
    app = services(request).app
    reach.require(app, app.load(AGGREGATE_TYPES[aggregate_type], id))


def require_existing(request: Request, caller: Principal, r: Replayer, aggregate_type: str, id: UUID) -> None:
    """403 unless the role may read the type (asked first: the answer tells nothing about
    the record); then one 404 for a record that does not exist, is of another type, or is
    out of the caller's reach."""
    readable(caller, aggregate_type)
    if r.kind_of(id) != aggregate_type:
        raise no_record(aggregate_type, id)
    require_current(request, caller, aggregate_type, id)


def as_of_record(request: Request, caller: Principal, aggregate_type: str, id: UUID) -> JSONResponse:
    """``GET /{collection}/{id}?as_of=T&as_known_at=T2``: the record rebuilt from the
    events that had happened by T (business time) and were recorded by T2."""
    as_of = parse_time(request, "as_of")
    as_known_at = parse_time(request, "as_known_at")
    label = aggregate_type.replace("_", " ")
    r = replayer(request)
    require_existing(request, caller, r, aggregate_type, id)
    aggregate = r.state(id, as_of=as_of, as_known_at=as_known_at)
    if aggregate is None:
        raise Problem(404, f"the {label} {id} did not exist then", code="not-found-then")
    body = record_view(aggregate, caller)
    body["as_of"] = as_of.isoformat() if as_of else None
    body["as_known_at"] = as_known_at.isoformat() if as_known_at else None
    return JSONResponse(body, headers={"ETag": f'"{aggregate.version}"'})


def _changes(before: Aggregate | None, after: Aggregate | None, aggregate_type: str,
             caller: Principal) -> list[dict[str, Any]]:
    out = []
    personal = PERSONAL_STATE.get(aggregate_type, ())
    mask = caller.role not in PERSONAL_DATA_ROLES
    for c in field_changes(fields_of(before), fields_of(after)):
        b, a = jsonable(c["before"]), jsonable(c["after"])
        if mask and c["field"].split(".")[0] in personal:
            b, a = mask_value(b), mask_value(a)
        out.append({"field": c["field"], "before": b, "after": a})
    return out


def add_history_route(router: APIRouter, base: str, aggregate_type: str) -> None:
    label = aggregate_type.replace("_", " ")

    def get_history(id: UUID, caller: Caller, request: Request,
                    from_: Annotated[BoundedTime | None, Query(alias="from")] = None,
                    to: When = None, as_known_at: When = None) -> Any:
        if from_ is not None and to is not None and to < from_:
            raise invalid("to", "must not be before from")
        r = replayer(request)
        require_existing(request, caller, r, aggregate_type, id)
        before, after, seen = history(r, id, start=from_, end=to, as_known_at=as_known_at)
        at = positions(r, id)
        return JSONResponse({
            "id": str(id),
            "type": aggregate_type,
            "from": from_.isoformat() if from_ else None,
            "to": to.isoformat() if to else None,
            "as_known_at": as_known_at.isoformat() if as_known_at else None,
            "version_from": before.version if before else None,
            "version_to": after.version if after else None,
            "changes": _changes(before, after, aggregate_type, caller),
            "events": [_mask_entry(event_entry(e, at.get(e.originator_version, 0), ch), caller)
                       for e, ch in seen],
        })

    get_history.__name__ = f"get_{aggregate_type}_history"
    router.add_api_route(
        f"{base}/{{id}}/history", get_history, methods=["GET"], operation_id=get_history.__name__,
        summary=f"What changed on the {label} between two business times, field by field, "
                "and the events that changed it",
        responses={404: {"description": "No such record"}, 422: {"description": "Invalid input"}},
    )


def get_timeline(id: UUID, caller: Caller, request: Request,
                 after: Annotated[int, Query(ge=0, description="Log position to start after")] = 0,
                 limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                 order: Annotated[Literal["oldest", "newest"], Query(
                     description="oldest first (page on with `after` = `next_after`) or newest first "
                                 "(page back with `before` = `next_before`)")] = "oldest",
                 before: Annotated[int | None, Query(ge=1, description="Log position the page ends before")] = None,
                 from_: Annotated[BoundedTime | None, Query(alias="from")] = None,
                 to: When = None,
                 type: Annotated[list[str] | None, Query(description="Event types")] = None,
                 actor: Annotated[str | None, Query(max_length=100)] = None) -> Any:
    """Every event about the customer and its related records, oldest (or newest) first."""
    for name in type or ():
        if not known_type(name):
            raise invalid("type", f"unknown event type {name!r}")
    if from_ is not None and to is not None and to < from_:
        raise invalid("to", "must not be before from")
    r = replayer(request)
    require_existing(request, caller, r, "customer", id)
    page = timeline(r, id, TimelineQuery(after=after, limit=limit, occurred_from=from_, occurred_to=to,
                                         types=tuple(type or ()), actor=actor, before=before,
                                         newest_first=order == "newest"))
    types = READABLE.get(caller.role, frozenset())
    return JSONResponse({"items": [_mask_entry(e, caller) for e in page.items
                                   if e["aggregate_type"] in types or e["aggregate_type"] == "audit_export"],
                         "next_after": page.next_after, "next_before": page.next_before})


def get_export(id: UUID, caller: Caller, request: Request,
               from_: Annotated[BoundedTime | None, Query(alias="from")] = None,
               to: When = None) -> Response:
    """An audit export of the customer as a zip (events.jsonl, manifest.json)."""
    if caller.role not in EXPORT_ROLES:
        raise HTTPException(403, f"the {caller.role} role may not take audit exports")
    if from_ is not None and to is not None and to < from_:
        raise invalid("to", "must not be before from")
    svc = services(request)
    r = replayer(request)
    require_existing(request, caller, r, "customer", id)
    files = export_customer(r, svc.audit_key, ExportRequest(id, from_, to, caller.id, caller.role))
    record_export(svc.commands, files.manifest, hashlib.sha256(files.manifest_bytes).hexdigest(),
                  caller, request.state.correlation_id)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("events.jsonl", files.events)
        z.writestr("manifest.json", files.manifest_bytes)
    return Response(buffer.getvalue(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="audit-{id}.zip"'})


def build_replay_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["audit"])
    r.add_api_route("/customers/{id}/timeline", get_timeline, methods=["GET"],
                    operation_id="get_customer_timeline",
                    summary="The customer's timeline across all its records, with field-level changes",
                    responses={404: {"description": "No such customer"}})
    r.add_api_route("/customers/{id}/audit-export", get_export, methods=["GET"],
                    operation_id="get_customer_audit_export",
                    summary="A signed audit export of the customer (auditors), checkable offline "
                            "with `crm audit verify-export`",
                    responses={200: {"content": {"application/zip": {}}},
                               403: {"description": "Only auditors (and admins)"},
                               404: {"description": "No such customer"}})
    for base, aggregate_type in _COLLECTIONS:
        assert aggregate_type in AGGREGATE_TYPES
        add_history_route(r, base, aggregate_type)
    return r
