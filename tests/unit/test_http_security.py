"""The HTTP layer's security on the in-memory app: headers on every answer, the API docs
from local files under the same Content-Security-Policy, and /metrics behind its token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from commands import HANDLERS
from commands.application import CommandService, CrmApplication
from crm.app import create_app
from api.auth import JwtSettings, TokenIssuer
from api.services import Services
from api.security import CSP, REDOC_CSP
from api.web import mount_web_ui

METRICS_TOKEN = "metrics-" + "t" * 24


def _app(tmp_path: Path | None = None, **options: Any) -> tuple[Any, TokenIssuer]:
    app = CrmApplication({}, kek=b"k" * 32)
    tokens = TokenIssuer(JwtSettings(secret="s" * 32, issuer="crm", audience="crm-api"))
    docs = None
    if tmp_path is not None:
        dist = tmp_path / "dist"
        (dist / "docs").mkdir(parents=True)
        (dist / "index.html").write_text("<!doctype html><div id=app></div>")
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            (dist / "docs" / name).write_text(f"/* {name} */")
        docs = dist / "docs"
    api = create_app(Services(app, CommandService(app, HANDLERS, email_key=b"e" * 32), tokens),
                     docs_dir=docs, **options)
    if tmp_path is not None:
        mount_web_ui(api, tmp_path / "dist")
    return api, tokens


def _send(api: Any, *requests: tuple[str, str, dict[str, Any]], base: str = "http://crm") -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            return [await client.request(m, p, **kw) for m, p, kw in requests]

    return asyncio.run(go())


def _secured(r: httpx.Response, csp: str = CSP) -> None:
    assert r.headers["content-security-policy"] == csp, r.request.url
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    api, tokens = _app(tmp_path)

    @api.get("/boom")
    def boom() -> None:
        raise RuntimeError("an unexpected failure")

    auth = {"Authorization": "Bearer " + tokens.issue("u1", "sales_rep")}
    answers = _send(
        api,
        ("GET", "/", {}),  # the UI's page
        ("GET", "/customers", {}),  # a client route of the UI
        ("GET", "/health", {}),
        ("GET", "/api/v1/customers/00000000-0000-0000-0000-000000000001/current", {"headers": auth}),  # 404
        ("GET", "/api/v1/customers", {}),  # 401
        ("POST", "/api/v1/customers", {"json": {"kind": "alien"}, "headers": auth}),  # 422
        ("POST", "/api/v1/customers", {"json": {"kind": "person", "name": "Ann"}, "headers": auth}),  # 201
        ("GET", "/openapi.json", {}),
        ("GET", "/no/such/path", {}),
        ("GET", "/boom", {}),  # 500 from the handler of last resort
    )
    assert [r.status_code for r in answers] == [200, 200, 200, 404, 401, 422, 201, 200, 404, 500]
    for r in answers:
        _secured(r)
    assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    for part in ("default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert part in CSP


def test_the_docs_pages_load_only_local_files(tmp_path: Path) -> None:
    api, _ = _app(tmp_path)
    swagger, init, bundle, css, redoc, redoc_js, schema = _send(
        api, ("GET", "/docs", {}), ("GET", "/docs/init.js", {}), ("GET", "/docs/assets/swagger-ui-bundle.js", {}),
        ("GET", "/docs/assets/swagger-ui.css", {}), ("GET", "/redoc", {}),
        ("GET", "/docs/assets/redoc.standalone.js", {}), ("GET", "/openapi.json", {}))
    for r in (swagger, init, bundle, css, redoc, redoc_js, schema):
        assert r.status_code == 200, (r.request.url, r.text)
    _secured(swagger)
    _secured(redoc, REDOC_CSP)
    assert "script-src 'self';" in REDOC_CSP
    for page in (swagger.text, redoc.text):
        assert "http" not in page  # no CDN: every address is the server's own
        assert "<script>" not in page and "<style" not in page  # no inline script or style
    assert '<script src="/docs/assets/swagger-ui-bundle.js">' in swagger.text
    assert '<script src="/docs/init.js" data-openapi="/openapi.json">' in swagger.text
    assert '<link rel="stylesheet" href="/docs/assets/swagger-ui.css">' in swagger.text
    assert "SwaggerUIBundle(" in init.text and init.headers["content-type"].startswith("text/javascript")
    assert bundle.text == "/* swagger-ui-bundle.js */"
    assert '<redoc spec-url="/openapi.json">' in redoc.text and "/docs/assets/redoc.standalone.js" in redoc.text


def test_docs_without_the_build_say_how_to_build_it() -> None:
    api, _ = _app()
    swagger, redoc, schema = _send(api, ("GET", "/docs", {}), ("GET", "/redoc", {}), ("GET", "/openapi.json", {}))
    for r in (swagger, redoc):
        assert r.status_code == 503 and "scripts/setup" in r.text
        _secured(r)
    assert schema.status_code == 200


def test_metrics_need_their_token() -> None:
    api, tokens = _app(metrics_token=METRICS_TOKEN)
    user = {"Authorization": "Bearer " + tokens.issue("u1", "admin")}
    none, wrong, a_user, basic, right = _send(
        api, ("GET", "/metrics", {}),
        ("GET", "/metrics", {"headers": {"Authorization": "Bearer " + METRICS_TOKEN[:-1] + "x"}}),
        ("GET", "/metrics", {"headers": user}),
        ("GET", "/metrics", {"headers": {"Authorization": "Basic " + METRICS_TOKEN}}),
        ("GET", "/metrics", {"headers": {"Authorization": "Bearer " + METRICS_TOKEN}}))
    for r in (none, wrong, a_user, basic):
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert "crm_" not in r.text and r.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200 and "crm_event_store_up 1" in right.text


def test_metrics_are_off_without_a_token() -> None:
    api, _ = _app()
    none, some = _send(api, ("GET", "/metrics", {}),
                       ("GET", "/metrics", {"headers": {"Authorization": "Bearer anything"}}))
    for r in (none, some):
        assert r.status_code == 404 and "CRM_METRICS_TOKEN" in r.json()["detail"]


def test_the_session_cookies_are_secure_over_https_or_when_set() -> None:
    for base, forced, secure in (("https://crm", None, True), ("http://crm", None, False),
                                 ("http://crm", True, True), ("https://crm", False, False)):
        api, tokens = _app(session_cookie_secure=forced)
        admin = {"Authorization": "Bearer " + tokens.issue("ops", "admin")}
        created, signed_in = _send(
            api, ("POST", "/api/v1/users", {"json": {"username": "ann", "password": "a long password",
                                                     "role": "sales_rep"}, "headers": admin}),
            ("POST", "/api/v1/auth/session", {"json": {"username": "ann", "password": "a long password"}}),
            base=base)
        assert created.status_code == 201 and signed_in.status_code == 200, signed_in.text
        cookies = signed_in.headers.get_list("set-cookie")
        assert {c.split("=")[0] for c in cookies} == {"crm_refresh", "crm_csrf"}
        for cookie in cookies:
            assert ("; secure" in cookie.lower()) is secure, (base, forced, cookie)
            _secured(signed_in)
