"""Accepted text on the whole HTTP surface: every request body model checks it, every query
and path parameter of every route refuses a control character with a 422 naming it, and
headers used as data never make a 500. (The commands' text fields, field by field, are
the property of tests/integration/test_text_property.py.)"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import anyio.from_thread
import httpx
import psycopg
import pytest

from commands.base import CheckedInput

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


class Client:
    def __init__(self, app: Any, portal: Any, token: str):
        self.portal = portal
        self.auth = {"Authorization": f"Bearer {token}"}
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                      base_url="http://test")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self.auth, **kwargs.get("headers", {})}
        return self.portal.call(functools.partial(self.http.request, method, path, **kwargs))  # type: ignore[no-any-return]


@pytest.fixture
def api(system: Any) -> Iterator[tuple[Any, Client]]:
    app = system.http_app()
    with anyio.from_thread.start_blocking_portal() as portal:
        yield app, Client(app, portal, system.tokens.issue("admin-1", "admin"))


def _routes(routes: Any) -> Iterator[Any]:
    for r in routes:
        if hasattr(r, "original_router"):  # an included router
            yield from _routes(r.original_router.routes)
        else:
            yield r


def test_every_request_body_is_a_model_that_checks_its_text(api: tuple[Any, Client]) -> None:
    app, _ = api
    bodies = {}
    for route in _routes(app.routes):
        body = getattr(route, "body_field", None)
        if body is None:
            continue
        model = body.field_info.annotation
        if typing.get_origin(model) in (typing.Union, types.UnionType):
            model = next(a for a in typing.get_args(model) if a is not type(None))
        bodies[f"{sorted(route.methods)[0]} {route.path}"] = model
    assert len(bodies) > 40
    unchecked = {k: m.__name__ for k, m in bodies.items() if not issubclass(m, CheckedInput)}
    assert not unchecked, f"request bodies whose text is not checked: {unchecked}"


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/api/v1/customers", {"kind": "person", "name": "Bad\x00Name"}, "name"),
    ("POST", "/api/v1/customers", {"kind": "person", "name": "Ada", "contacts": [
        {"kind": "address", "value": "1 Main St\x0b"}]}, "contacts.0.value"),
    ("POST", "/api/v1/customers", {"kind": "person", "name": "Ada", "tags": ["\ud800"]}, "tags.0"),
    ("POST", "/api/v1/tasks", {"title": "Call\x1b[31m"}, "title"),
    ("POST", "/api/v1/interactions", {"customer_id": str(uuid4()), "channel": "call", "direction": "inbound",
                                      "subject": "Hi\x00"}, "subject"),
    ("POST", "/api/v1/users", {"username": "eve", "password": "a long pass\x00word", "role": "analyst"},
     "password"),
    ("POST", "/api/v1/teams", {"name": "\x00"}, "name"),
    ("POST", "/api/v1/api-keys", {"name": "erp\x00", "role": "integration"}, "name"),
    ("POST", "/api/v1/auth/token", {"username": "ada\x00", "password": "whatever it is"}, "username"),
    ("POST", f"/api/v1/customers/{uuid4()}/erasure", {"reason": "GDPR\x00"}, "reason"),
    ("POST", "/api/v1/survey/0123456789abcdef", {"rating": 5, "comment": "great\x00"}, "comment"),
    ("POST", "/api/v1/analytics/sql", {"sql": "SELECT 1\x00"}, "sql"),
    ("POST", "/api/v1/analytics/export", {"directory": "/tmp/x\x00y"}, "directory"),
])
def test_a_body_with_refused_text_is_a_422_naming_the_field_and_stores_nothing(
        api: tuple[Any, Client], database_url: str, method: str, path: str, body: dict[str, Any],
        field: str) -> None:
    _, client = api
    # JSON escapes, as a client's encoder writes them (lone surrogates arrive so)
    r = client.request(method, path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field, r.text
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM crm_events").fetchone() == (0,)


def test_every_query_and_path_parameter_of_every_route_refuses_control_characters(
        api: tuple[Any, Client]) -> None:
    app, client = api
    tried = 0
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            path_params = [p["name"] for p in params if p["in"] == "path"]
            filled = path
            for name in path_params:
                filled = filled.replace(f"{{{name}}}", str(uuid4()) if name == "id" else "0123456789abcdef")
            for p in params:
                if p["in"] == "query":
                    for ch in ("\x00", "\x1f"):
                        r = client.request(method.upper(), f"{filled}?{quote(p['name'])}={quote(ch)}")
                        where = f"{method.upper()} {path} ?{p['name']}={ch!r}"
                        assert r.status_code == 422, f"{where}: {r.status_code} {r.text[:200]}"
                        assert r.json()["field"] == p["name"], where
                        tried += 1
                elif p["in"] == "path":
                    bad = path
                    for name in path_params:
                        bad = bad.replace(f"{{{name}}}", "a%00b" if name == p["name"] else
                                          (str(uuid4()) if name == "id" else "0123456789abcdef"))
                    r = client.request(method.upper(), bad)
                    where = f"{method.upper()} {path} {p['name']}"
                    assert r.status_code == 422, f"{where}: {r.status_code} {r.text[:200]}"
                    assert r.json()["field"] == p["name"], where
                    tried += 1
    assert tried > 100
    # the list filters' free text, any name, and a name holding one
    for url, field in (("/api/v1/customers?q=%00", "q"), ("/api/v1/tasks?q=a%01b", "q"),
                       ("/api/v1/customers?nope=%00", "nope"), ("/api/v1/customers?a%00b=1", "a\\x00b"),
                       ("/api/v1/customers/%00/timeline", "id"), ("/api/v1/customers?q=%ED%A0%80x%00", "q")):
        r = client.request("GET", url)
        assert r.status_code == 422 and r.json()["field"] == field, (url, r.text)
    # accepted text still works
    # (bytes that are not UTF-8, an encoded surrogate among them, are read as U+FFFD)
    for url in ("/api/v1/customers?q=%E6%97%A5%09", "/api/v1/customers?q=%F0%9F%8E%89",
                "/api/v1/customers?q=%ED%A0%80", "/api/v1/customers?q=%FF%FE", "/api/v1/customers?q=%7F"):
        assert client.request("GET", url).status_code == 200, url


def test_headers_used_as_data_never_make_a_500(api: tuple[Any, Client]) -> None:
    _, client = api
    body = {"kind": "person", "name": "Ada"}
    for name, value, status in (("Idempotency-Key", "a\x00b", 422), ("Idempotency-Key", "a\x1fb", 422),
                                ("Idempotency-Key", "日本", 422), ("If-Match", '"1\x00"', 422),
                                ("X-Correlation-ID", "c\x00d", 201), ("X-Min-Position", "\x00", 201)):
        raw = [(k.encode(), v.encode()) for k, v in client.auth.items()] + [
            (name.encode(), value.encode("utf-8")), (b"content-type", b"application/json")]
        r = client.portal.call(functools.partial(
            client.http.request, "POST", "/api/v1/customers", content=json.dumps(body),
            headers=httpx.Headers(raw)))
        assert r.status_code == status, (name, value, r.text)
    for value in ("Bearer \x00", "Bearer a\x1fb", "\x00"):
        r = client.portal.call(functools.partial(client.http.request, "GET", "/api/v1/customers",
                                                 headers=httpx.Headers([(b"authorization", value.encode())])))
        assert r.status_code == 401, (value, r.text)
    r = client.request("GET", "/api/v1/customers", headers={"X-Min-Position": "\x00"})
    assert r.status_code == 422 and r.json()["field"] == "X-Min-Position", r.text
