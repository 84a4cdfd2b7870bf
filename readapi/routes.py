"""Command routes and record routes of the HTTP API (/api/v1).

Every command route: authenticate, check the role may do it, build the command from the
body (unknown fields refused), run it with the caller's If-Match and Idempotency-Key,
answer with the record's id, new version (also as ETag) and log position.
"""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from readapi.encoding import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from commands import AGGREGATE_TYPES, Aggregate, CrmEvent
from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import CommandService, CrmApplication, Principal, Request as CommandRequest
from commands.application import WriteResult
from projections.kafka import KafkaFeed
from projections.analytics.store import AnalyticsProjection
from projections.service import ReadSide
from readapi.access import Reach, reach_of, reach_reads_database, readable
from readapi.auth import PERSONAL_DATA_ROLES, Authenticator, TokenIssuer, authenticate, require_scope
from readapi.consistency import OPENAPI_PARAMETERS, read_after
from readapi.encoding import MASK, jsonable, mask_value
from readapi.problems import Problem
from replay.timeline import event_entry, personal_state

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ETAG = re.compile(r'^"?(\d{1,18})"?$')
__all__ = ["MASK", "Services", "build_router", "jsonable"]


@dataclass
class Services:
    """What the routes need, built once by the composition root."""

    app: CrmApplication
    commands: CommandService
    tokens: TokenIssuer
    read: ReadSide | None = None
    #: the Kafka publisher, when publishing is on (for /metrics)
    kafka: KafkaFeed | None = None
    audit_key: Any = None  # the Ed25519 key that signs audit exports
    analytics: AnalyticsProjection | None = None
    survey_key: bytes | None = None  # signs satisfaction survey links
    erasure: Any = None  # runs erasures (readapi.erasure_routes.Erasures)
    #: the automation follows the log (its position, lag and parked events in /ready, /metrics)
    automation: bool = False


class WriteResponse(BaseModel):
    id: UUID
    type: str
    version: int = Field(description="The record's version after the command (also the ETag).")
    position: int | None = Field(description="Event-log position of the command's last event.")
    result: dict[str, Any] = Field(default_factory=dict)


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


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <JWT> or Bearer crmk_... (API key)")] = None,
    x_api_key: Annotated[str | None, Header(description="An API key, crmk_... (systems)")] = None,
) -> Principal:
    # On the event loop when no database is asked (most requests: a thread hand-off
    # less); an API key or a user's sign-in state not yet remembered: in the threadpool.
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    p = authenticator.authenticate_known(request, authorization, x_api_key) if authenticator else None
    if p is None:
        p = await run_in_threadpool(authenticate, request, services(request).tokens, authorization, x_api_key)
    structlog.contextvars.bind_contextvars(actor_id=p.id, actor_role=p.role)
    return p


Caller = Annotated[Principal, Depends(principal)]


@dataclass(frozen=True)
class CallInfo:
    principal: Principal
    correlation_id: str
    expected_version: int | None
    idempotency_key: str | None
    reach: Reach


async def call_info(
    request: Request,
    caller: Caller,
    if_match: Annotated[str | None, Header(description='The record\'s ETag, e.g. "3"')] = None,
    idempotency_key: Annotated[str | None, Header(description="Repeat-safe request key")] = None,
) -> CallInfo:
    expected = None
    if if_match is not None:
        if if_match.strip().startswith("W/"):
            # If-Match compares strongly (RFC 9110 13.1.1): a weak ETag never matches.
            raise Problem(412, 'If-Match takes the record\'s strong ETag, e.g. "3", never a weak one (W/"3")',
                          code="weak-etag", field="If-Match")
        m = _ETAG.match(if_match.strip())
        if not m:
            raise RequestValidationError(
                [{"loc": ("header", "if_match"), "msg": 'must be an ETag like "3"', "type": "value_error"}]
            )
        expected = int(m.group(1))
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise RequestValidationError(
            [{"loc": ("header", "idempotency_key"), "msg": "1 to 255 visible ASCII characters",
              "type": "value_error"}]
        )
    # on the event loop unless the caller's reach asks the database (a manager's team)
    reach = (await run_in_threadpool(reach_of, request, caller) if reach_reads_database(caller)
             else reach_of(request, caller))
    return CallInfo(caller, request.state.correlation_id, expected, idempotency_key, reach)


