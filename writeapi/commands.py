"""Command routes and record routes of the HTTP API (/api/v1).

Every command route: authenticate, check the role may do it, build the command from the
body (unknown fields refused), run it with the caller's If-Match and Idempotency-Key,
answer with the record's id, new version (also as ETag) and log position.
"""

import re
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from api.encoding import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import Principal, Request as CommandRequest
from commands.application import WriteResult
from api.access import Reach, reach_of, reach_reads_database
from api.auth import require_scope
from api.problems import Problem
from api.services import Caller, Services, services

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ETAG = re.compile(r'^"?(\d{1,18})"?$')


class WriteResponse(BaseModel):
    id: UUID
    type: str
    version: int = Field(description="The record's version after the command (also the ETag).")
    position: int | None = Field(description="Event-log position of the command's last event.")
    result: dict[str, Any] = Field(default_factory=dict)


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

    return r
