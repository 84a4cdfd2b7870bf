"""Correlation ids and one structured log line per request."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-correlation-id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
log = structlog.get_logger("crm.http")


class CorrelationMiddleware:
    """Takes X-Correlation-ID from the caller (or makes one), binds it to every log
    line of the request, stores it for the command's events, and echoes it back."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", []):
            if name == HEADER.encode():
                given = value.decode("latin-1")
                break
        correlation_id = given if given and _VALID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        status: dict[str, Any] = {"code": 500}
        started = time.perf_counter()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-correlation-id", correlation_id.encode()))
                message["headers"] = headers
            await send(message)

        structlog.contextvars.clear_contextvars()  # nothing from an earlier request
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        try:
            await self.app(scope, receive, send_with_header)
        finally:
            log.info(
                "request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status["code"],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            # Left bound on purpose: the outermost error handler logs after we return.
