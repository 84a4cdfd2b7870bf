"""Signing in and who is who: /auth/token, /auth/me, users, teams and API keys.

Admins manage users, teams and API keys; a manager may read the users of their own
team; everybody may read their own user and change their own password (with the
current one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from commands import identity as ci
from commands.base import CheckedInput
from commands.application import Principal
from commands.application import Request as CommandRequest
from readapi.encoding import JSONResponse
from readapi.auth import Authenticator, client_address, require_scope
from readapi.consistency import OPENAPI_PARAMETERS, read_after
from readapi.listing import MAX_LIMIT
from readapi.problems import Problem
from readapi.queries import reading
from readapi.routes import Call, Caller, WriteResponse, _all_optional, _optional_body, _run, add_command, services

USERS = "/api/v1/users"
TEAMS = "/api/v1/teams"
API_KEYS = "/api/v1/api-keys"
SCOPE = "identity"


class Login(CheckedInput):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    id: UUID
    username: str
    display_name: str | None
    email: str | None = None
    role: str
    team_id: UUID | None
    active: bool = True
    version: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the token is valid for.")
    user: UserOut


class Me(BaseModel):
    id: str
    kind: str = Field(description="user, api_key or token (a token for no user, e.g. from `crm token`)")
    role: str
    team_id: str | None
    username: str | None = None
    display_name: str | None = None
    name: str | None = Field(default=None, description="An API key's name.")


class UserPage(BaseModel):
    items: list[UserOut]
    next_after: str | None = Field(description="Pass as ?after= for the next page.")


class PersonOut(BaseModel):
    id: UUID
    display_name: str | None
    role: str
    active: bool


class People(BaseModel):
    items: list[PersonOut]


class TeamOut(BaseModel):
    id: UUID
    name: str
    manager_id: UUID | None
    version: int


class TeamPage(BaseModel):
    items: list[TeamOut]


class ApiKeyOut(BaseModel):
    id: UUID
    name: str
    role: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_by: str
    created_at: datetime


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]


class IssuedApiKey(BaseModel):
    id: UUID
    type: str
    version: int
    position: int | None
    key: str | None = Field(description="The key to send as `Authorization: Bearer <key>` or "
                            "`X-API-Key: <key>`. Shown only in this answer (null when an "
                            "earlier request with this Idempotency-Key issued it).")
    result: dict[str, Any] = Field(default_factory=dict)


def authenticator(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.authenticator
    return found


def _user_view(user: Any) -> dict[str, Any]:
    return {"id": str(user.id), "username": user.username, "display_name": user.display_name,
            "email": user.email, "role": user.role,
            "team_id": str(user.team_id) if user.team_id else None, "active": user.active,
            "version": user.version,
            "created_at": user.created_on.isoformat() if user.created_on else None,
            "updated_at": user.modified_on.isoformat() if user.modified_on else None}


def _forbidden(detail: str) -> Problem:
    return Problem(403, detail, code="forbidden")


def login(body: Login, request: Request) -> Any:
    """Sign in with a username and password: a short-lived bearer token."""
    auth = authenticator(request)
    auth.limits.check_login(body.username, client_address(request))
    signed_in = ci.sign_in(services(request).app, body.username, body.password)
    if signed_in is None:
        # One answer for an unknown name, a wrong password and a deactivated user.
        raise Problem(401, "wrong username or password", code="invalid-credentials",
                      headers={"WWW-Authenticate": 'Bearer realm="crm"'})
    user = signed_in.user
    team = str(user.team_id) if user.team_id else None
    ttl = auth.access_token_ttl
    token = auth.tokens.issue(str(user.id), user.role, ttl=ttl, team_id=team, generation=signed_in.generation)
    view = _user_view(user)
    return JSONResponse({
        "access_token": token, "token_type": "bearer", "expires_in": int(ttl.total_seconds()),
        "user": {k: view[k] for k in ("id", "username", "display_name", "role", "team_id")},
    }, headers={"Cache-Control": "no-store"})


def refresh(caller: Caller, request: Request) -> Any:
    """A new token (new id, fresh expiry) for the signed-in user's valid token, with the
    user's current role and team; refused (401) for an expired, forged or foreign token,
    a deactivated or unknown user, or a session older than the configured maximum."""
    auth = authenticator(request)
    scheme, _, presented = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip() or presented.strip().startswith("crmk_"):
        raise _forbidden("only a signed-in user's token can be refreshed (not an API key)")
    claims = auth.tokens.claims(presented.strip())  # the caller was authenticated by it: valid
    auth_time = int(claims.get("auth_time", claims.get("iat", 0)))
    return renewed_token(request, caller.id, auth_time, datetime.now(UTC),
                         generation=int(claims.get("gen", 0)))


def renewed_token(request: Request, user_id: str, auth_time: int, now: datetime, *,
                  generation: int | None = None) -> JSONResponse:
    """A new token for a user who signed in at ``auth_time`` (their current role and team),
    as POST /auth/refresh answers it (also for a browser's refresh cookie); refused (401)
    for a deactivated user, a token of an earlier ``generation`` (issued before a change
    of the user's role, team or password) or a session older than the configured maximum,
    403 for a subject that is no user. A browser's session has no generation: such a
    change revokes it where the change is stored."""
    auth = authenticator(request)
    try:
        # the generation before the events: a change in between ends the new token too
        current_generation = auth.generation(UUID(user_id))
        user = services(request).app.load(ci.User, UUID(user_id))
    except (ValueError, ci.NotFound):  # a script's token (`crm token`), or a user who never was
        raise _forbidden("only a signed-in user's token can be refreshed") from None
    if not user.active:
        raise Problem(401, "the user is deactivated", code="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="crm"'})
    if generation is not None and generation != current_generation:  # read now, not as remembered
        raise Problem(401, "the token was issued before the user's role, team or password changed; "
                      "sign in again", code="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="crm"'})
    if now.timestamp() - auth_time > auth.max_session.total_seconds():
        raise Problem(401, "the session is too old to refresh; sign in again", code="session-expired",
                      headers={"WWW-Authenticate": 'Bearer realm="crm"'})
    team = str(user.team_id) if user.team_id else None
    ttl = auth.access_token_ttl
    token = auth.tokens.issue(str(user.id), user.role, ttl=ttl, team_id=team, now=now, auth_time=auth_time,
                              generation=current_generation)
    view = _user_view(user)
    return JSONResponse({
        "access_token": token, "token_type": "bearer", "expires_in": int(ttl.total_seconds()),
        "user": {k: view[k] for k in ("id", "username", "display_name", "role", "team_id")},
    }, headers={"Cache-Control": "no-store"})


def me(caller: Caller, request: Request) -> Any:
    """The caller: their id, role and team, and their name when a user."""
    out: dict[str, Any] = {"id": caller.id, "kind": "token", "role": caller.role, "team_id": caller.team_id}
    app = services(request).app
    try:
        record_id = UUID(caller.id)
    except ValueError:
        return out
    try:
        user = app.load(ci.User, record_id)
        out.update(kind="user", username=user.username, display_name=user.display_name)
    except ci.NotFound:
        try:
            key = app.load(ci.ApiKey, record_id)
            out.update(kind="api_key", name=key.name)
        except ci.NotFound:
            pass
    return out


def _may_read_user(caller: Principal, user: Any) -> bool:
    if caller.role == "admin" or caller.id == str(user.id):
        return True
    return caller.role == "manager" and caller.team_id is not None and caller.team_id == str(user.team_id)


def get_user(id: UUID, caller: Caller, request: Request) -> Any:
    """A user as they are now (from their events; ETag: the version for If-Match)."""
    user = services(request).app.load(ci.User, id)
    if not _may_read_user(caller, user):
        raise _forbidden("only admins, the user and their team's manager may read this user")
    return JSONResponse(_user_view(user), headers={"ETag": f'"{user.version}"'})


def list_users(
    caller: Caller,
    request: Request,
    team_id: UUID | None = None,
    role: str | None = None,
    active: bool | None = None,
    after: Annotated[str | None, Query(max_length=64, description="The last username of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> Any:
    """Users by username; admins see all, a manager their own team."""
    if caller.role == "manager":
        if caller.team_id is None:
            raise _forbidden("a manager with no team may list no users")
        if team_id is not None and str(team_id) != caller.team_id:
            raise _forbidden("a manager may list only their own team")
        team_id = UUID(caller.team_id)
    elif caller.role != "admin":
        raise _forbidden(f"the {caller.role} role may not list users")
    where, params = ["TRUE"], []
    for column, value in (("team_id", team_id), ("role", role), ("active", active)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if after is not None:
        where.append("username > %s")
        params.append(after.lower())
    with reading(services(request).read, read_after(request)) as conn:
        rows = conn.execute(
            "SELECT id, username, display_name, email, role, team_id, active, version, created_at,"
            f" updated_at FROM crm_read.users WHERE {' AND '.join(where)} ORDER BY username LIMIT %s",
            [*params, limit + 1]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [UserOut.model_validate(r).model_dump(mode="json") for r in rows]
    return {"items": items, "next_after": rows[-1]["username"] if more else None}


def list_people(caller: Caller, request: Request) -> Any:
    """Every user's id, name and role, so that screens show who did what by name (names of
    colleagues are no secret; usernames, e-mail addresses and teams stay with /users)."""
    with reading(services(request).read, read_after(request)) as conn:
        rows = conn.execute("SELECT id, coalesce(display_name, username) AS display_name, role, active"
                            " FROM crm_read.users ORDER BY display_name, id").fetchall()
    return {"items": [PersonOut.model_validate(r).model_dump(mode="json") for r in rows]}


def list_teams(caller: Caller, request: Request) -> Any:
    """Every team (names and managers are no secret to colleagues)."""
    with reading(services(request).read, read_after(request)) as conn:
        rows = conn.execute("SELECT id, name, manager_id, version FROM crm_read.teams ORDER BY name, id").fetchall()
    return {"items": [TeamOut.model_validate(r).model_dump(mode="json") for r in rows]}


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


def list_api_keys(caller: Caller, request: Request) -> Any:
    """Every API key (never its secret), with when it was last used."""
    require_scope(caller, SCOPE)
    svc = services(request)
    used = {k.key_id: k for k in svc.app.recorder.api_keys()}  # type: ignore[attr-defined]
    with reading(svc.read, read_after(request)) as conn:
        rows = conn.execute("SELECT id, name, role, expires_at, revoked_at, created_by, created_at"
                            " FROM crm_read.api_keys ORDER BY created_at, id").fetchall()
    items = []
    for r in rows:
        stored = used.get(r["id"])
        items.append(ApiKeyOut.model_validate(
            {**r, "revoked_at": r["revoked_at"] or (stored.revoked_at if stored else None),
             "last_used_at": stored.last_used_at if stored else None}).model_dump(mode="json"))
    return {"items": items}


def build_identity_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/auth/token", login, methods=["POST"], response_model=TokenOut, operation_id="login",
                    summary="Sign in with username and password: a short-lived bearer token",
                    responses={401: {"description": "Wrong username or password"},
                               429: {"description": "Too many attempts (see Retry-After)"}})
    r.add_api_route("/auth/refresh", refresh, methods=["POST"], response_model=TokenOut,
                    operation_id="refresh_token",
                    summary="Exchange the signed-in user's valid token for a new one (fresh expiry)",
                    responses={401: {"description": "Expired, invalid or deactivated user's token, or "
                                                    "the session is too old (sign in again)"},
                               403: {"description": "Not a user's sign-in token (an API key, a script's token)"}})
    r.add_api_route("/people", list_people, methods=["GET"], response_model=People, operation_id="list_people",
                    summary="Every user's name and role (to show people by name)",
                    openapi_extra={"parameters": OPENAPI_PARAMETERS})
    r.add_api_route("/auth/me", me, methods=["GET"], response_model=Me, operation_id="who_am_i",
                    summary="The caller")
    add_command(r, "/users", ci.CreateUser, SCOPE, USERS, summary="Create a user (admin)", targeted=False)
    r.add_api_route("/users", list_users, methods=["GET"], response_model=UserPage, operation_id="list_users",
                    summary="Users (admin: all; manager: their team)",
                    openapi_extra={"parameters": OPENAPI_PARAMETERS})
    r.add_api_route("/users/{id}", get_user, methods=["GET"], response_model=UserOut, operation_id="get_user",
                    summary="One user, now (ETag: version)", responses={404: {"description": "No such user"}})
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
    r.add_api_route("/teams", list_teams, methods=["GET"], response_model=TeamPage, operation_id="list_teams",
                    summary="Teams", openapi_extra={"parameters": OPENAPI_PARAMETERS})
    r.add_api_route("/api-keys", issue_api_key, methods=["POST"], response_model=IssuedApiKey,
                    status_code=201, operation_id="IssueApiKey",
                    summary="Issue an API key for a system (admin); its secret is shown once")
    r.add_api_route("/api-keys", list_api_keys, methods=["GET"], response_model=ApiKeyPage,
                    operation_id="list_api_keys", summary="API keys, without secrets (admin)",
                    openapi_extra={"parameters": OPENAPI_PARAMETERS})
    add_command(r, "/api-keys/{id}/revocation", ci.RevokeApiKey, SCOPE, API_KEYS,
                summary="Revoke an API key: refused from now on (admin)", targeted=True)
    return r
