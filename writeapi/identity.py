"""The commands of identity: users, teams and API keys (the reads are readapi.people).

Admins manage users, teams and API keys; a manager may read the users of their own
team; everybody may read their own user and change their own password (with the
current one).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from commands import identity as ci
from commands.application import Request as CommandRequest
from api.encoding import JSONResponse
from api.auth import require_scope
from api.problems import Problem
from writeapi.commands import Call, WriteResponse, _all_optional, _optional_body, _run, add_command
from api.services import services
from api.signin import SCOPE, _forbidden, authenticator

USERS = "/api/v1/users"
TEAMS = "/api/v1/teams"
API_KEYS = "/api/v1/api-keys"


class IssuedApiKey(BaseModel):
    id: UUID
    type: str
    version: int
    position: int | None
    key: str | None = Field(description="The key to send as `Authorization: Bearer <key>` or "
                            "`X-API-Key: <key>`. Shown only in this answer (null when an "
                            "earlier request with this Idempotency-Key issued it).")
    result: dict[str, Any] = Field(default_factory=dict)


def change_password(id: UUID, body: ci.ChangePassword, call: Call, request: Request) -> Any:
    """Set a new password: one's own (with the current one), or anybody's as an admin."""
    own = call.principal.id == str(id)
    if not own and call.principal.role != "admin":
        raise _forbidden("only the user themselves or an admin may change a password")
    if own and body.current_password is None:
        raise Problem(422, "send your current password to change it", code="validation",
                      field="current_password")
    try:
        return _run(services(request), call, body, id, USERS)
    finally:
        authenticator(request).forget(id)  # the user's earlier tokens end at once here


def _sign_in_change(command_cls: type[BaseModel]) -> Any:
    """The route of a command that changes how the user's tokens are judged (deactivation,
    reactivation, role, team): this process re-reads the user's sign-in state at once."""
    if _all_optional(command_cls):
        def endpoint(id: UUID, call: Call, request: Request, body: command_cls | None = None) -> Any:  # type: ignore[valid-type]
            require_scope(call.principal, SCOPE)
            try:
                return _run(services(request), call, _optional_body(command_cls, body), id, USERS)
            finally:
                authenticator(request).forget(id)  # this process sees the change at once

        # this module's annotations are strings; FastAPI could not resolve the local class
        endpoint.__annotations__["body"] = command_cls | None
    else:
        def endpoint(id: UUID, body: command_cls, call: Call, request: Request) -> Any:  # type: ignore[valid-type,misc]
            require_scope(call.principal, SCOPE)
            try:
                return _run(services(request), call, body, id, USERS)
            finally:
                authenticator(request).forget(id)  # this process sees the change at once

        endpoint.__annotations__["body"] = command_cls
    endpoint.__name__ = command_cls.__name__
    return endpoint


def issue_api_key(body: ci.IssueApiKey, call: Call, request: Request) -> Any:
    """Issue an API key for another system; the key is shown in this answer only."""
    require_scope(call.principal, SCOPE)
    result, key = ci.issue_api_key(services(request).commands, body, CommandRequest(
        principal=call.principal, correlation_id=call.correlation_id,
        idempotency_key=call.idempotency_key))
    headers = {"ETag": f'"{result.version}"', "Location": f"{API_KEYS}/{result.id}",
               "Cache-Control": "no-store"}
    if result.replayed:
        headers["Idempotency-Replayed"] = "true"
    return JSONResponse({**result.body(), "key": key}, status_code=result.status, headers=headers)


def build_identity_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    add_command(r, "/users", ci.CreateUser, SCOPE, USERS, summary="Create a user (admin)", targeted=False)
    for path, command_cls, summary in (
        ("/users/{id}/role", ci.ChangeUserRole,
         "Change a user's role: their tokens stop working (admin; If-Match required)"),
        ("/users/{id}/team", ci.MoveUserToTeam,
         "Move a user to a team, or to none: their tokens stop working (admin; If-Match required)"),
        ("/users/{id}/deactivation", ci.DeactivateUser,
         "Deactivate a user: no more sign-in, their tokens stop working (admin; If-Match required)"),
        ("/users/{id}/reactivation", ci.ReactivateUser, "Reactivate a user (admin; If-Match required)"),
    ):
        r.add_api_route(path, _sign_in_change(command_cls), methods=["POST"], summary=summary,
                        operation_id=command_cls.__name__, status_code=200, response_model=WriteResponse)
    r.add_api_route("/users/{id}/password", change_password, methods=["POST"], operation_id="ChangePassword",
                    summary="Change a password (one's own with the current one, or as an admin)",
                    status_code=200, response_model=WriteResponse)
    add_command(r, "/teams", ci.CreateTeam, SCOPE, TEAMS, summary="Create a team (admin)", targeted=False)
    add_command(r, "/teams/{id}/name", ci.RenameTeam, SCOPE, TEAMS,
                summary="Rename a team (admin; If-Match required)", targeted=True)
    r.add_api_route("/api-keys", issue_api_key, methods=["POST"], response_model=IssuedApiKey,
                    status_code=201, operation_id="IssueApiKey",
                    summary="Issue an API key for a system (admin); its secret is shown once")
    add_command(r, "/api-keys/{id}/revocation", ci.RevokeApiKey, SCOPE, API_KEYS,
                summary="Revoke an API key: refused from now on (admin)", targeted=True)
    return r