Call = Annotated[CallInfo, Depends(call_info)]


def _respond(result: WriteResult, base_path: str) -> JSONResponse:
    headers = {"ETag": f'"{result.version}"'}
    if result.created:
        headers["Location"] = f"{base_path}/{result.id}"
    if result.replayed:
        headers["Idempotency-Replayed"] = "true"
    return JSONResponse(result.body(), status_code=result.status, headers=headers)


def _run(svc: Services, call: CallInfo, command: BaseModel, target: UUID | None, base_path: str) -> JSONResponse:
    result = svc.commands.execute(
        command,
        CommandRequest(
            principal=call.principal,
            correlation_id=call.correlation_id,
            target=target,
            expected_version=call.expected_version,
            idempotency_key=call.idempotency_key,
            guard=None if call.reach.unlimited else call.reach.guard(svc.app),
        ),
    )
    return _respond(result, base_path)


def _optional_body(command_cls: type[BaseModel], body: BaseModel | None) -> BaseModel:
    if body is not None:
        return body
    try:
        return command_cls()
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
        ) from None


def _all_optional(command_cls: type[BaseModel]) -> bool:
    return all(not f.is_required() for f in command_cls.model_fields.values())


def add_command(
    router: APIRouter,
    path: str,
    command_cls: type[BaseModel],
    scope: str,
    base_path: str,
    *,
    method: str = "POST",
    summary: str,
    targeted: bool,
) -> None:
    """Register one command route; its body schema is the command model."""
    responses = {
        401: {"description": "No or bad token"},
        403: {"description": "The role may not do this"},
        409: {"description": "Version conflict or a rule refused the change"},
        422: {"description": "Invalid input"},
    }
    status = 200 if targeted else 201
    if targeted:
        responses[404] = {"description": "No such record"}
        responses[428] = {"description": "If-Match required"}
    optional = _all_optional(command_cls)

    if targeted and optional:
        def endpoint(id: UUID, call: Call, request: Request, body: command_cls | None = None) -> Any:  # type: ignore[valid-type]
            require_scope(call.principal, scope)
            return _run(services(request), call, _optional_body(command_cls, body), id, base_path)
    elif targeted:
        def endpoint(id: UUID, body: command_cls, call: Call, request: Request) -> Any:  # type: ignore[valid-type,misc]
            require_scope(call.principal, scope)
            return _run(services(request), call, body, id, base_path)
    else:
        def endpoint(body: command_cls, call: Call, request: Request) -> Any:  # type: ignore[valid-type,misc]
            require_scope(call.principal, scope)
            return _run(services(request), call, body, None, base_path)

    endpoint.__name__ = command_cls.__name__
    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        summary=summary,
        status_code=status,
        response_model=WriteResponse,
        responses=responses,  # type: ignore[arg-type]
        operation_id=command_cls.__name__,
    )


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


