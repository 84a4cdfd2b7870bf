"""Who is who: people by name, users, teams and API keys (never a secret).

Admins manage users, teams and API keys; a manager may read the users of their own
team; everybody may read their own user and change their own password (with the
current one).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from commands import identity as ci
from commands.application import Principal
from api.encoding import JSONResponse
from api.auth import require_scope
from api.consistency import OPENAPI_PARAMETERS, read_after
from readapi.listing import MAX_LIMIT
from readapi.queries import reading
from api.services import Caller, services
from api.signin import SCOPE, UserOut, _forbidden, _user_view


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


def build_people_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/people", list_people, methods=["GET"], response_model=People, operation_id="list_people",
                    summary="Every user's name and role (to show people by name)",
                    openapi_extra={"parameters": OPENAPI_PARAMETERS})
    r.add_api_route("/users", list_users, methods=["GET"], response_model=UserPage, operation_id="list_users",
                    summary="Users (admin: all; manager: their team)",
                    openapi_extra={"parameters": OPENAPI_PARAMETERS})
    r.add_api_route("/users/{id}", get_user, methods=["GET"], response_model=UserOut, operation_id="get_user",
                    summary="One user, now (ETag: version)", responses={404: {"description": "No such user"}})
    r.add_api_route("/teams", list_teams, methods=["GET"], response_model=TeamPage, operation_id="list_teams",
                    summary="Teams", openapi_extra={"parameters": OPENAPI_PARAMETERS})
    r.add_api_route("/api-keys", list_api_keys, methods=["GET"], response_model=ApiKeyPage,
                    operation_id="list_api_keys", summary="API keys, without secrets (admin)",
                    openapi_extra={"parameters": OPENAPI_PARAMETERS})
    return r
