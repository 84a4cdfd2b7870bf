"""What ends a token, which tokens are refused, whose address a rate limit counts, and the
limits on a request's head, its If-Match and its dates."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from contextlib import ExitStack
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import JWT_SECRET
from tests.e2e.test_http import assert_problem, serving
from tests.e2e.test_identity import _b64, _claims, _hs256, _refused
from tests.e2e.test_identity import Client as IdentityClient

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LOGIN = "/api/v1/auth/token"
ME = "/api/v1/auth/me"
USERS = "/api/v1/users"
TEAMS = "/api/v1/teams"
KEYS = "/api/v1/api-keys"
PASSWORD = "correct horse battery"
#: sign-in attempts one client may make at once (then 12 a minute)
BURST = 3
#: how long another process may still trust a user's sign-in state (CRM_AUTH_CACHE_SECONDS)
BOUND = 2.0


@pytest.fixture
def two(make_system: Any) -> Iterator[tuple[IdentityClient, IdentityClient]]:
    """Two API processes on the same database (as two workers of `crm serve`)."""
    first, second = make_system(), make_system()
    with ExitStack() as stack:
        clients = []
        for system in (first, second):
            base = stack.enter_context(serving(system.http_app()))
            http = stack.enter_context(httpx.Client(base_url=base, timeout=20))
            clients.append(IdentityClient(http, system))
        yield clients[0], clients[1]


def _until_refused(client: IdentityClient, token: dict[str, str], path: str = ME) -> float:
    """Seconds until the token is refused (401) by this process; fails after 15 s."""
    started = time.monotonic()
    while time.monotonic() - started < 15:
        r = client.http.get(path, headers=token)
        if r.status_code == 401:
            return time.monotonic() - started
        assert r.status_code == 200, r.text
        time.sleep(0.05)
    raise AssertionError(f"{path} still accepted the token after 15 s")


@pytest.mark.parametrize("change", ["role", "team", "password"])
def test_a_change_of_role_team_or_password_ends_the_users_tokens(
        two: tuple[IdentityClient, IdentityClient], change: str) -> None:
    here, there = two
    north = here.write(TEAMS, {"name": "North"}).json()["id"]
    boss = here.create_user("boss", role="admin", team_id=north)
    token = here.token("boss")
    # The token works in both processes, and each remembers the user's sign-in state.
    for process in (here, there):
        assert process.http.get(USERS, headers=token).status_code == 200
        assert process.http.get(ME, headers=token).status_code == 200

    if change == "role":
        r = here.write(f"{USERS}/{boss['id']}/role", {"role": "sales_rep", "reason": "demoted"}, version=1)
    elif change == "team":
        r = here.write(f"{USERS}/{boss['id']}/team", {"team_id": None}, version=1)
    else:
        r = here.write(f"{USERS}/{boss['id']}/password", {"password": "another long secret"})
    assert r.status_code == 200, r.text
    changed = time.monotonic()

    # In the process that made the change: at once, on every route.
    body = assert_problem(here.http.get(USERS, headers=token), 401)
    assert "sign in again" in body["detail"]
    assert_problem(here.http.post(KEYS, json={"name": "mine", "role": "admin"}, headers=token), 401)
    assert_problem(here.http.post("/api/v1/auth/refresh", headers=token), 401)
    # In the other process: within the bound of a deactivation (its cached state expires).
    _until_refused(there, token, USERS)
    assert time.monotonic() - changed < BOUND + 3.0  # the documented bound, with room for a busy machine
    assert_problem(there.http.post(KEYS, json={"name": "mine", "role": "admin"}, headers=token), 401)

    # Signing in again gives a token that works everywhere, with what is true now.
    fresh = here.token("boss", "another long secret" if change == "password" else PASSWORD)
    claims = json.loads(_b64(fresh["Authorization"].split(".")[1]))
    assert claims["gen"] == 1
    for process in (here, there):
        assert process.http.get(ME, headers=fresh).status_code == 200
    if change == "role":
        assert claims["role"] == "sales_rep"
        assert_problem(there.http.get(USERS, headers=fresh), 403)
        assert_problem(there.http.post(KEYS, json={"name": "mine", "role": "admin"}, headers=fresh), 403)


def test_an_unchanged_role_or_team_and_a_deactivation_keep_the_generation(
        two: tuple[IdentityClient, IdentityClient], db: Any) -> None:
    here, _ = two
    u = here.create_user("steady", role="analyst")
    token = here.token("steady")
    assert here.write(f"{USERS}/{u['id']}/role", {"role": "analyst"}, version=1).status_code == 200
    assert here.write(f"{USERS}/{u['id']}/team", {"team_id": None}, version=1).status_code == 200
    assert here.http.get(ME, headers=token).status_code == 200  # nothing changed: still good
    assert here.write(f"{USERS}/{u['id']}/deactivation", version=1).status_code == 200
    assert_problem(here.http.get(ME, headers=token), 401)
    assert here.write(f"{USERS}/{u['id']}/reactivation", version=2).status_code == 200
    assert here.http.get(ME, headers=token).status_code == 200  # as before: back with the user
    row = db.execute("SELECT generation FROM crm_credentials WHERE user_id = %s", (u["id"],)).fetchone()
    assert row == (0,)


# -- tokens that must be refused: lifetime and times in the future ---------------------------
@pytest.fixture
def client(system: Any) -> Iterator[IdentityClient]:
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=20) as http:
        yield IdentityClient(http, system)


def test_tokens_living_too_long_or_issued_in_the_future_are_refused(client: IdentityClient) -> None:
    secret = JWT_SECRET.encode()
    now = int(time.time())

    def ok(**claims: Any) -> None:
        r = client.http.get(ME, headers={"Authorization": f"Bearer {_hs256(_claims(**claims), secret)}"})
        assert r.status_code == 200, r.text

    ok(iat=now, exp=now + 24 * 3600)  # the default cap, CRM_JWT_MAX_LIFETIME_HOURS = 24
    _refused(client, _hs256(_claims(iat=now, exp=now + 24 * 3600 + 1), secret), "lives longer")
    _refused(client, _hs256(_claims(iat=now - 3600, exp=now + 365 * 86400), secret), "lives longer")
    ok(iat=now + 50, exp=now + 600, auth_time=now + 50)  # within the clock skew (60 s)
    _refused(client, _hs256(_claims(iat=now + 120, exp=now + 600), secret), "not valid yet")
    _refused(client, _hs256(_claims(auth_time=now + 3600), secret), "auth_time")
    _refused(client, _hs256(_claims(auth_time="yesterday"), secret), "auth_time")
    no_iat = _claims()
    del no_iat["iat"]
    _refused(client, _hs256(no_iat, secret), "iat")
    _refused(client, _hs256(_claims(gen=-1), secret), "generation")
    with pytest.raises(ValueError, match="at most 24 hours"):
        client.system.tokens.issue("ops", "admin", ttl=timedelta(hours=25))


def test_the_lifetime_cap_and_clock_skew_are_settings(make_system: Any) -> None:
    system = make_system(jwt_max_lifetime_hours=1, jwt_clock_skew_seconds=0)
    now = int(time.time())
    app = system.http_app()

    def status(**claims: Any) -> int:
        token = _hs256(_claims(**claims), JWT_SECRET.encode())
        return _asgi(app, "GET", ME, headers={"Authorization": f"Bearer {token}"}).status_code

    assert status(iat=now, exp=now + 3600) == 200
    assert status(iat=now, exp=now + 3601) == 401
    assert status(iat=now + 5, exp=now + 600) == 401
    from crm.settings import Settings

    with pytest.raises(ValueError, match="access_token_minutes"):
        Settings(access_token_minutes=120, jwt_max_lifetime_hours=1)


# -- X-Forwarded-For and the sign-in rate limit ---------------------------------------------
def _asgi(app: Any, method: str, path: str, *, client_address: str = "198.51.100.7",
          **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as c:
            return await c.request(method, path, **kwargs)

    result: httpx.Response = anyio.run(go)
    return result


def _attempts(send: Any, n: int) -> list[int]:
    return [send(i).status_code for i in range(n)]


def test_a_different_x_forwarded_for_per_attempt_does_not_escape_the_sign_in_limit(make_system: Any) -> None:
    # Over a real server run as `crm serve` runs it, from 127.0.0.1 (whose X-Forwarded-For
    # uvicorn would believe by default).
    app = make_system(login_rate_limit_burst=BURST).http_app()
    with serving(app) as base, httpx.Client(base_url=base, timeout=20) as http:
        def attempt(i: int) -> httpx.Response:
            return http.post(LOGIN, json={"username": "target", "password": "guess number %d" % i},
                             headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})

        statuses = _attempts(attempt, BURST + 3)
        assert statuses[:BURST] == [401] * BURST  # the burst (CRM_LOGIN_RATE_LIMIT_BURST)
        assert 429 in statuses[BURST:], statuses
        assert_problem(attempt(20), 429, "username")


def test_a_trusted_proxys_x_forwarded_for_names_the_client(make_system: Any) -> None:
    system = make_system(trusted_proxies="10.0.0.0/8, 192.0.2.1", login_rate_limit_burst=BURST)
    app = system.http_app()

    def login(i: int, forwarded: str, peer: str) -> httpx.Response:
        return _asgi(app, "POST", LOGIN, client_address=peer, headers={"X-Forwarded-For": forwarded},
                     json={"username": "target", "password": f"guess number {i}"})

    # Through the proxy, each client has its own bucket: one attempt each, none limited.
    assert _attempts(lambda i: login(i, f"203.0.113.{i + 1}", "10.1.2.3"), BURST + 3) == [401] * (BURST + 3)
    # One client through the proxy (and a second proxy) is limited, whatever it puts leftmost.
    statuses = _attempts(lambda i: login(i, f"198.18.{i}.1, 203.0.113.200, 192.0.2.1", "10.1.2.3"), BURST + 3)
    assert statuses[:BURST] == [401] * BURST and 429 in statuses[BURST:], statuses
    # Not from a trusted proxy: the header is ignored; the peer is the client.
    statuses = _attempts(lambda i: login(i, f"203.0.113.{i + 1}", "198.51.100.9"), BURST + 3)
    assert statuses[:BURST] == [401] * BURST and 429 in statuses[BURST:], statuses
    auth = app.state.authenticator
    from starlette.requests import Request

    def address(peer: str, forwarded: str | None) -> str:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
        return str(auth.client_address(Request({"type": "http", "client": (peer, 1), "headers": headers})))

    assert address("10.0.0.5", "203.0.113.9") == "203.0.113.9"
    assert address("10.0.0.5", "1.2.3.4, 203.0.113.9, 10.9.9.9") == "203.0.113.9"
    assert address("10.0.0.5", "10.0.0.6, 10.0.0.7") == "10.0.0.6"  # proxies all the way: the farthest
    assert address("10.0.0.5", "not-an-address") == "10.0.0.5"
    assert address("10.0.0.5", None) == "10.0.0.5"
    assert address("198.51.100.9", "203.0.113.9") == "198.51.100.9"
    from crm.settings import Settings

    assert Settings(trusted_proxies='["10.0.0.0/8", "::1"]').trusted_proxies == ["10.0.0.0/8", "::1"]
    assert Settings().trusted_proxies == []
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.example")


# -- the request head: 431 ----------------------------------------------------------------
def test_a_request_head_over_the_limit_gets_431(client: IdentityClient, make_system: Any) -> None:
    admin = client.admin
    fits = {**admin, "X-Padding": "x" * (15 * 1024)}
    assert client.http.get(ME, headers=fits).status_code == 200
    for headers in ({**admin, "X-Padding": "x" * (16 * 1024)},
                    {**admin, **{f"X-Pad-{i}": "y" * 100 for i in range(200)}}):
        r = client.http.get(ME, headers=headers)  # over uvicorn, as `crm serve` runs
        body = assert_problem(r, 431, "headers")
        assert body["max_bytes"] == 16 * 1024 and body["type"].endswith("headers-too-large")
    assert_problem(client.http.get(ME + "?q=" + "z" * (17 * 1024), headers=admin), 431, "headers")
    # Far over it, the server stops reading the head itself (the app never sees it: no
    # correlation id), for many header lines and for one endless one.
    for headers in ({**admin, **{f"X-Pad-{i}": "y" * 100 for i in range(2000)}},
                    {**admin, "X-Padding": "x" * (1024 * 1024)}):
        r = client.http.get(ME, headers=headers)
        body = assert_problem(r, 431, "headers")
        assert "x-correlation-id" not in r.headers and r.headers["connection"] == "close"
    assert client.http.get(ME, headers=admin).status_code == 200  # and serves the next one
    # In-process (no server), with the limit set.
    app = make_system(max_header_bytes=2048).http_app()
    assert _asgi(app, "GET", ME, headers={**admin, "X-Padding": "x" * 1500}).status_code == 200
    assert_problem(_asgi(app, "GET", ME, headers={**admin, "X-Padding": "x" * 2100}), 431, "headers")
    # 0: no limit
    app = make_system(max_header_bytes=0).http_app()
    assert _asgi(app, "GET", ME, headers={**admin, "X-Padding": "x" * 40_000}).status_code == 200


# -- If-Match and dates ---------------------------------------------------------------------
def test_a_weak_etag_in_if_match_is_refused_and_changes_nothing(client: IdentityClient) -> None:
    created = client.write("/api/v1/customers", {"kind": "person", "name": "Ada"})
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    r = client.http.patch(f"/api/v1/customers/{cid}", json={"name": "Ada Lovelace"},
                          headers={**client.admin, "If-Match": 'W/"1"'})
    body = assert_problem(r, 412, "If-Match")
    assert body["type"].endswith("weak-etag")
    current = client.http.get(f"/api/v1/customers/{cid}/current", headers=client.admin).json()
    assert current["version"] == 1 and current["data"]["name"] == "Ada"
    r = client.http.patch(f"/api/v1/customers/{cid}", json={"name": "Ada Lovelace"},
                          headers={**client.admin, "If-Match": '"1"'})
    assert r.status_code == 200, r.text


def test_dates_outside_1900_to_2200_are_refused_naming_the_field(client: IdentityClient) -> None:
    cid = client.write("/api/v1/customers", {"kind": "person", "name": "Ada"}).json()["id"]
    rep = str(uuid.uuid4())
    cases = [
        ("/api/v1/customers", {"kind": "person", "name": "Bea", "occurred_at": "1899-12-31T23:59:59Z"},
         "occurred_at"),
        ("/api/v1/customers", {"kind": "person", "name": "Bea", "occurred_at": "2201-01-01T00:00:00Z"},
         "occurred_at"),
        (f"/api/v1/customers/{cid}/purchases",
         {"order_id": "o-1", "amount": "10.00", "currency": "EUR", "purchased_at": "0024-05-01T00:00:00Z"},
         "purchased_at"),
        ("/api/v1/opportunities", {"customer_id": cid, "title": "Deal", "amount": "100.00", "currency": "EUR",
                                   "expected_close": "2999-12-31"}, "expected_close"),
        ("/api/v1/opportunities", {"customer_id": cid, "title": "Deal", "amount": "100.00", "currency": "EUR",
                                   "expected_close": "1899-12-31"}, "expected_close"),
        ("/api/v1/tasks", {"title": "Call", "assignee_id": rep, "due_at": "2999-01-01T00:00:00Z"}, "due_at"),
        (KEYS, {"name": "old", "role": "analyst", "expires_at": "1800-01-01T00:00:00Z"}, "expires_at"),
    ]
    before = client.http.get("/api/v1/customers/" + cid + "/events", headers=client.admin).json()
    for path, body, field in cases:
        r = client.write(path, body)
        problem = assert_problem(r, 422, field)
        assert "between 1900-01-01 and 2200-12-31" in problem["detail"], problem
    assert client.http.get("/api/v1/customers/" + cid + "/events", headers=client.admin).json() == before
    # The edges are inside.
    ok = client.write("/api/v1/customers", {"kind": "person", "name": "Edge",
                                            "occurred_at": "1900-01-01T00:00:00Z"})
    assert ok.status_code == 201, ok.text
    # Query parameters: as-of, history and timeline ranges, list filters.
    for path, params, field in (
        (f"/api/v1/customers/{cid}", {"as_of": "1066-10-14T00:00:00Z"}, "as_of"),
        (f"/api/v1/customers/{cid}", {"as_known_at": "3000-01-01T00:00:00Z"}, "as_known_at"),
        (f"/api/v1/customers/{cid}/history", {"from": "0001-01-01T00:00:00Z"}, "from"),
        (f"/api/v1/customers/{cid}/timeline", {"to": "9999-12-31T00:00:00Z"}, "to"),
        ("/api/v1/customers", {"created_from": "1850-01-01"}, "created_from"),
        ("/api/v1/interactions", {"to": "2300-01-01T00:00:00Z"}, "to"),
    ):
        r = client.http.get(path, params=params, headers=client.admin)
        problem = assert_problem(r, 422, field)
        assert "between 1900-01-01 and 2200-12-31" in problem["detail"], problem
    r = client.http.get(f"/api/v1/customers/{cid}/history", params={"from": "1900-01-01T00:00:00Z"},
                        headers=client.admin)
    assert r.status_code == 200, r.text


# -- one answer for missing and out of reach ---------------------------------------------------
def test_the_as_of_record_out_of_reach_answers_as_a_missing_one(client: IdentityClient) -> None:
    cid = client.write("/api/v1/customers", {"kind": "person", "name": "Ada"}).json()["id"]
    sid = client.write("/api/v1/service-requests", {"customer_id": cid, "subject": "Broken", "channel": "email",
                                                    "type": "incident"}).json()["id"]
    rep = {"Authorization": f"Bearer {client.system.tokens.issue('rep-9', 'sales_rep')}",
           "X-Correlation-ID": "same-for-both"}
    for path, id_ in ((f"/api/v1/service-requests/{sid}", sid), (f"/api/v1/customers/{cid}", cid)):
        missing = str(uuid.uuid4())
        answers = []
        for asked, known in ((path, id_), (path.replace(id_, missing), missing)):
            r = client.http.get(asked, params={"as_of": "2026-01-01T00:00:00Z"}, headers=rep)
            head = sorted((k, v) for k, v in r.headers.items() if k != "date")
            answers.append((r.status_code, head, r.content.replace(known.encode(), b"{id}")))
        assert answers[0] == answers[1]
        assert answers[0][0] == 404
    marketing = {"Authorization": f"Bearer {client.system.tokens.issue('mk-1', 'marketing')}"}
    r = client.http.get("/api/v1/opportunities/" + str(uuid.uuid4()) + "/current", headers=marketing)
    assert assert_problem(r, 403)["detail"] == "the marketing role may not read opportunities"
    r = client.http.get(f"/api/v1/service-requests/{sid}/current", headers=marketing)
    assert assert_problem(r, 403)["detail"] == "the marketing role may not read service requests"