#: Every command route: (method, path under /api/v1, command, write scope, summary).
#: Paths with ``{id}`` act on an existing record; the others create one.
COMMAND_ROUTES: tuple[tuple[str, str, type[BaseModel], str, str], ...] = (
    ("POST", "/customers", cc.RegisterCustomer, "customer", "Register a customer"),
    ("PATCH", "/customers/{id}", cc.ChangeCustomerDetails, "customer",
     "Change a customer's details (If-Match required)"),
    ("POST", "/customers/{id}/contacts", cc.AddContact, "customer", "Add a contact"),
    ("POST", "/customers/{id}/contacts/removal", cc.RemoveContact, "customer",
     "Remove a contact (If-Match required)"),
    ("POST", "/customers/{id}/owner", cc.ReassignCustomerOwner, "customer",
     "Reassign the owner (If-Match required)"),
    ("POST", "/customers/{id}/shares", cc.ShareCustomer, "customer",
     "Share with a user besides the owner: they can see and change it"),
    ("POST", "/customers/{id}/shares/removal", cc.UnshareCustomer, "customer", "Stop sharing with a user"),
    ("POST", "/customers/{id}/lifecycle", cc.ChangeLifecycleStage, "customer",
     "Change the lifecycle stage, with a reason (If-Match required)"),
    ("POST", "/customers/{id}/classification", cc.ClassifyCustomer, "customer.marketing",
     "Classify into a segment, with a reason (If-Match required)"),
    ("POST", "/customers/{id}/tags", cc.TagCustomer, "customer.marketing", "Tag"),
    ("POST", "/customers/{id}/tags/removal", cc.UntagCustomer, "customer.marketing", "Untag"),
    ("POST", "/customers/{id}/consents", cc.SetConsent, "customer.marketing",
     "Grant or withdraw consent for a channel"),
    ("POST", "/customers/{id}/preferences", cc.SetPreferences, "customer", "Set preferences"),
    ("POST", "/customers/{id}/purchases", cc.RecordPurchase, "customer", "Record a purchase"),
    ("POST", "/opportunities", co.OpenOpportunity, "opportunity", "Open an opportunity"),
    ("PATCH", "/opportunities/{id}", co.UpdateOpportunity, "opportunity",
     "Change amount, close date or owner (If-Match required)"),
    ("POST", "/opportunities/{id}/stage", co.ChangeOpportunityStage, "opportunity",
     "Move to another stage (If-Match required)"),
    ("POST", "/opportunities/{id}/shares", co.ShareOpportunity, "opportunity",
     "Share with a user besides the owner: they can see and change it"),
    ("POST", "/opportunities/{id}/shares/removal", co.UnshareOpportunity, "opportunity",
     "Stop sharing with a user"),
    ("POST", "/opportunities/{id}/won", co.WinOpportunity, "opportunity", "Mark won (If-Match required)"),
    ("POST", "/opportunities/{id}/lost", co.LoseOpportunity, "opportunity",
     "Mark lost, with a loss reason (If-Match required)"),
    ("POST", "/opportunities/{id}/reopen", co.ReopenOpportunity, "opportunity",
     "Reopen a won or lost deal (If-Match required)"),
    ("POST", "/interactions", ci.LogInteraction, "interaction",
     "Log a call, e-mail, meeting, note, SMS or chat"),
    ("POST", "/service-requests", cs.OpenServiceRequest, "service", "Open a service request"),
    ("POST", "/service-requests/{id}/assignment", cs.AssignServiceRequest, "service",
     "Assign (If-Match required)"),
    ("POST", "/service-requests/{id}/priority", cs.ChangeServiceRequestPriority, "service",
     "Change priority (If-Match required)"),
    ("POST", "/service-requests/{id}/status", cs.ChangeServiceRequestStatus, "service",
     "Change status (If-Match required)"),
    ("POST", "/service-requests/{id}/comments", cs.CommentOnServiceRequest, "service",
     "Comment (internal or customer-visible)"),
    ("POST", "/service-requests/{id}/resolution", cs.ResolveServiceRequest, "service",
     "Resolve with a resolution (If-Match required)"),
    ("POST", "/service-requests/{id}/rating", cs.RateServiceRequest, "service",
     "Record the customer's satisfaction rating"),
    ("POST", "/tasks", ct.CreateTask, "task", "Create a task"),
    ("POST", "/tasks/{id}/assignment", ct.ReassignTask, "task", "Reassign (If-Match required)"),
    ("POST", "/tasks/{id}/due", ct.ChangeTaskDue, "task", "Change the due time (If-Match required)"),
    ("POST", "/tasks/{id}/comments", ct.CommentOnTask, "task", "Comment"),
    ("POST", "/tasks/{id}/complete", ct.CompleteTask, "task", "Complete (If-Match required)"),
    ("POST", "/tasks/{id}/cancel", ct.CancelTask, "task", "Cancel (If-Match required)"),
)


def build_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    for method, path, command_cls, scope, summary in COMMAND_ROUTES:
        collection = "/api/v1/" + path.strip("/").split("/")[0]
        add_command(r, path, command_cls, scope, collection, method=method, summary=summary,
                    targeted="{id}" in path)

    for base, aggregate_type in (
        ("/customers", "customer"),
        ("/opportunities", "opportunity"),
        ("/interactions", "interaction"),
        ("/service-requests", "service_request"),
        ("/tasks", "task"),
    ):
        add_record_routes(r, base, aggregate_type)
    return r
