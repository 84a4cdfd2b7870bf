"""The request path's shortcuts answer exactly as the long way: the route index, the
remembered tokens, the orjson responses."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse

from tests.asgi_client import Client
from api.auth import JwtSettings, TokenIssuer
from api.encoding import JSONResponse, masked_row
from api.routing import RouteIndex, install_route_index, shape


def test_shape_names_only_whole_lower_case_uuid_segments() -> None:
    u = "0b6c2b1e-1111-2222-3333-444455556666"
    assert shape(f"/api/v1/customers/{u}/current") == "/api/v1/customers/{uuid}/current"
    assert shape(f"/api/v1/customers/{u}") == "/api/v1/customers/{uuid}"
    assert shape(f"/api/v1/customers/{u.upper()}") == f"/api/v1/customers/{u.upper()}"
    assert shape(f"/api/v1/customers/x{u}") == f"/api/v1/customers/x{u}"
    assert shape("/api/v1/customers") == "/api/v1/customers"


def _app(*, indexed: bool = True) -> FastAPI:
    app = FastAPI()
    first, second = APIRouter(prefix="/api"), APIRouter(prefix="/api")

    @first.post("/things")
    def make() -> dict[str, str]:
        return {"route": "make"}

    @first.get("/things/{id}/history")
    def history(id: uuid.UUID) -> dict[str, str]:
        return {"route": "history", "id": str(id)}

    @second.get("/things")
    def things() -> dict[str, str]:
        return {"route": "list"}

    @second.get("/things/{id}")
    def thing(id: uuid.UUID) -> dict[str, str]:
        if id.int == 0:
            raise HTTPException(404, "no such thing")
        return {"route": "thing", "id": str(id)}

    app.include_router(first)
    app.include_router(second)
    if indexed:
        assert install_route_index(app)
        assert isinstance(app.router.middleware_stack, RouteIndex)
    return app


def test_the_route_index_answers_as_fastapi_does_and_learns_each_shape_once() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    requests = [("GET", "/api/things"), ("GET", "/api/things"), ("GET", f"/api/things/{a}"),
                ("GET", f"/api/things/{b}"), ("GET", f"/api/things/{b}/history"), ("POST", "/api/things"),
                ("DELETE", "/api/things"), ("GET", "/api/nothing"), ("GET", "/api/things/not-a-uuid"),
                ("GET", f"/api/things/{uuid.UUID(int=0)}"), ("GET", f"/api/things/{str(a).upper()}")]
    indexed, plain = _app(), _app(indexed=False)
    ours, theirs = Client(indexed), Client(plain)
    for method, path in requests:
        r, expected = ours.request(method, path), theirs.request(method, path)
        assert (r.status_code, r.content, r.headers.get("allow")) == (
            expected.status_code, expected.content, expected.headers.get("allow")), (method, path)
    assert ours.get("/api/things").json() == {"route": "list"}  # after a POST-only route
    index = indexed.router.middleware_stack
    assert isinstance(index, RouteIndex)
    # every request that matched a route, through the index (405 and 404 by FastAPI's search)
    assert index.hits == 10
    assert len(index._index) == 8  # one search for each (method, shape)


def test_routes_added_after_the_index_are_found() -> None:
    app = _app()
    client = Client(app)
    assert client.get("/late").status_code == 404

    @app.get("/late")
    def late() -> dict[str, str]:
        return {"route": "late"}

    assert client.get("/late").json() == {"route": "late"}


def test_a_verified_token_is_remembered_only_until_it_expires() -> None:
    tokens = TokenIssuer(JwtSettings(secret="s" * 32, issuer="crm", audience="crm-api", leeway_seconds=0))
    token = tokens.issue("rep-1", "sales_rep", ttl=timedelta(seconds=1))
    assert tokens.verify(token).id == "rep-1"
    expires = tokens._verified[token][-1]
    assert tokens.verify(token).id == "rep-1"  # from memory
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(HTTPException) as e:
        tokens.verify(token)
    assert e.value.status_code == 401 and "expired" in str(e.value.detail)
    with pytest.raises(HTTPException):
        tokens.verify(token + "x")  # a bad signature is never remembered as good


def test_orjson_responses_are_the_bytes_starlette_would_write() -> None:
    row = {"id": uuid.UUID(int=7), "name": "Zoë", "n": 3, "ok": True, "none": None, "x": 1.5,
           "at": datetime(2026, 12, 3, 12, 0, 0, 120000, tzinfo=UTC), "day": date(2026, 12, 3),
           "tags": ["a", "b"], "contacts": [{"kind": "email", "primary": False}],
           "pipeline": {"EUR": Decimal("1000.50")}, "_s0": "sort key", "secret": "hidden"}
    as_read = masked_row(row, personal=("name",), hidden=("secret",), mask=False, as_read=True)
    converted = masked_row(row, personal=("name",), hidden=("secret",), mask=False)
    assert JSONResponse(as_read).body == StarletteJSONResponse(converted).body
    masked = masked_row(row, personal=("name", "none"), hidden=(), mask=True, as_read=True)
    assert masked["name"] == "***" and masked["none"] is None
