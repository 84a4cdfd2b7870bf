"""The web UI's sign-in session: a refresh cookie instead of a token kept in the browser.

``POST /api/v1/auth/session`` signs in as ``POST /api/v1/auth/token`` does and answers the
same short-lived access token, which the UI keeps in memory only; beside it, two cookies:

* ``crm_refresh``: the session's secret (256 random bits; stored only as SHA-256 in
  ``crm_web_sessions``). ``HttpOnly`` (no script reads it), ``SameSite=Strict``, ``Path``
  ``/api/v1/auth/session`` (sent to nothing else), ``Secure`` over HTTPS (or always, with
  ``CRM_SESSION_COOKIE_SECURE=true``), gone at the session's maximum age.
* ``crm_csrf``: the session's CSRF token, readable by the UI's script (``Path=/``,
  ``SameSite=Strict``, not ``HttpOnly``).

``POST /api/v1/auth/session/refresh`` (a new access token) and ``DELETE
/api/v1/auth/session`` (sign out: the session is revoked, both cookies cleared) need the
refresh cookie and the header ``X-CSRF-Token`` equal to the ``crm_csrf`` cookie and to the
token stored for that session (double submit, bound to the session), and, when the browser
sends ``Origin``, an origin of the server's own host. A session ends when it is revoked,
when its user is deactivated, at the session maximum after signing in, and when it was not
refreshed before its last access token expired (an idle browser signs in again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from eventstore.recorder import WebSession
from api.auth import Authenticator, client_address
from api.encoding import JSONResponse
from api.signin import Login, TokenOut, login, renewed_token
from api.problems import Problem
from api.services import services

SESSION_PATH = "/api/v1/auth/session"
REFRESH_COOKIE = "crm_refresh"
CSRF_COOKIE = "crm_csrf"
CSRF_HEADER = "X-CSRF-Token"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _authenticator(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.authenticator
    return found


def _secure(request: Request) -> bool:
    forced: bool | None = getattr(request.app.state, "session_cookie_secure", None)
    return forced if forced is not None else request.url.scheme == "https"


def _set_cookies(response: Response, request: Request, secret: str, csrf: str, max_age: int) -> None:
    secure = _secure(request)
    response.set_cookie(REFRESH_COOKIE, secret, max_age=max_age, path=SESSION_PATH, secure=secure,
                        httponly=True, samesite="strict")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, path="/", secure=secure, httponly=False,
                        samesite="strict")


def _clear_cookies(response: Response, request: Request) -> None:
    secure = _secure(request)
    response.delete_cookie(REFRESH_COOKIE, path=SESSION_PATH, secure=secure, httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, httponly=False, samesite="strict")


def _idle_end(auth: Authenticator, now: datetime) -> datetime:
    """Until when a session may still be refreshed: its last access token's expiry (the UI
    refreshes before it; both times are the server's, so no leeway is needed)."""
    return now + auth.access_token_ttl


def _no_session(detail: str) -> Problem:
    return Problem(401, detail, code="session-ended", headers={"WWW-Authenticate": 'Bearer realm="crm"'})


def _checked_session(request: Request, *, required: bool) -> WebSession | None:
    """The session of the request's refresh cookie, after the CSRF checks (403); None
    without a cookie when not ``required`` (401 when required)."""
    origin = request.headers.get("origin")
    # The host only: behind a proxy that ends TLS the server itself sees http.
    if origin is not None and urlsplit(origin).netloc.lower() != request.url.netloc.lower():
        raise Problem(403, "a request from another origin", code="csrf")
    secret = request.cookies.get(REFRESH_COOKIE)
    if not secret:
        if required:
            raise _no_session("no session cookie: sign in")
        return None
    sent = request.headers.get(CSRF_HEADER) or ""
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    stored = services(request).app.recorder.web_session(_hash(secret))  # type: ignore[attr-defined]
    if not sent or not hmac.compare_digest(sent.encode(), cookie.encode()) or (
            stored is not None and not hmac.compare_digest(_hash(sent), stored.csrf_sha256)):
        raise Problem(403, f"send the {CSRF_HEADER} header with the value of the {CSRF_COOKIE} cookie",
                      code="csrf", field=CSRF_HEADER)
    if stored is None:
        raise _no_session("unknown session: sign in")
    result: WebSession = stored
    return result


