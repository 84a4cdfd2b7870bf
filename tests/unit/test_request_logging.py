"""Every log line of a request carries its correlation id."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog
from structlog.testing import capture_logs

from commands import HANDLERS
from commands.application import CommandService, CrmApplication
from crm.app import create_app
from api.auth import JwtSettings, TokenIssuer
from api.services import Services


def _app() -> tuple[Any, TokenIssuer]:
    app = CrmApplication({}, kek=b"k" * 32)
    tokens = TokenIssuer(JwtSettings(secret="s" * 32, issuer="crm", audience="crm-api"))
    return create_app(Services(app, CommandService(app, HANDLERS, email_key=b"e" * 32), tokens)), tokens


def _send(api: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://crm") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_request_lines_carry_the_callers_correlation_id() -> None:
    api, tokens = _app()
    headers = {"Authorization": "Bearer " + tokens.issue("u1", "sales_rep"), "X-Correlation-ID": "abc-123"}
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        r = _send(api, "POST", "/api/v1/customers", json={"kind": "person", "name": "Ann"}, headers=headers)
    assert r.status_code == 201
    assert r.headers["x-correlation-id"] == "abc-123"
    request_lines = [e for e in logs if e.get("event") == "request"]
    assert request_lines and all(e.get("correlation_id") == "abc-123" for e in request_lines)


def test_the_log_of_an_unexpected_error_carries_the_correlation_id() -> None:
    api, tokens = _app()

    @api.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        r = _send(api, "GET", "/boom", headers={"X-Correlation-ID": "err-9"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert {e.get("correlation_id") for e in logs} == {"err-9"}
    assert any(e.get("event") == "unhandled error" for e in logs)


def test_a_correlation_id_is_made_when_none_is_sent() -> None:
    api, _ = _app()
    r = _send(api, "GET", "/health")
    assert len(r.headers["x-correlation-id"]) == 32
