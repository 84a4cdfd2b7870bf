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


def test_deactivated_user_cannot_sign_in_and_their_token_stops_working(client: Client) -> None:
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
