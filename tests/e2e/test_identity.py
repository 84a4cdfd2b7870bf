"""People and systems signing in: login, /auth/me, users and teams as events, the
directory read model, deactivation, API keys, and the tokens that must be refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aggregates.user import user_id
from tests.e2e.test_http import assert_problem, serving

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LOGIN = "/api/v1/auth/token"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
USERS = "/api/v1/users"
TEAMS = "/api/v1/teams"
KEYS = "/api/v1/api-keys"
PASSWORD = "correct horse battery"


class Client:
    """An HTTP client of the served app, with an admin token made by `crm token`'s issuer."""

    def __init__(self, http: httpx.Client, system: Any):
        self.http = http
        self.system = system
        self.admin = {"Authorization": f"Bearer {system.tokens.issue('ops', 'admin')}"}
        self.position = 0

    def write(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
              version: int | None = None) -> httpx.Response:
        h = dict(headers or self.admin)
        if version is not None:
            h["If-Match"] = f'"{version}"'
        r = self.http.post(path, json=body, headers=h)
        if r.status_code < 300:
            self.position = max(self.position, r.json().get("position") or 0)
        return r

    def get(self, path: str, *, headers: dict[str, str] | None = None, fresh: bool = True,
            **params: Any) -> httpx.Response:
        if fresh:
            params = {"min_position": self.position, "wait_ms": 5000, **params}
        return self.http.get(path, params=params, headers=headers or self.admin)

    def create_user(self, username: str, role: str = "sales_rep", **body: Any) -> dict[str, Any]:
        r = self.write(USERS, {"username": username, "password": PASSWORD, "role": role, **body})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        return self.http.post(LOGIN, json={"username": username, "password": password})

    def token(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        r = self.login(username, password)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def client(system: Any) -> Iterator[Client]:
    system.start_projections()
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=20) as http:
        yield Client(http, system)


