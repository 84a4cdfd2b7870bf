"""Sharing and teams move records into and out of a caller's reach, and every change is
an event in the record's timeline."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_http import serving

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

API = "/api/v1"


class Http:
    def __init__(self, http: httpx.Client, system: Any):
        self.http = http
        self.system = system
        self.position = 0
        self.users: dict[str, dict[str, Any]] = {"admin": {"id": "ops", "role": "admin", "team_id": None}}

    def auth(self, who: str) -> dict[str, str]:
        u = self.users[who]
        return {"Authorization": "Bearer " + self.system.tokens.issue(u["id"], u["role"], team_id=u["team_id"])}

    def post(self, path: str, body: Any, who: str = "admin", version: int | None = None) -> httpx.Response:
        headers = self.auth(who)
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        r = self.http.post(API + path, json=body, headers=headers)
        if r.status_code < 300:
            self.position = max(self.position, r.json().get("position") or 0)
        return r

    def get(self, path: str, who: str, **params: Any) -> httpx.Response:
        return self.http.get(API + path, headers=self.auth(who),
                             params={"min_position": self.position, "wait_ms": 10000, **params})

    def user(self, name: str, role: str, team: str | None) -> None:
        body: dict[str, Any] = {"username": f"{name}-{uuid.uuid4().hex[:6]}", "password": "correct horse battery",
                                "role": role}
        if team:
            body["team_id"] = team
        r = self.post("/users", body)
        assert r.status_code == 201, r.text
        self.users[name] = {"id": r.json()["id"], "role": role, "team_id": team}

    def ids(self, path: str, who: str) -> set[str]:
        r = self.get(path, who)
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["items"]}


@pytest.fixture
def h(system: Any) -> Iterator[Http]:
    system.start_projections()
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield Http(http, system)


def test_a_shared_customer_and_deal_are_in_reach_until_unshared(h: Http) -> None:
    north = h.post("/teams", {"name": "North"}).json()["id"]
    h.user("ann", "sales_rep", north)
    h.user("bob", "sales_rep", north)
    customer = h.post("/customers", {"kind": "company", "name": "Quillfeather Ltd"}, who="ann").json()["id"]
    deal = h.post("/opportunities", {"customer_id": customer, "title": "Quills", "amount": "10",
                                     "currency": "EUR"}, who="ann").json()["id"]

    assert h.get(f"/customers/{customer}", "bob").status_code == 404
    assert customer not in h.ids("/customers", "bob")
    assert h.post(f"/customers/{customer}/tags", {"tag": "x"}, who="bob").status_code == 404

    # only someone who reaches it may share it
    assert h.post(f"/customers/{customer}/shares", {"user_id": h.users["bob"]["id"]}, who="bob").status_code == 404
    r = h.post(f"/customers/{customer}/shares", {"user_id": h.users["bob"]["id"]}, who="ann")
    assert r.status_code == 200, r.text
    assert customer in h.ids("/customers", "bob")
    assert h.get(f"/customers/{customer}", "bob").json()["shared_with"] == [h.users["bob"]["id"]]
    assert deal in h.ids("/opportunities", "bob")  # the deals of a customer in reach
    assert h.post(f"/customers/{customer}/tags", {"tag": "x"}, who="bob").status_code == 200
    timeline = h.get(f"/customers/{customer}/timeline", "bob").json()["items"]
    shared = [e for e in timeline if e["type"] == "CustomerShared"]
    assert shared and shared[0]["actor_id"] == h.users["ann"]["id"]

    r = h.post(f"/customers/{customer}/shares/removal", {"user_id": h.users["bob"]["id"]}, who="ann")
    assert r.status_code == 200, r.text
    assert customer not in h.ids("/customers", "bob")
    assert deal not in h.ids("/opportunities", "bob")
    assert h.get(f"/customers/{customer}/timeline", "bob").status_code == 404

    # a deal alone can be shared too; its customer stays out of reach
    r = h.post(f"/opportunities/{deal}/shares", {"user_id": h.users["bob"]["id"]}, who="ann")
    assert r.status_code == 200, r.text
    assert deal in h.ids("/opportunities", "bob")
    assert h.get(f"/opportunities/{deal}/current", "bob").status_code == 200
    assert h.get(f"/customers/{customer}", "bob").status_code == 404


def test_a_manager_reaches_the_team_and_follows_a_move_to_another_team(h: Http) -> None:
    north = h.post("/teams", {"name": "North"}).json()["id"]
    south = h.post("/teams", {"name": "South"}).json()["id"]
    h.user("mia", "manager", north)
    h.user("ann", "sales_rep", north)
    h.user("sam", "sales_rep", south)
    ann_customer = h.post("/customers", {"kind": "person", "name": "Ann's Customer"}, who="ann").json()["id"]
    sam_customer = h.post("/customers", {"kind": "person", "name": "Sam's Customer"}, who="sam").json()["id"]

    assert h.ids("/customers", "mia") == {ann_customer}
    assert h.get(f"/customers/{sam_customer}/current", "mia").status_code == 404
    # a manager may create records for the team, not for another team
    assert h.post("/customers", {"kind": "person", "name": "For Ann", "owner_id": h.users["ann"]["id"]},
                  who="mia").status_code == 201
    assert h.post("/customers", {"kind": "person", "name": "For Sam", "owner_id": h.users["sam"]["id"]},
                  who="mia").status_code == 403

    version = h.get(f"/users/{h.users['sam']['id']}", "admin").json()["version"]
    r = h.post(f"/users/{h.users['sam']['id']}/team", {"team_id": north}, version=version)
    assert r.status_code == 200, r.text
    assert sam_customer in h.ids("/customers", "mia")
    assert h.get(f"/customers/{sam_customer}/current", "mia").status_code == 200
