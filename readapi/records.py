"""Command routes and record routes of the HTTP API (/api/v1).

Every command route: authenticate, check the role may do it, build the command from the
body (unknown fields refused), run it with the caller's If-Match and Idempotency-Key,
answer with the record's id, new version (also as ETag) and log position.
"""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from api.encoding import JSONResponse
from pydantic import BaseModel

from commands import AGGREGATE_TYPES, Aggregate, CrmEvent
from commands.application import Principal
from api.access import reach_of, readable
from api.auth import PERSONAL_DATA_ROLES
from api.consistency import OPENAPI_PARAMETERS, read_after
from api.encoding import jsonable, mask_value
from api.services import Caller, services
from replay.timeline import event_entry, personal_state

class StoredEventOut(BaseModel):
    position: int | None
    event_id: UUID
    type: str
    class_version: int
    aggregate_type: str
    aggregate_id: UUID
    aggregate_version: int
    occurred_at: datetime
    recorded_at: datetime
    actor_id: str
    actor_role: str
    reason: str | None
    correlation_id: str
    causation_id: str
    command_id: UUID
    personal_data_erased: bool
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[StoredEventOut]
    next_after_version: int | None


class RecordOut(BaseModel):
    id: UUID
    type: str
    version: int
    data: dict[str, Any]


# -- JSON views of records and events ------------------------------------------
#: Per record type, the fields masked for roles that may not read personal data: derived
#: from the events' ``personal_fields`` (``replay.timeline.personal_state``).
PERSONAL_STATE: dict[str, tuple[str, ...]] = {t: personal_state(t) for t in AGGREGATE_TYPES}


def record_view(aggregate: Aggregate, principal: Principal) -> dict[str, Any]:
    state = aggregate.state()
    state.pop("id", None)
    state.pop("version", None)
    if aggregate.type_name == "customer":
        state["contacts"] = list(state["contacts"].values())
    data = jsonable(state)
    if principal.role not in PERSONAL_DATA_ROLES:
        for name in PERSONAL_STATE[aggregate.type_name]:
            if data.get(name) is not None:
                data[name] = mask_value(data[name])
    return {"id": str(aggregate.id), "type": aggregate.type_name, "version": aggregate.version, "data": data}


def event_view(event: CrmEvent, position: int | None, principal: Principal) -> dict[str, Any]:
    entry = event_entry(event, position or 0, None)
    entry["position"] = position
    del entry["changes"]
    if principal.role not in PERSONAL_DATA_ROLES:
        data = entry["data"]
        for name in type(event).personal_fields:
            if data.get(name) is not None:
                data[name] = mask_value(data[name])
    return entry


def add_record_routes(router: APIRouter, base: str, aggregate_type: str) -> None:
    cls = AGGREGATE_TYPES[aggregate_type]

    def get_record(id: UUID, caller: Caller, request: Request) -> Any:
        read_after(request)  # checked, never waited for: the event store has every position
        readable(caller, aggregate_type)  # before the load: a role that may not read the type learns nothing
        app = services(request).app
        aggregate = app.load(cls, id)
        reach_of(request, caller).require(app, aggregate)
        return JSONResponse(record_view(aggregate, caller), headers={"ETag": f'"{aggregate.version}"'})

    get_record.__name__ = f"get_current_{aggregate_type}"
    router.add_api_route(
        f"{base}/{{id}}/current",
        get_record,
        methods=["GET"],
        response_model=RecordOut,
        summary=f"The {aggregate_type.replace('_', ' ')} as it is now, rebuilt from its events",
        operation_id=f"get_current_{aggregate_type}",
        openapi_extra={"parameters": OPENAPI_PARAMETERS},
        responses={404: {"description": "No such record"}},
    )

    def list_events(
        id: UUID,
        caller: Caller,
        request: Request,
        after_version: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        read_after(request)  # checked, never waited for: the event store has every position
        readable(caller, aggregate_type)
        svc = services(request)
        aggregate = svc.app.load(cls, id)  # 404 for absent ids and other types
        reach_of(request, caller).require(svc.app, aggregate)
        stored = list(svc.app.events.get(id, gt=after_version, limit=limit))
        positions = svc.app.recorder.positions(id)  # type: ignore[attr-defined]
        items = [event_view(e, positions.get(e.originator_version), caller) for e in stored]  # type: ignore[arg-type]
        last = items[-1]["aggregate_version"] if items else None
        more = last is not None and last < aggregate.version
        return JSONResponse(
            {"items": items, "next_after_version": last if more else None},
            headers={"ETag": f'"{aggregate.version}"'},
        )

    list_events.__name__ = f"list_{aggregate_type}_events"
    router.add_api_route(
        f"{base}/{{id}}/events",
        list_events,
        methods=["GET"],
        response_model=EventPage,
        summary=f"The stored events of one {aggregate_type.replace('_', ' ')}, with their metadata",
        operation_id=f"list_{aggregate_type}_events",
        openapi_extra={"parameters": OPENAPI_PARAMETERS},
        responses={404: {"description": "No such record"}},
    )


def build_records_router() -> APIRouter:
    """Each record as it is now, and its stored events."""
    r = APIRouter(prefix="/api/v1")
    for base, aggregate_type in (
        ("/customers", "customer"),
        ("/opportunities", "opportunity"),
        ("/interactions", "interaction"),
        ("/service-requests", "service_request"),
        ("/tasks", "task"),
    ):
        add_record_routes(r, base, aggregate_type)
    return r