def test_a_new_user_signs_in_at_once_and_sees_themselves(client: Client) -> None:
    team = client.write(TEAMS, {"name": "Team North"})
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    created = client.create_user("Rita", display_name="Rita Rep", email="rita@example.com", team_id=team_id)
    assert created["id"] == str(user_id("rita"))

    r = client.login("RITA")  # usernames are case-insensitive
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 15 * 60
    assert body["user"] == {"id": created["id"], "username": "rita", "display_name": "Rita Rep",
                            "role": "sales_rep", "team_id": team_id}
    assert r.headers["cache-control"] == "no-store"
    claims = json.loads(_b64(body["access_token"].split(".")[1]))
    assert claims["sub"] == created["id"] and claims["role"] == "sales_rep" and claims["team"] == team_id
    assert {"iss", "aud", "exp", "iat", "jti"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 15 * 60

    me = client.get(ME, headers={"Authorization": f"Bearer {body['access_token']}"}, fresh=False)
    assert me.status_code == 200, me.text
    assert me.json() == {"id": created["id"], "kind": "user", "role": "sales_rep", "team_id": team_id,
                         "username": "rita", "display_name": "Rita Rep", "name": None}
    # The user's token works on the rest of the API, as the user.
    r = client.write("/api/v1/customers", {"kind": "person", "name": "Ada"},
                     headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 201, r.text
    events = client.http.get(f"/api/v1/customers/{r.json()['id']}/events", headers=client.admin).json()
    assert events["items"][0]["actor_id"] == created["id"]


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_wrong_password_and_unknown_user_get_the_same_401(client: Client) -> None:
    client.create_user("sam")
    wrong = client.login("sam", "not the password at all")
    unknown = client.login("nobody", "not the password at all")
    for r in (wrong, unknown):
        body = assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json() == unknown.json()
    assert_problem(client.http.post(LOGIN, json={"username": "sam", "password": PASSWORD, "extra": 1}),
                   422, "extra")
    assert body["type"].endswith("invalid-credentials")


def test_a_second_user_with_the_same_name_is_a_conflict(client: Client) -> None:
    client.create_user("dup")
    r = client.write(USERS, {"username": "DUP", "password": PASSWORD, "role": "analyst"})
    assert_problem(r, 409, "username")
    assert_problem(client.write(USERS, {"username": "short", "password": "too short", "role": "analyst"}),
                   422, "password")
    assert_problem(client.write(USERS, {"username": "x", "password": PASSWORD, "role": "king"}), 422, "role")
    assert_problem(client.write(USERS, {"username": "y", "password": PASSWORD, "role": "analyst",
                                        "is_admin": True}), 422, "is_admin")
    rep = {"Authorization": f"Bearer {client.system.tokens.issue('rep-1', 'sales_rep')}"}
    assert_problem(client.write(USERS, {"username": "z", "password": PASSWORD, "role": "admin"}, headers=rep), 403)


def test_deactivated_user_cannot_sign_in_and_their_token_stops_working(client: Client, db: Any) -> None:
    created = client.create_user("leaver")
    token = client.token("leaver")
    assert client.get(ME, headers=token, fresh=False).status_code == 200
    r = client.write(f"{USERS}/{created['id']}/deactivation", {"reason": "left the company"}, version=1)
    assert r.status_code == 200, r.text
    assert_problem(client.get(ME, headers=token, fresh=False), 401)
    refused = client.login("leaver")
    assert_problem(refused, 401)
    assert refused.json() == client.login("nobody-at-all").json()
    # Back again.
    assert client.write(f"{USERS}/{created['id']}/reactivation", version=2).status_code == 200
    assert client.get(ME, headers=token, fresh=False).status_code == 200
    assert client.login("leaver").status_code == 200
    rows = db.execute("SELECT topic, state FROM crm_events WHERE originator_id = %s ORDER BY originator_version",
                      (user_id("leaver"),)).fetchall()
    assert [t for t, _ in rows] == ["UserCreated", "UserDeactivated", "UserReactivated"]
    assert json.loads(bytes(rows[1][1]))["reason"] == "left the company"
    assert_problem(client.write(f"{USERS}/{created['id']}/deactivation", {"why": "x"}, version=3), 422, "why")


def test_every_caller_reads_colleagues_names_but_not_their_details(client: Client) -> None:
    created = client.create_user("pat", role="service_agent", display_name="Pat Agent", email="pat@example.com")
    client.create_user("quinn")  # no display name: the username stands in
    rep = client.token("quinn")
    assert_problem(client.get(USERS, headers=rep), 403)  # the directory's details stay with admins
    r = client.get("/api/v1/people", headers=rep)
    assert r.status_code == 200, r.text
    people = {p["id"]: p for p in r.json()["items"]}
    assert people[created["id"]] == {"id": created["id"], "display_name": "Pat Agent", "role": "service_agent",
                                     "active": True}
    assert people[str(user_id("quinn"))]["display_name"] == "quinn"
    assert "pat@example.com" not in r.text and "team_id" not in r.text
    assert_problem(client.http.get("/api/v1/people"), 401)


def test_the_api_description_names_the_identity_routes(client: Client) -> None:
    r = client.http.get("/openapi.json")
    assert r.status_code == 200, r.text
    paths = r.json()["paths"]
    for path in (LOGIN, REFRESH, ME, USERS, f"{USERS}/{{id}}/deactivation", f"{USERS}/{{id}}/password", TEAMS, KEYS):
        assert path in paths, path
    body = paths[f"{USERS}/{{id}}/deactivation"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "DeactivateUser" in json.dumps(body)


def test_user_and_team_events_carry_actor_and_reason_and_never_a_hash(client: Client, db: Any) -> None:
    north = client.write(TEAMS, {"name": "North", "reason": "new region"}).json()["id"]
    south = client.write(TEAMS, {"name": "South"}).json()["id"]
    u = client.create_user("mover", team_id=north, reason="hired")
    uid = u["id"]
    assert client.write(f"{USERS}/{uid}/role", {"role": "manager", "reason": "promoted"}, version=1).status_code == 200
    assert client.write(f"{USERS}/{uid}/team", {"team_id": south}, version=2).status_code == 200
    own = client.token("mover")
    r = client.write(f"{USERS}/{uid}/password", {"password": "a brand new secret"}, headers=own)
    assert_problem(r, 422, "current_password")
    r = client.write(f"{USERS}/{uid}/password", {"password": "a brand new secret",
                                                  "current_password": PASSWORD}, headers=own)
    assert r.status_code == 200, r.text
    assert client.login("mover").status_code == 401
    assert client.login("mover", "a brand new secret").status_code == 200
    other = client.create_user("other")
    assert_problem(client.write(f"{USERS}/{other['id']}/password", {"password": "x" * 12,
                                                                     "current_password": PASSWORD},
                                headers=client.token("mover", "a brand new secret")), 403)

    rows = db.execute("SELECT topic, state FROM crm_events WHERE originator_id = %s ORDER BY originator_version",
                      (user_id("mover"),)).fetchall()
    assert [t for t, _ in rows] == ["UserCreated", "UserRoleChanged", "UserJoinedTeam", "UserPasswordChanged"]
    docs = [json.loads(bytes(s)) for _, s in rows]
    assert docs[0]["actor"]["id"] == "ops" and docs[0]["actor"]["role"] == "admin"
    assert docs[0]["reason"] == "hired" and docs[1]["reason"] == "promoted"
    assert docs[3]["actor"]["id"] == uid  # who changed the password
    hashes = [r[0] for r in db.execute("SELECT password_hash FROM crm_credentials").fetchall()]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    everything = b"".join(bytes(r[0]) for r in db.execute("SELECT state FROM crm_events").fetchall())
    for h in hashes:
        assert h.encode() not in everything
        assert h.split("$")[-1].encode() not in everything  # not even the digest alone
    assert b"argon2" not in everything and PASSWORD.encode() not in everything

    # The directory read model: users and teams, readable by SQL.
    listed = client.get(USERS)
    assert listed.status_code == 200, listed.text
    mover = next(i for i in listed.json()["items"] if i["username"] == "mover")
    assert mover["role"] == "manager" and mover["team_id"] == south and mover["active"] is True
    teams = client.get(TEAMS).json()["items"]
    assert {t["name"] for t in teams} == {"North", "South"}
    row = db.execute("SELECT role, team_id::text, active FROM crm_read.users WHERE username = 'mover'").fetchone()
    assert row == ("manager", south, True)
    assert db.execute("SELECT count(*) FROM crm_read.teams").fetchone()[0] == 2


def test_a_manager_reads_their_team_only(client: Client) -> None:
    north = client.write(TEAMS, {"name": "North"}).json()["id"]
    south = client.write(TEAMS, {"name": "South"}).json()["id"]
    boss = client.create_user("boss", "manager", team_id=north)
    mine = client.create_user("mine", team_id=north)
    theirs = client.create_user("theirs", team_id=south)
    h = client.token("boss")
    listed = client.get(USERS, headers=h)
    assert listed.status_code == 200, listed.text
    assert {u["username"] for u in listed.json()["items"]} == {"boss", "mine"}
    assert_problem(client.get(USERS, headers=h, team_id=south), 403)
    assert client.get(f"{USERS}/{mine['id']}", headers=h).status_code == 200
    assert_problem(client.get(f"{USERS}/{theirs['id']}", headers=h), 403)
    rep = client.token("mine")
    assert_problem(client.get(USERS, headers=rep), 403)
    assert client.get(f"{USERS}/{mine['id']}", headers=rep).json()["username"] == "mine"
    assert boss["id"] == str(user_id("boss"))
    assert_problem(client.get(USERS, limit=201), 422, "limit")


# -- tokens that must be refused ----------------------------------------------------------
def _hs256(claims: dict[str, Any], secret: bytes, header: dict[str, Any] | None = None) -> str:
    """A JWT signed with HMAC-SHA256 by hand (PyJWT will not sign with a PEM key as secret)."""
    import base64
    import hashlib
    import hmac

    def enc(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    signing_input = f"{enc(header or {'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _claims(**overrides: Any) -> dict[str, Any]:
    import time

    from tests.conftest import JWT_SECRET  # noqa: F401  (the issuer and audience are the defaults)

    now = int(time.time())
    return {"sub": "rep-1", "role": "admin", "iss": "crm-core", "aud": "crm-api", "iat": now,
            "exp": now + 600, **overrides}


def _refused(client: Client, token: str, why: str) -> None:
    r = client.http.get(ME, headers={"Authorization": f"Bearer {token}"})
    body = assert_problem(r, 401)
    assert why.lower() in body["detail"].lower(), body


def test_tokens_that_must_be_refused(client: Client) -> None:
    import time

    import jwt as pyjwt

    from tests.conftest import JWT_SECRET

    secret = JWT_SECRET.encode()
    good = _hs256(_claims(), secret)
    assert client.http.get(ME, headers={"Authorization": f"Bearer {good}"}).status_code == 200
    assert_problem(client.http.get(ME), 401)
    assert_problem(client.http.get(ME, headers={"Authorization": "Basic cmVwOnB3"}), 401)
    now = int(time.time())
    _refused(client, _hs256(_claims(exp=now - 120, iat=now - 720), secret), "expired")
    _refused(client, _hs256(_claims(aud="someone-else"), secret), "audience")
    _refused(client, _hs256(_claims(iss="https://evil.example"), secret), "issuer")
    _refused(client, _hs256(_claims(role="emperor"), secret), "role")
    _refused(client, _hs256(_claims(), b"not-the-secret"), "invalid token")
    head, payload, signature = good.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    _refused(client, f"{head}.{payload}.{flipped}", "invalid token")
    tampered_payload = _hs256(_claims(role="sales_rep"), secret).split(".")[1]
    _refused(client, f"{head}.{tampered_payload}.{signature}", "invalid token")
    unsigned = pyjwt.encode(_claims(), None, algorithm="none")
    _refused(client, unsigned, "invalid token")
    _refused(client, unsigned.rstrip(".") + ".", "invalid token")
    # RS256 with a key of the caller's own, sent to a server that pins HS256.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = own.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _refused(client, pyjwt.encode(_claims(), pem, algorithm="RS256"), "invalid token")


# -- refreshing a token -------------------------------------------------------------------
def _refresh(client: Client, token: str) -> httpx.Response:
    return client.http.post(REFRESH, headers={"Authorization": f"Bearer {token}"})


def test_a_valid_token_is_refreshed_with_a_new_id_and_a_fresh_expiry(client: Client) -> None:
    import time

    from tests.conftest import JWT_SECRET

    team = client.write(TEAMS, {"name": "Team West"}).json()["id"]
    created = client.create_user("fresh", display_name="Fresh Face", team_id=team)
    signed_in = client.login("fresh").json()["access_token"]
    old = json.loads(_b64(signed_in.split(".")[1]))
    # A token issued ten minutes ago, with five minutes left (the same user, signed in then).
    now = int(time.time())
    aged = _hs256({**old, "iat": now - 600, "exp": now + 300, "auth_time": now - 600}, JWT_SECRET.encode())
    r = _refresh(client, aged)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["expires_in"] == 15 * 60
    assert body["user"] == {"id": created["id"], "username": "fresh", "display_name": "Fresh Face",
                            "role": "sales_rep", "team_id": team}
    new = json.loads(_b64(body["access_token"].split(".")[1]))
    assert new["jti"] != old["jti"]
    assert new["exp"] - new["iat"] == 15 * 60 and new["exp"] >= now + 15 * 60 - 5 > now + 300
    assert new["auth_time"] == now - 600  # the session still began at the sign-in
    assert (new["sub"], new["role"], new["team"]) == (created["id"], "sales_rep", team)
    assert client.get(ME, headers={"Authorization": f"Bearer {body['access_token']}"},
                      fresh=False).json()["username"] == "fresh"

    # A role change ends the tokens issued before it: no refresh into the new role either;
    # the user signs in again and gets it.
    assert client.write(f"{USERS}/{created['id']}/role", {"role": "manager"}, version=1).status_code == 200
    assert "sign in again" in assert_problem(_refresh(client, body["access_token"]), 401)["detail"]
    again = client.login("fresh")
    assert again.status_code == 200, again.text
    assert json.loads(_b64(again.json()["access_token"].split(".")[1]))["role"] == "manager"


def test_refresh_refuses_expired_tampered_and_deactivated_users_tokens(client: Client) -> None:
    import time

    from tests.conftest import JWT_SECRET

    created = client.create_user("gone")
    token = client.login("gone").json()["access_token"]
    claims = json.loads(_b64(token.split(".")[1]))
    now = int(time.time())
    secret = JWT_SECRET.encode()
    expired = _hs256({**claims, "iat": now - 1000, "exp": now - 100}, secret)
    assert "expired" in assert_problem(_refresh(client, expired), 401)["detail"]
    head, payload, signature = token.split(".")
    raised = base64url(json.dumps({**claims, "role": "admin"}).encode())
    assert "invalid token" in assert_problem(_refresh(client, f"{head}.{raised}.{signature}"), 401)["detail"]
    assert "invalid token" in assert_problem(_refresh(client, _hs256(claims, b"not-the-secret")), 401)["detail"]
    assert_problem(client.http.post(REFRESH), 401)
    # A session older than the maximum (12 hours by default): sign in again.
    old_session = _hs256({**claims, "auth_time": now - 13 * 3600}, secret)
    body = assert_problem(_refresh(client, old_session), 401)
    assert body["type"].endswith("session-expired")
    # Not a user's sign-in token: a script's token, an API key.
    assert_problem(_refresh(client, client.system.tokens.issue("ops", "admin")), 403)
    key = client.write(KEYS, {"name": "ERP", "role": "integration"})
    assert key.status_code == 201, key.text
    assert_problem(_refresh(client, key.json()["key"]), 403)
    # Deactivated: the token is refused, and so is its refresh.
    assert _refresh(client, token).status_code == 200
    r = client.write(f"{USERS}/{created['id']}/deactivation", {"reason": "left"}, version=1)
    assert r.status_code == 200, r.text
    assert "deactivated" in assert_problem(_refresh(client, token), 401)["detail"]


# -- the web UI's session: the refresh cookie ---------------------------------------------
SESSION = "/api/v1/auth/session"
SESSION_REFRESH = "/api/v1/auth/session/refresh"


def _set_cookies(r: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie of the answer by cookie name, as sent."""
    return {line.split("=", 1)[0]: line for line in r.headers.get_list("set-cookie")}


def _browser_sign_in(client: Client, http: httpx.Client, username: str) -> tuple[httpx.Response, str]:
    r = http.post(SESSION, json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r, http.cookies["crm_csrf"]


def test_a_browser_session_is_refreshed_by_its_cookie_and_signed_out(client: Client, db: Any) -> None:
    import hashlib

    client.create_user("webby", display_name="Web User")
    with httpx.Client(base_url=str(client.http.base_url), timeout=20) as browser:
        r, csrf = _browser_sign_in(client, browser, "webby")
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body["user"]["username"] == "webby" and body["expires_in"] == 15 * 60
        cookies = _set_cookies(r)
        refresh = cookies["crm_refresh"].lower()
        assert "httponly" in refresh and "samesite=strict" in refresh and "path=/api/v1/auth/session" in refresh
        assert "secure" not in refresh  # plain HTTP here (Secure over HTTPS)
        max_age = int(refresh.split("max-age=")[1].split(";")[0])
        assert 12 * 3600 - 10 <= max_age <= 12 * 3600  # the session's maximum: 12 hours after signing in
        assert "httponly" not in cookies["crm_csrf"].lower() and "path=/;" in cookies["crm_csrf"].lower()
        secret = browser.cookies["crm_refresh"]
        # Stored only as hashes.
        stored = db.execute("SELECT secret_sha256, csrf_sha256 FROM crm_web_sessions").fetchall()
        assert [(bytes(a), bytes(b)) for a, b in stored] == [
            (hashlib.sha256(secret.encode()).digest(), hashlib.sha256(csrf.encode()).digest())]

        # CSRF: the header is required, must match the cookie, and a foreign origin is refused.
        assert_problem(browser.post(SESSION_REFRESH), 403, "X-CSRF-Token")
        assert_problem(browser.post(SESSION_REFRESH, headers={"X-CSRF-Token": csrf + "x"}), 403, "X-CSRF-Token")
        assert_problem(browser.post(SESSION_REFRESH, headers={"X-CSRF-Token": "été".encode()}),
                       403, "X-CSRF-Token")
        assert_problem(browser.post(SESSION_REFRESH, headers={"X-CSRF-Token": csrf,
                                                              "Origin": "https://evil.example"}), 403)
        # A forged pair (the header equal to a cookie of the attacker's choosing) is not this session's.
        r = httpx.post(f"{client.http.base_url}{SESSION_REFRESH}", headers={
            "X-CSRF-Token": "forged", "Cookie": f"crm_refresh={secret}; crm_csrf=forged"})
        assert_problem(r, 403, "X-CSRF-Token")

        own = f"{client.http.base_url.scheme}://{client.http.base_url.netloc.decode()}"
        renewed = browser.post(SESSION_REFRESH, headers={"X-CSRF-Token": csrf, "Origin": own})
        assert renewed.status_code == 200, renewed.text
        token = renewed.json()["access_token"]
        assert token != body["access_token"] and renewed.json()["user"]["username"] == "webby"
        assert client.get(ME, headers={"Authorization": f"Bearer {token}"}, fresh=False).json()["username"] == "webby"
        # The JSON refresh of API clients works as before, beside the cookie.
        assert _refresh(client, token).status_code == 200

        # Sign out: CSRF header required; then the session is revoked and the cookies cleared.
        assert_problem(browser.delete(SESSION), 403, "X-CSRF-Token")
        assert browser.post(SESSION_REFRESH, headers={"X-CSRF-Token": csrf}).status_code == 200
        out = browser.delete(SESSION, headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204, out.text
        cleared = _set_cookies(out)
        assert 'crm_refresh=""' in cleared["crm_refresh"] and "max-age=0" in cleared["crm_refresh"].lower()
        assert "max-age=0" in cleared["crm_csrf"].lower()
        assert "crm_refresh" not in browser.cookies
        r = httpx.post(f"{client.http.base_url}{SESSION_REFRESH}", headers={
            "X-CSRF-Token": csrf, "Cookie": f"crm_refresh={secret}; crm_csrf={csrf}"})
        assert assert_problem(r, 401)["type"].endswith("/session-ended")
        assert db.execute("SELECT revoked_at IS NOT NULL FROM crm_web_sessions").fetchone()[0]
        # Without a cookie there is nothing to end; without one nothing refreshes.
        assert browser.delete(SESSION).status_code == 204
        assert assert_problem(browser.post(SESSION_REFRESH, headers={"X-CSRF-Token": csrf}), 401)[
            "type"].endswith("/session-ended")
        # A wrong password sets no cookie.
        r = browser.post(SESSION, json={"username": "webby", "password": "not it"})
        assert r.status_code == 401 and not r.headers.get_list("set-cookie")


def test_a_browser_session_ends_when_idle_too_old_or_its_user_is_deactivated(client: Client, db: Any) -> None:
    created = client.create_user("leaver")
    with httpx.Client(base_url=str(client.http.base_url), timeout=20) as browser:
        _, csrf = _browser_sign_in(client, browser, "leaver")
        ok = {"X-CSRF-Token": csrf}
        assert browser.post(SESSION_REFRESH, headers=ok).status_code == 200
        # Not refreshed before its last token expired: the browser was idle, the session is over.
        db.execute("UPDATE crm_web_sessions SET valid_until = now() - interval '1 second'")
        assert "idle" in assert_problem(browser.post(SESSION_REFRESH, headers=ok), 401)["detail"]
        db.execute("UPDATE crm_web_sessions SET valid_until = now() + interval '1 minute',"
                   " expires_at = now() - interval '1 second'")
        assert "too old" in assert_problem(browser.post(SESSION_REFRESH, headers=ok), 401)["detail"]
        db.execute("UPDATE crm_web_sessions SET expires_at = now() + interval '1 hour'")
        assert browser.post(SESSION_REFRESH, headers=ok).status_code == 200
        r = client.write(f"{USERS}/{created['id']}/deactivation", {"reason": "left"}, version=1)
        assert r.status_code == 200, r.text
        assert "deactivated" in assert_problem(browser.post(SESSION_REFRESH, headers=ok), 401)["detail"]


def test_a_browser_session_ends_when_its_users_password_or_role_changes(client: Client, db: Any) -> None:
    created = client.create_user("rotator")
    with httpx.Client(base_url=str(client.http.base_url), timeout=20) as browser:
        _, csrf = _browser_sign_in(client, browser, "rotator")
        ok = {"X-CSRF-Token": csrf}
        assert browser.post(SESSION_REFRESH, headers=ok).status_code == 200
        r = client.write(f"{USERS}/{created['id']}/password", {"password": "a brand new secret"})
        assert r.status_code == 200, r.text
        assert assert_problem(browser.post(SESSION_REFRESH, headers=ok), 401)["type"].endswith("/session-ended")
    with httpx.Client(base_url=str(client.http.base_url), timeout=20) as browser:
        r = browser.post(SESSION, json={"username": "rotator", "password": "a brand new secret"})
        assert r.status_code == 200, r.text
        ok = {"X-CSRF-Token": browser.cookies["crm_csrf"]}
        assert browser.post(SESSION_REFRESH, headers=ok).status_code == 200
        r = client.write(f"{USERS}/{created['id']}/role", {"role": "manager", "reason": "promoted"}, version=2)  # after the password's event
        assert r.status_code == 200, r.text
        assert assert_problem(browser.post(SESSION_REFRESH, headers=ok), 401)["type"].endswith("/session-ended")
    assert db.execute("SELECT count(*) FROM crm_web_sessions WHERE revoked_at IS NULL").fetchone()[0] == 0


def base64url(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def rsa_keys(tmp_path: Any) -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "jwt-private.pem"
    public = tmp_path / "jwt-public.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_an_rs256_server_refuses_hs256_signed_with_its_public_key(
        make_system: Any, rsa_keys: tuple[Any, Any]) -> None:
    private, public = rsa_keys
    system = make_system(jwt_algorithm="RS256", jwt_private_key_file=private, jwt_public_key_file=public)
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=20) as http:
        client = Client(http, system)
        assert http.get(ME, headers=client.admin).status_code == 200  # RS256 from its own issuer
        swapped = _hs256(_claims(), public.read_bytes())
        _refused(client, swapped, "invalid token")
        client.create_user("rs")
        assert http.get(ME, headers=client.token("rs")).json()["username"] == "rs"


# -- API keys ----------------------------------------------------------------------------
def test_api_keys_issue_use_list_and_revoke(client: Client, db: Any) -> None:
    r = client.write(KEYS, {"name": "ERP", "role": "integration", "reason": "nightly orders"},
                     headers={**client.admin, "Idempotency-Key": "erp-key-1"})
    assert r.status_code == 201, r.text
    issued = r.json()
    key, key_id = issued["key"], issued["id"]
    assert key.startswith(f"crmk_{key_id.replace('-', '')}_") and len(key) > 60
    assert r.headers["cache-control"] == "no-store"
    again = client.write(KEYS, {"name": "ERP", "role": "integration", "reason": "nightly orders"},
                         headers={**client.admin, "Idempotency-Key": "erp-key-1"})
    assert again.status_code == 201 and again.json()["id"] == key_id and again.json()["key"] is None

    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = client.http.get(ME, headers=headers)
        assert me.status_code == 200, me.text
        assert me.json() == {"id": key_id, "kind": "api_key", "role": "integration", "team_id": None,
                             "username": None, "display_name": None, "name": "ERP"}
    made = client.write("/api/v1/customers", {"kind": "company", "name": "Acme"}, headers={"X-API-Key": key})
    assert made.status_code == 201, made.text
    events = client.http.get(f"/api/v1/customers/{made.json()['id']}/events", headers=client.admin).json()
    assert (events["items"][0]["actor_id"], events["items"][0]["actor_role"]) == (key_id, "integration")

    listed = client.get(KEYS)
    assert listed.status_code == 200, listed.text
    [item] = listed.json()["items"]
    assert item["id"] == key_id and item["name"] == "ERP" and item["role"] == "integration"
    assert item["last_used_at"] is not None and item["revoked_at"] is None
    assert key.split("_", 2)[2] not in listed.text and "secret" not in listed.text
    rep = {"Authorization": f"Bearer {client.system.tokens.issue('rep-1', 'sales_rep')}"}
    assert_problem(client.get(KEYS, headers=rep), 403)
    assert_problem(client.write(KEYS, {"name": "x", "role": "admin"}, headers=rep), 403)
    assert_problem(client.write(KEYS, {"name": "x", "role": "integration", "secret": "mine"}), 422, "secret")

    # Neither the secret nor its hash is in any event.
    stored = db.execute("SELECT secret_sha256 FROM crm_api_keys").fetchone()[0]
    everything = b"".join(bytes(r[0]) for r in db.execute("SELECT state FROM crm_events").fetchall())
    assert key.split("_", 2)[2].encode() not in everything
    assert bytes(stored) not in everything and bytes(stored).hex().encode() not in everything

    revoked = client.write(f"{KEYS}/{key_id}/revocation", {"reason": "rotated"})
    assert revoked.status_code == 200, revoked.text
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        assert "revoked" in assert_problem(client.http.get(ME, headers=headers), 401)["detail"]
    assert client.get(KEYS).json()["items"][0]["revoked_at"] is not None
    assert_problem(client.write(f"{KEYS}/{key_id}/revocation"), 409)
    rows = db.execute("SELECT topic FROM crm_events WHERE originator_id = %s ORDER BY originator_version",
                      (key_id,)).fetchall()
    assert [t for (t,) in rows] == ["ApiKeyIssued", "ApiKeyRevoked"]


def test_unknown_malformed_and_expired_api_keys_are_refused(client: Client) -> None:
    import time
    import uuid
    from datetime import UTC, datetime, timedelta

    issued = client.write(KEYS, {"name": "short-lived", "role": "integration",
                                 "expires_at": (datetime.now(UTC) + timedelta(seconds=2)).isoformat()})
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    assert client.http.get(ME, headers={"X-API-Key": key}).status_code == 200
    key_hex = key.split("_")[1]
    for bad, why in (
        (f"crmk_{uuid.uuid4().hex}_{key.split('_', 2)[2]}", "unknown"),  # no such key
        (f"crmk_{key_hex}_{'x' * 43}", "unknown"),  # the right id, a wrong secret
        ("crmk_nothex_secret", "not an API key"),
        (f"crmk_{key_hex}", "not an API key"),
    ):
        assert why in assert_problem(client.http.get(ME, headers={"X-API-Key": bad}), 401)["detail"], bad
        assert why in assert_problem(client.http.get(ME, headers={"Authorization": f"Bearer {bad}"}),
                                     401)["detail"], bad
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert_problem(client.write(KEYS, {"name": "old", "role": "integration", "expires_at": past}),
                   422, "expires_at")
    time.sleep(2.2)
    assert "expired" in assert_problem(client.http.get(ME, headers={"X-API-Key": key}), 401)["detail"]


# -- limits ----------------------------------------------------------------------------------
def test_rate_limit_gives_429_with_retry_after_and_recovers(make_system: Any) -> None:
    import time

    system = make_system(rate_limit_per_second=1, rate_limit_burst=3, login_rate_limit_per_minute=1,
                         login_rate_limit_burst=2)
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=20) as http:
        admin = {"Authorization": f"Bearer {system.tokens.issue('busy', 'admin')}"}
        other = {"Authorization": f"Bearer {system.tokens.issue('calm', 'admin')}"}
        answers = [http.get(ME, headers=admin) for _ in range(5)]
        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        limited = answers[-1]
        body = assert_problem(limited, 429)
        assert body["type"].endswith("rate-limited")
        retry = int(limited.headers["retry-after"])
        assert 1 <= retry <= 2
        assert http.get(ME, headers=other).status_code == 200  # one caller's limit is theirs alone
        time.sleep(retry + 0.1)
        assert http.get(ME, headers=admin).status_code == 200

        # Sign-in attempts: per username and address, whether right or wrong.
        attempts = [http.post(LOGIN, json={"username": "nobody", "password": "wrong password!"})
                    for _ in range(3)]
        assert [a.status_code for a in attempts] == [401, 401, 429]
        assert assert_problem(attempts[-1], 429, "username") and attempts[-1].headers["retry-after"]
        assert http.post(LOGIN, json={"username": "somebody", "password": "wrong password!"}).status_code == 401


def test_a_body_over_the_limit_gets_413_and_changes_nothing(client: Client, db: Any) -> None:
    big = {"kind": "person", "name": "Ada", "notes": "x" * (1024 * 1024)}
    r = client.write("/api/v1/customers", big)
    body = assert_problem(r, 413, "body")
    assert body["max_bytes"] == 1024 * 1024

    def chunks() -> Iterator[bytes]:
        yield b'{"kind": "person", "name": "'
        for _ in range(1100):
            yield b"y" * 1024
        yield b'"}'

    chunked = client.http.post("/api/v1/customers", content=chunks(),
                               headers={**client.admin, "Content-Type": "application/json"})
    assert_problem(chunked, 413, "body")
    assert db.execute("SELECT count(*) FROM crm_events").fetchone()[0] == 0
    # Just under the limit is read (and judged on its merits).
    r = client.write("/api/v1/customers", {"kind": "person", "name": "Ada", "notes": "x" * 1000})
    assert_problem(r, 422, "notes")
    small_chunked = client.http.post("/api/v1/customers", content=iter([b'{"kind": "person", ', b'"name": "Bo"}']),
                                     headers={**client.admin, "Content-Type": "application/json"})
    assert small_chunked.status_code == 201, small_chunked.text
