"""Signing in: /auth/token, /auth/refresh and /auth/me (who the caller is).

Admins manage users, teams and API keys; a manager may read the users of their own
team; everybody may read their own user and change their own password (with the
current one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from commands import identity as ci
from commands.base import CheckedInput
from api.encoding import JSONResponse
from api.auth import Authenticator, client_address
from api.problems import Problem
from api.services import Caller, services

SCOPE = "identity"


def _forbidden(detail: str) -> Problem:
    return Problem(403, detail, code="forbidden")


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


def build_signin_router() -> APIRouter:
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
    r.add_api_route("/auth/me", me, methods=["GET"], response_model=Me, operation_id="who_am_i",
                    summary="The caller")
    return r
