"""Errors of a database that cannot be reached answer 503 with Retry-After, also when
wrapped on their way up; anything else unexpected stays a 500."""

from __future__ import annotations

import anyio
import httpx
import psycopg
import pytest
from eventsourcing import persistence
from fastapi import FastAPI
from psycopg_pool import PoolTimeout

from api import problems
from tests.asgi_client import Client


def _raise(exc: BaseException) -> None:
    raise exc


def _wrapped() -> None:
    try:
        raise persistence.OperationalError("connection refused")
    except persistence.OperationalError as e:
        raise RuntimeError("the group commit failed") from e


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    cases = {
        "psycopg": lambda: _raise(psycopg.OperationalError("server closed the connection unexpectedly")),
        "pool": lambda: _raise(PoolTimeout("couldn't get a connection after 2.00 sec")),
        "interface": lambda: _raise(psycopg.InterfaceError("the connection is closed")),
        "eventsourcing": lambda: _raise(persistence.OperationalError("connection failed")),
        "wrapped": _wrapped,
        "other": lambda: _raise(RuntimeError("a bug")),
    }
    for name, fail in cases.items():
        app.add_api_route(f"/{name}", lambda fail=fail: fail(), methods=["GET"])
    return app


@pytest.mark.parametrize("case", ["psycopg", "pool", "interface", "eventsourcing", "wrapped"])
def test_database_unreachable_is_503_with_retry_after(case: str) -> None:
    r = Client(_app()).get(f"/{case}")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == str(problems.OUTAGE_RETRY_AFTER)
    body = r.json()
    assert body["type"] == problems.PROBLEM_TYPE + "database-unavailable"
    assert "unreachable" in body["detail"] and "connection" not in body["detail"]  # no internals


def test_other_errors_stay_500() -> None:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/other")

    r = anyio.run(go)
    assert r.status_code == 500 and "retry-after" not in r.headers


def test_outage_of_walks_the_chain_once() -> None:
    inner = psycopg.OperationalError("down")
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert problems.outage_of(outer) is inner
    loop = RuntimeError("a")
    loop.__context__ = loop
    assert problems.outage_of(loop) is None


def test_every_database_url_gets_a_connect_timeout_and_keepalives_unless_it_names_them() -> None:
    from urllib.parse import parse_qs, urlparse

    from crm.bootstrap import KEEPALIVES, bounded_url

    q = parse_qs(urlparse(bounded_url("postgresql://u@h:5432/db", 2)).query)
    assert q["connect_timeout"] == ["2"] and {k: v[0] for k, v in q.items() if k in KEEPALIVES} == KEEPALIVES
    q = parse_qs(urlparse(bounded_url("postgresql://u@h/db?sslmode=require&keepalives_idle=60", 3)).query)
    assert q["sslmode"] == ["require"] and q["keepalives_idle"] == ["60"] and q["connect_timeout"] == ["3"]
    assert q["keepalives_count"] == ["3"]