def sign_in(body: Login, request: Request) -> Any:
    """Sign in with a username and password: a short-lived bearer token (keep it in memory)
    and the session's refresh and CSRF cookies."""
    answer: JSONResponse = login(body, request)
    auth = _authenticator(request)
    claims = auth.tokens.claims(orjson.loads(answer.body)["access_token"])
    now = datetime.now(UTC)
    auth_time = datetime.fromtimestamp(int(claims.get("auth_time", claims["iat"])), UTC)
    expires_at = auth_time + auth.max_session
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    services(request).app.recorder.open_web_session(WebSession(  # type: ignore[attr-defined]
        _hash(secret), _hash(csrf), UUID(claims["sub"]), auth_time, expires_at, _idle_end(auth, now)))
    _set_cookies(answer, request, secret, csrf, max(0, int((expires_at - now).total_seconds())))
    return answer


def refresh_session(request: Request) -> Any:
    """A new access token for the session of the refresh cookie (CSRF header required)."""
    auth = _authenticator(request)
    auth.limits.check_caller(f"address:{client_address(request)}")
    session = _checked_session(request, required=True)
    if session is None:  # not so: a session is required
        raise _no_session("no session cookie: sign in")
    now = datetime.now(UTC)
    if session.revoked_at is not None:
        raise _no_session("the session was signed out: sign in")
    if now >= session.expires_at:
        raise _no_session("the session is too old to refresh; sign in again")
    if now >= session.valid_until:
        raise _no_session("the session was idle for longer than its token lived: sign in again")
    answer = renewed_token(request, str(session.user_id), int(session.auth_time.timestamp()), now)
    if not services(request).app.recorder.extend_web_session(  # type: ignore[attr-defined]
            session.secret_sha256, _idle_end(auth, now)):
        raise _no_session("the session was signed out: sign in")
    return answer


def sign_out(request: Request) -> Response:
    """Sign out: the session of the refresh cookie is revoked and both cookies cleared
    (CSRF header required when the cookie is sent; without the cookie: nothing to end)."""
    auth = _authenticator(request)
    auth.limits.check_caller(f"address:{client_address(request)}")
    session = _checked_session(request, required=False)
    if session is not None:
        services(request).app.recorder.revoke_web_session(  # type: ignore[attr-defined]
            session.secret_sha256, datetime.now(UTC))
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    _clear_cookies(response, request)
    return response


def build_session_router() -> APIRouter:
    r = APIRouter()
    r.add_api_route(SESSION_PATH, sign_in, methods=["POST"], response_model=TokenOut, operation_id="sign_in_browser",
                    summary="Sign in from the web UI: a short-lived token and the session's refresh cookie",
                    responses={401: {"description": "Wrong username or password"},
                               429: {"description": "Too many attempts (see Retry-After)"}})
    r.add_api_route(SESSION_PATH + "/refresh", refresh_session, methods=["POST"], response_model=TokenOut,
                    operation_id="refresh_browser_session",
                    summary="A new token for the session of the refresh cookie (X-CSRF-Token required)",
                    responses={401: {"description": "No session, or it ended (signed out, too old, idle, "
                                                    "deactivated user)"},
                               403: {"description": "Missing or wrong X-CSRF-Token, or another origin"}})
    r.add_api_route(SESSION_PATH, sign_out, methods=["DELETE"], status_code=204, operation_id="sign_out_browser",
                    summary="Sign out: the session is revoked and its cookies cleared (X-CSRF-Token required)",
                    response_class=Response,
                    responses={403: {"description": "Missing or wrong X-CSRF-Token, or another origin"}})
    return r
