"""Errors as problem+json (RFC 9457), mapped from domain exceptions in one place."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from eventsourcing import persistence
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from api.encoding import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands import DomainError

PROBLEM_TYPE = "https://crm.example/problems/"
MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger("crm.http")


class Problem(Exception):
    """Raised by a route to answer with this problem (status, code, field, extras)."""

    def __init__(self, status: int, detail: str, *, code: str, title: str | None = None,
                 field: str | None = None, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.title = title
        self.field = field
        self.headers = headers
        self.extra = extra


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    code: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


#: What a database that cannot be reached raises: psycopg's own errors (a refused or
#: broken connection, PoolTimeout when no connection came within the pool's timeout) and
#: eventsourcing's wrappers of them.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError, psycopg.InterfaceError,
    persistence.OperationalError, persistence.InterfaceError,
)
#: Seconds a client is asked to wait before trying again when the database is unreachable.
OUTAGE_RETRY_AFTER = 5


def outage_of(exc: BaseException) -> Exception | None:
    """The database-unreachable error behind ``exc`` (itself or a cause), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OUTAGE_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def unavailable(exc: BaseException) -> JSONResponse:
    """503 with Retry-After: the database did not answer (nothing was changed by halves:
    a write either committed before or is not stored)."""
    return problem(503, "Service unavailable",
                   "the database is unreachable; try again shortly", code="database-unavailable",
                   headers={"Retry-After": str(OUTAGE_RETRY_AFTER)})


class OutageMiddleware:
    """Answers 503 for an outage error that reached no handler because something wrapped
    it (a RuntimeError raised from an OperationalError): the handlers match by class only,
    and the catch-all one leaves the error to be raised again and logged as a crash."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            outage = outage_of(exc)
            if outage is None or started:
                raise
            log.warning("database unreachable", path=scope.get("path"),
                        error=f"{type(outage).__name__}: {outage}")
            await unavailable(outage)(scope, receive, send)


_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    428: "Precondition required",
    431: "Request header fields too large",
    500: "Internal server error",
    503: "Service unavailable",
}


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        source, parts = parts[0], parts[1:]
        if source == "header":
            return "-".join(w.capitalize() for w in "_".join(parts).split("_"))
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = None
        current = exc.extra.get("current_version")
        if current is not None:
            headers = {"ETag": f'"{current}"'}
        return problem(
            exc.status,
            _TITLES.get(exc.status, "Refused"),
            exc.detail,
            code=exc.code,
            field=exc.field,
            headers=headers,
            **{k: v for k, v in exc.extra.items()},
        )

    @app.exception_handler(Problem)
    async def route_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(
            exc.status,
            exc.title or _TITLES.get(exc.status, "Error"),
            exc.detail,
            code=exc.code,
            field=exc.field,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                position = (err.get("loc") or ("body", "?"))[-1]
                return problem(
                    400,
                    "Malformed JSON",
                    f"the body is not valid JSON (at character {position})",
                    code="malformed-json",
                    field="body",
                )
            loc = tuple(err.get("loc", ()))
            # Model-level checks name their field at the start of the message.
            msg = str(err.get("msg", "invalid"))
            field = _loc_to_field(loc)
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            errors.append({"field": field, "reason": msg, "type": err.get("type")})
        first = errors[0] if errors else {"field": "body", "reason": "invalid"}
        return problem(
            422,
            "Invalid request",
            f"{first['field']}: {first['reason']}",
            code="validation",
            field=first["field"],
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem(
            exc.status_code,
            _TITLES.get(exc.status_code, "Error"),
            detail,
            code=f"http-{exc.status_code}",
            headers=getattr(exc, "headers", None),
        )

    async def database_unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unreachable", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return unavailable(exc)

    for error in OUTAGE_ERRORS:
        app.add_exception_handler(error, database_unreachable)

    app.add_middleware(OutageMiddleware)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        outage = outage_of(exc)
        if outage is not None:  # wrapped on its way up (a runner, the group commit ...)
            return await database_unreachable(request, outage)
        log.exception("unhandled error", path=request.url.path)
        return problem(500, "Internal server error", "an unexpected error occurred", code="internal")
