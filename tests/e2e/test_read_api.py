"""The read API over HTTP: lists from the read models (filters, search, sorts, keyset
pagination while rows are inserted, totals, masking, strict parameters), records with
their version as ETag, the pipeline board, the activity feed, read-your-writes with
min_position, and /health, /ready and /metrics."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

import projections
from api.auth import TokenIssuer
from tests.conftest import METRICS_AUTH
from tests.e2e.test_http import serving

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PROBLEM = "application/problem+json"
C = "/api/v1/customers"
O = "/api/v1/opportunities"  # noqa: E741
S = "/api/v1/service-requests"
T = "/api/v1/tasks"
I = "/api/v1/interactions"  # noqa: E741
Params = dict[str, Any] | list[tuple[str, Any]]


# -- fixtures -------------------------------------------------------------------------
# ``system`` (tests/conftest.py): the CRM on an empty event log and no read side; its
# runners are not started.


@dataclass
class Api:
    """The read API as an admin by default: these tests are about lists and records, not
    about who reaches what (tests/e2e/test_authorization.py is)."""

    client: httpx.Client
    tokens: TokenIssuer
    position: int = 0  # the last write's event-log position

    def headers(self, user: str = "rep-1", role: str = "admin", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(user, role)}", **extra}

    def write(self, method: str, path: str, body: Any = None, *, user: str = "rep-1",
              role: str = "admin", version: int | None = None) -> dict[str, Any]:
        headers = self.headers(user, role)
        if version is not None:
            headers["If-Match"] = f'"{version}"'
        r = self.client.request(method, path, json=body, headers=headers)
        assert r.status_code in (200, 201), r.text
        out: dict[str, Any] = r.json()
        self.position = max(self.position, out["position"])
        return out

    def register(self, name: str, **body: Any) -> str:
        return str(self.write("POST", C, {"kind": body.pop("kind", "person"), "name": name, **body})["id"])

    def get(self, path: str, params: Params | None = None, *, user: str = "rep-1", role: str = "admin",
            fresh: bool = True, **headers: str) -> httpx.Response:
        """GET; ``fresh``: as of the last write (min_position)."""
        query: list[tuple[str, Any]] = list(params.items()) if isinstance(params, dict) else list(params or [])
        if fresh and self.position:
            query.append(("min_position", self.position))
        return self.client.get(path, params=query, headers=self.headers(user, role, **headers))

    def page(self, path: str, params: Params | None = None, **kw: Any) -> dict[str, Any]:
        r = self.get(path, params, **kw)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert set(body) == {"items", "next_cursor", "total"}
        return body

    def items(self, path: str, params: Params | None = None, **kw: Any) -> list[dict[str, Any]]:
        return self.page(path, params, **kw)["items"]  # type: ignore[no-any-return]

    def names(self, params: Params | None = None, **kw: Any) -> list[str]:
        return [c["name"] for c in self.items(C, params, **kw)]


@pytest.fixture
def system(make_system: Any) -> Any:
    """The CRM without its automation: these tests write records with the versions they
    expect, and the automation (woken by every append) would route and time service
    requests in between (tests/e2e/test_automation.py is about it)."""
    return make_system(automation_enabled=False)


@pytest.fixture
def api(system: Any) -> Iterator[Api]:
    """The app served by uvicorn; the read models are NOT kept up to date."""
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=20) as client:
        yield Api(client, system.tokens)


@pytest.fixture
def live(system: Any, api: Api) -> Api:
    """``api`` with the projection runners running in this process."""
    system.start_projections()
    return api


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


def seed_customers(api: Api) -> dict[str, str]:
    ids = {
        "Ada Lovelace": api.register(
            "Ada Lovelace", tags=["vip", "math"],
            contacts=[{"kind": "email", "value": "ada@analytical.example"},
                      {"kind": "phone", "value": "+44 20 7946 0958"}]),
        "Grace Hopper": api.register(
            "Grace Hopper", owner_id="rep-2", lifecycle_stage="prospect", tags=["navy"],
            contacts=[{"kind": "email", "value": "grace@navy.example"}]),
        "Alan Turing": api.register(
            "Alan Turing", lifecycle_stage="customer", tags=["math"],
            contacts=[{"kind": "phone", "value": "+1 (555) 010-4477"}]),
        "Acme Ltd": api.register(
            "Acme Ltd", kind="company", owner_id="rep-2", lifecycle_stage="customer",
            contacts=[{"kind": "email", "value": "info@acme.example", "person_name": "Katherine Johnson"}]),
    }
    api.write("POST", f"{C}/{ids['Acme Ltd']}/classification",
              {"segment": "enterprise", "reason": "big"}, version=1)
    return ids


# -- customers -------------------------------------------------------------------------
def test_customer_filters_and_search(live: Api) -> None:
    seed_customers(live)
    n = live.names
    assert sorted(n({"owner_id": "rep-1"})) == ["Ada Lovelace", "Alan Turing"]
    assert len(n([("owner_id", "rep-1"), ("owner_id", "rep-2")])) == 4
    assert sorted(n({"lifecycle_stage": "customer"})) == ["Acme Ltd", "Alan Turing"]
    assert n({"segment": "enterprise"}) == ["Acme Ltd"]
    assert sorted(n({"tag": "math"})) == ["Ada Lovelace", "Alan Turing"]
    assert n([("tag", "math"), ("tag", "vip")]) == ["Ada Lovelace"]
    assert n({"tag": "math", "owner_id": "rep-2"}) == []

    # Search: name, e-mail, contact person, phone fragments however punctuated.
    assert n({"q": "LOVELACE"}) == ["Ada Lovelace"]
    assert n({"q": "navy.Example"}) == ["Grace Hopper"]
    assert n({"q": "katherine"}) == ["Acme Ltd"]
    assert n({"q": "20 7946"}) == ["Ada Lovelace"]
    assert n({"q": "2079460958"}) == ["Ada Lovelace"]
    assert n({"q": "20-7946-0958"}) == ["Ada Lovelace"]
    assert n({"q": "555-010"}) == ["Alan Turing"]
    assert sorted(n({"q": "a"})) == ["Acme Ltd", "Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert n({"q": "%"}) == [] and n({"q": "_"}) == []  # LIKE wildcards are literal

    # Time windows: from inclusive, to exclusive.
    rows = {c["name"]: c for c in live.items(C)}
    alan = rows["Alan Turing"]["created_at"]
    assert sorted(n({"created_from": alan})) == ["Acme Ltd", "Alan Turing"]
    assert sorted(n({"created_to": alan})) == ["Ada Lovelace", "Grace Hopper"]
    assert len(n({"created_from": "2000-01-01", "created_to": "2199-12-31"})) == 4
    acme_active = rows["Acme Ltd"]["last_activity_at"]
    assert acme_active > rows["Acme Ltd"]["created_at"]  # the classification counts as activity
    assert n({"active_from": acme_active}) == ["Acme Ltd"]
    assert len(n({"active_to": acme_active})) == 3

    page = live.page(C, {"owner_id": "rep-1", "include_total": "true", "limit": 1})
    assert page["total"] == 2 and len(page["items"]) == 1 and page["next_cursor"]
    assert live.page(C, {"owner_id": "rep-1"})["total"] is None


def test_customer_sorts_and_pages(live: Api) -> None:
    seed_customers(live)
    by_name = ["Acme Ltd", "Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert live.names({"sort": "name"}) == by_name
    assert live.names({"sort": "-name"}) == by_name[::-1]
    assert live.names({"sort": "created_at"}) == ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Acme Ltd"]
    assert live.names({"sort": "-created_at"}) == ["Acme Ltd", "Alan Turing", "Grace Hopper", "Ada Lovelace"]
    # Default: most recently active first (Acme was classified last).
    assert live.names() == ["Acme Ltd", "Alan Turing", "Grace Hopper", "Ada Lovelace"]

    first = live.page(C, {"sort": "name", "limit": 2})
    assert [c["name"] for c in first["items"]] == by_name[:2]
    second = live.page(C, {"sort": "name", "limit": 2, "cursor": first["next_cursor"]})
    assert [c["name"] for c in second["items"]] == by_name[2:]
    assert second["next_cursor"] is None
    # A customer's row: the read model's columns, never the search text.
    row = first["items"][1]
    assert row["emails"] == ["ada@analytical.example"] and row["tags"] == ["math", "vip"]
    assert row["version"] == 1 and row["owner_id"] == "rep-1" and "search_text" not in row


def _walk(api: Api, params: dict[str, Any], between: Callable[[], None]) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = api.page(C, query, fresh=False)
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        between()
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("sort", ["name", "-name", "created_at", "-last_activity_at"])
def test_keyset_pages_are_stable_while_customers_are_added(live: Api, sort: str) -> None:
    initial = {live.register(f"Person {i:02d}") for i in range(14)}
    assert len(live.items(C)) == 14  # visible (read-your-writes)
    added = iter(range(1000))

    def add_two() -> None:  # one before and one after every cursor by name
        k = next(added)
        live.register(f"Aaa new {k:03d}")
        live.register(f"Zzz new {k:03d}")

    seen = _walk(live, {"sort": sort, "limit": 3}, add_two)
    assert len(seen) == len(set(seen)), "a row came twice"
    assert initial <= set(seen), "a row that existed at the start was skipped"


def test_an_analyst_sees_personal_columns_masked_and_may_not_search_them(live: Api) -> None:
    ids = seed_customers(live)
    r = live.get(C, {"sort": "created_at"}, user="ann", role="analyst")
    assert r.status_code == 200, r.text
    ada = r.json()["items"][0]
    # Masked values keep their JSON type: a list is a list of masked items.
    assert ada["name"] == "***"
    assert ada["emails"] and set(ada["emails"]) == {"***"} and set(ada["phones"]) == {"***"}
    assert ada["contacts"] and all(c["value"] == "***" and c["kind"] in ("email", "phone", "address")
                                   for c in ada["contacts"])
    assert ada["tags"] == ["math", "vip"] and ada["owner_id"] == "rep-1"
    assert "search_text" not in ada
    for secret in ("Lovelace", "analytical", "7946", "Katherine", "lovelace"):
        assert secret not in r.text
    assert_problem(live.get(C, {"q": "ada"}, role="analyst"), 403, "q")
    assert_problem(live.get(C, {"sort": "name"}, role="analyst"), 403, "sort")
    r = live.get(f"{C}/{ids['Ada Lovelace']}", role="analyst")
    assert r.status_code == 200 and r.json()["name"] == "***" and "Lovelace" not in r.text
    # Roles that may read personal data see it.
    assert live.names({"q": "ada"}, role="auditor") == ["Ada Lovelace"]


@pytest.mark.parametrize(("path", "params", "field"), [
    (C, {"limit": "0"}, "limit"),
    (C, {"limit": "201"}, "limit"),
    (C, {"limit": "ten"}, "limit"),
    (C, {"sort": "email"}, "sort"),
    (C, {"sort": "--name"}, "sort"),
    (C, {"cursor": "not-a-cursor"}, "cursor"),
    (C, {"created_from": "yesterday"}, "created_from"),
    (C, {"active_to": "2024-01-01T10:00:00"}, "active_to"),
    (C, {"include_total": "maybe"}, "include_total"),
    (C, {"owner": "rep-1"}, "owner"),
    (C, [("owner_id", "a"), ("segment", "x"), ("limit", "1"), ("limit", "2")], "limit"),
    (C, {"q": ""}, "q"),
    (C, {"q": "x" * 201}, "q"),
    (C, {"min_position": "-1"}, "min_position"),
    (C, {"wait_ms": "10001"}, "wait_ms"),
    (O, {"customer_id": "nope"}, "customer_id"),
    (O, {"sort": "title"}, "sort"),
    (f"{O}/board", {"pipeline": "No Such!"}, "pipeline"),
    (f"{O}/board", {"stage": "x"}, "stage"),
    (T, {"mine": "perhaps"}, "mine"),
    (T, {"due_before": "soon"}, "due_before"),
    (I, {"from": "2024-13-01"}, "from"),
    (S, {"assignee": "x"}, "assignee"),
    ("/api/v1/activity", {"customer_id": "x"}, "customer_id"),
    (f"{C}/{uuid.UUID(int=1)}", {"min_position": "x"}, "min_position"),
    (f"{C}/{uuid.UUID(int=1)}/current", {"wait_ms": "-5"}, "wait_ms"),
])
def test_a_bad_parameter_is_a_422_problem_naming_it(api: Api, path: str, params: Params, field: str) -> None:
    body = assert_problem(api.get(path, params), 422, field)
    assert body["errors"][0]["field"] == field


def test_bad_headers_and_cursors_name_themselves(live: Api) -> None:
    seed_customers(live)
    assert_problem(live.get(C, **{"X-Min-Position": "soon"}), 422, "X-Min-Position")
    page = live.page(C, {"sort": "name", "limit": 1})
    # A cursor is valid only for the sort it was made for.
    body = assert_problem(live.get(C, {"sort": "created_at", "cursor": page["next_cursor"]}), 422, "cursor")
    assert "name" in body["detail"]
    assert_problem(live.get(f"{C}/not-a-uuid"), 422, "id")
    assert_problem(live.client.get(C), 401)


# -- records and read-your-writes -------------------------------------------------------
def test_records_come_from_the_read_models_with_their_version_as_etag(live: Api) -> None:
    cid = live.register("Record Person", contacts=[{"kind": "email", "value": "rec@example.com"}])
    r = live.get(f"{C}/{cid}")  # min_position: visible at once
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"1"'
    assert r.json()["id"] == cid and r.json()["name"] == "Record Person" and "search_text" not in r.json()

    live.write("PATCH", f"{C}/{cid}", {"name": "Renamed Person"}, version=1)
    r = live.get(f"{C}/{cid}", fresh=False, **{"X-Min-Position": str(live.position)})
    assert r.headers["etag"] == '"2"' and r.json()["name"] == "Renamed Person"
    assert live.names({"q": "renamed"}) == ["Renamed Person"]

    oid = live.write("POST", O, {"customer_id": cid, "title": "Deal", "amount": "10.50", "currency": "EUR"})["id"]
    sid = live.write("POST", S, {"customer_id": cid, "channel": "web", "type": "question", "subject": "Help"},
                     user="agent-1", role="service_agent")["id"]
    tid = live.write("POST", T, {"title": "Call", "related_type": "customer", "related_id": cid})["id"]
    iid = live.write("POST", I, {"customer_id": cid, "channel": "call", "direction": "inbound",
                                 "subject": "Hello"})["id"]
    for path, rid, column, value in ((O, oid, "title", "Deal"), (S, sid, "subject", "Help"),
                                     (T, tid, "title", "Call"), (I, iid, "subject", "Hello")):
        r = live.get(f"{path}/{rid}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == rid and r.json()[column] == value and r.headers["etag"] == '"1"'
        masked = live.get(f"{path}/{rid}", role="analyst").json()
        assert masked[column] == "***"
        assert_problem(live.get(f"{path}/{uuid.uuid4()}"), 404)
        # The record rebuilt from its events and its events are still there.
        current = live.get(f"{path}/{rid}/current")
        assert current.status_code == 200 and current.json()["version"] >= 1
        assert current.json()["data"][column] == value
        events = live.get(f"{path}/{rid}/events").json()["items"]
        assert len(events) == current.json()["version"] and events[0]["data"][column] == value
    assert live.get(f"{O}/{oid}").json()["amount"] == "10.50"
    assert live.get(f"{O}/{oid}").json()["customer_name"] == "Renamed Person"
    assert_problem(live.get(f"{O}/{cid}"), 404)  # a customer is not an opportunity


def test_a_read_model_behind_min_position_is_a_bounded_503(system: Any, api: Api) -> None:
    cid = api.register("Waited For")
    wanted = api.position
    assert_problem(api.get(f"{C}/{cid}", fresh=False), 404)  # not applied: nothing runs

    started = time.monotonic()
    r = api.get(f"{C}/{cid}", {"wait_ms": 300})
    elapsed = time.monotonic() - started
    body = assert_problem(r, 503)
    assert 0.3 <= elapsed < 2.0
    assert body["type"].endswith("/read-model-behind")
    assert body["position_wanted"] == wanted and body["position_reached"] == 0
    assert int(r.headers["retry-after"]) >= 1

    started = time.monotonic()
    assert_problem(api.get(C), 503)  # the default wait: 2 s
    assert 1.9 <= time.monotonic() - started < 4.0
    assert_problem(api.get(C, {"wait_ms": 0}), 503)

    for projection in projections.ALL:
        system.read.runner(projection).catch_up()
    r = api.get(f"{C}/{cid}", {"wait_ms": 0})
    assert r.status_code == 200 and r.json()["name"] == "Waited For"
    # A position no write has returned (past the log's end) is a bad request, not a wait.
    assert_problem(api.get(C, {"min_position": wanted + 100, "wait_ms": 50}, fresh=False), 422, "min_position")


# -- the other lists -----------------------------------------------------------------------
def test_opportunity_lists_and_the_board(live: Api) -> None:
    ids = seed_customers(live)
    ada, grace = ids["Ada Lovelace"], ids["Grace Hopper"]

    def opp(customer: str, title: str, amount: str, currency: str = "EUR", **body: Any) -> str:
        return str(live.write("POST", O, {"customer_id": customer, "title": title, "amount": amount,
                                          "currency": currency, **body})["id"])

    a = opp(ada, "A", "1000", expected_close="2030-01-10")
    b = opp(ada, "B", "500", "USD", stage="proposal")
    c = opp(grace, "C", "2000", expected_close="2030-03-01", owner_id="rep-2")
    live.write("POST", f"{O}/{c}/stage", {"stage": "needs_analysis"}, version=1)
    d = opp(grace, "D", "300", owner_id="rep-2")
    live.write("POST", f"{O}/{d}/won", None, version=1)
    e = opp(ada, "E", "700")
    live.write("POST", f"{O}/{e}/lost", {"loss_reason": "price"}, version=1)
    f = opp(ada, "F", "50", pipeline="renewal")

    def titles(params: Params) -> list[str]:
        return [o["title"] for o in live.items(O, params)]

    assert sorted(titles({"status": "open"})) == ["A", "B", "C", "F"]
    assert sorted(titles([("status", "won"), ("status", "lost")])) == ["D", "E"]
    assert sorted(titles({"owner_id": "rep-2"})) == ["C", "D"]
    assert sorted(titles({"customer_id": grace})) == ["C", "D"]
    assert titles({"pipeline": "renewal"}) == ["F"]
    assert titles({"stage": "needs_analysis"}) == ["C"]
    assert titles({"sort": "amount"}) == ["F", "D", "B", "E", "A", "C"]
    assert titles({"sort": "-amount", "limit": 2}) == ["C", "A"]
    assert titles({"sort": "expected_close"})[:2] == ["A", "C"]  # no date: last
    assert titles({"sort": "-expected_close"})[:2] == ["C", "A"]
    assert titles({})[0] == "F"  # default: most recently updated first
    # Paging across the NULL expected_close values.
    seen: list[str] = []
    cursor = None
    while True:
        page = live.page(O, {"sort": "expected_close", "limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([a, b, c, d, e, f])
    row = live.items(O, {"customer_id": grace, "status": "open"})[0]
    assert (row["stage"], row["probability"], row["customer_name"]) == ("needs_analysis", 25, "Grace Hopper")
    assert Decimal(row["weighted_amount"]) == Decimal("500")
    assert live.items(O, {"customer_id": grace, "status": "open"}, role="analyst")[0]["customer_name"] == "***"

    board = live.get(f"{O}/board").json()
    stages = {s["stage"]: s for s in board["stages"]}
    # every stage of the pipeline, empty ones too, then won and lost
    assert [s["stage"] for s in board["stages"]] == [
        "qualification", "needs_analysis", "proposal", "negotiation", "won", "lost"]
    assert stages["negotiation"]["count"] == 0
    assert stages["qualification"]["count"] == 1
    assert _amounts(stages["qualification"]["totals"]) == {"EUR": Decimal("1000")}
    assert _amounts(stages["qualification"]["weighted_totals"]) == {"EUR": Decimal("100")}
    assert _amounts(stages["proposal"]["weighted_totals"]) == {"USD": Decimal("250")}
    assert (stages["won"]["count"], _amounts(stages["won"]["totals"])) == (1, {"EUR": Decimal("300")})
    assert (stages["lost"]["count"], _amounts(stages["lost"]["totals"])) == (1, {"EUR": Decimal("700")})
    assert board["open"]["count"] == 3
    assert _amounts(board["open"]["totals"]) == {"EUR": Decimal("3000"), "USD": Decimal("500")}
    assert _amounts(board["open"]["weighted_totals"]) == {"EUR": Decimal("600"), "USD": Decimal("250")}
    mine = live.get(f"{O}/board", {"owner_id": "rep-2"}).json()
    assert [(s["stage"], s["count"]) for s in mine["stages"]] == [
        ("qualification", 0), ("needs_analysis", 1), ("proposal", 0), ("negotiation", 0), ("won", 1), ("lost", 0)]
    renewal = live.get(f"{O}/board", {"pipeline": "renewal"}).json()
    assert [(s["stage"], s["count"]) for s in renewal["stages"]] == [
        ("review", 1), ("offer", 0), ("commitment", 0), ("won", 0), ("lost", 0)]


def _amounts(totals: dict[str, str]) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in totals.items()}


def test_service_requests_come_most_urgent_first(live: Api) -> None:
    cid = live.register("Queue Person")
    agent = {"user": "agent-1", "role": "service_agent"}
    made = {}
    for subject, priority in (("n1", "normal"), ("u1", "urgent"), ("l1", "low"), ("h1", "high"), ("u2", "urgent")):
        made[subject] = live.write("POST", S, {"customer_id": cid, "channel": "email", "type": "incident",
                                               "subject": subject, "priority": priority}, **agent)["id"]
    live.write("POST", f"{S}/{made['h1']}/assignment", {"assignee_id": "agent-9"}, version=1, **agent)
    live.write("POST", f"{S}/{made['n1']}/resolution", {"resolution": "done"}, version=1, **agent)

    def subjects(params: Params) -> list[str]:
        return [s["subject"] for s in live.items(S, params, **agent)]

    assert subjects({}) == ["u1", "u2", "h1", "n1", "l1"]
    assert subjects({"sort": "-priority"}) == ["l1", "n1", "h1", "u2", "u1"]
    # Paged, the same order.
    first = live.page(S, {"limit": 2}, **agent)
    rest = live.page(S, {"limit": 10, "cursor": first["next_cursor"]}, **agent)
    assert [s["subject"] for s in first["items"] + rest["items"]] == ["u1", "u2", "h1", "n1", "l1"]
    assert subjects({"status": "open"}) == ["u1", "u2", "h1", "l1"]
    assert subjects({"status": "resolved"}) == ["n1"]
    assert subjects({"assignee_id": "agent-9"}) == ["h1"]
    assert subjects([("priority", "low"), ("priority", "high")]) == ["h1", "l1"]
    assert subjects({"customer_id": cid, "sort": "opened_at"}) == ["n1", "u1", "l1", "h1", "u2"]
    assert subjects({"customer_id": str(uuid.uuid4())}) == []
    assert live.items(S, {"limit": 1}, **agent)[0]["customer_name"] == "Queue Person"


def test_tasks_mine_due_and_related(live: Api) -> None:
    cid = live.register("Task Person")
    other = live.register("Other Person")
    base = "2030-05-01T09:00:00+00:00"
    t = {
        "a": live.write("POST", T, {"title": "a", "due_at": base, "related_type": "customer",
                                    "related_id": cid})["id"],
        "b": live.write("POST", T, {"title": "b", "due_at": "2030-04-01T09:00:00+00:00"})["id"],
        "c": live.write("POST", T, {"title": "c"})["id"],
        "d": live.write("POST", T, {"title": "d", "assignee_id": "rep-2", "due_at": "2030-03-01T09:00:00Z",
                                    "related_type": "customer", "related_id": other})["id"],
        "e": live.write("POST", T, {"title": "e"})["id"],
    }
    live.write("POST", f"{T}/{t['b']}/complete", None, version=1)

    def titles(params: Params, user: str = "rep-1") -> list[str]:
        return [x["title"] for x in live.items(T, params, user=user)]

    assert titles({}) == ["d", "b", "a", "c", "e"] or titles({}) == ["d", "b", "a", "e", "c"]
    assert titles({"mine": "true"})[:2] == ["b", "a"] and set(titles({"mine": "true"})) == {"a", "b", "c", "e"}
    assert titles({"mine": "true"}, user="rep-2") == ["d"]
    assert len(titles({"mine": "false"})) == 5
    assert titles({"assignee_id": "rep-2"}) == ["d"]
    assert titles({"status": "completed"}) == ["b"]
    assert titles({"due_before": "2030-04-15"}) == ["d", "b"]
    assert titles({"customer_id": cid}) == ["a"]
    assert titles({"related_id": other}) == ["d"]
    assert titles({"sort": "-due_at"})[:3] == ["a", "b", "d"]  # no due time: last
    # Pages cross from the due tasks into the ones without a due time.
    seen: list[str] = []
    cursor = None
    while True:
        page = live.page(T, {"limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [x["id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(t.values())
    assert live.items(T, {"mine": "true"}, role="analyst")[0]["title"] == "***"


def test_interactions_by_customer_channel_and_time(live: Api) -> None:
    cid = live.register("Talker")
    other = live.register("Quiet")
    for channel, when, customer in (("call", "2024-01-10T10:00:00Z", cid), ("email", "2024-02-10T10:00:00Z", cid),
                                    ("meeting", "2024-03-10T10:00:00Z", cid), ("call", "2024-02-01T10:00:00Z", other)):
        live.write("POST", I, {"customer_id": customer, "channel": channel, "direction": "outbound",
                               "subject": f"{channel} {when[:7]}", "occurred_at": when})

    def subjects(params: Params) -> list[str]:
        return [x["subject"] for x in live.items(I, params)]

    assert subjects({"customer_id": cid}) == ["meeting 2024-03", "email 2024-02", "call 2024-01"]
    assert subjects({"customer_id": cid, "sort": "occurred_at"}) == ["call 2024-01", "email 2024-02",
                                                                     "meeting 2024-03"]
    assert subjects({"channel": "call"}) == ["call 2024-02", "call 2024-01"]
    assert subjects({"from": "2024-02-01", "to": "2024-03-01"}) == ["email 2024-02", "call 2024-02"]
    item = live.items(I, {"customer_id": other}, role="analyst")[0]
    assert item["subject"] == "***" and item["channel"] == "call"


def test_the_activity_feed_newest_first(live: Api) -> None:
    ids = seed_customers(live)
    acme = ids["Acme Ltd"]
    live.write("POST", f"{C}/{acme}/tags", {"tag": "key-account"})
    live.write("POST", I, {"customer_id": acme, "channel": "note", "direction": "internal", "subject": "x"})
    feed = live.items(f"{C}/{acme}/activity")
    assert [a["event_type"] for a in feed] == ["InteractionLogged", "CustomerTagged", "CustomerClassified",
                                               "CustomerRegistered"]
    assert all(a["customer_id"] == acme for a in feed)
    assert feed[2]["reason"] == "big"
    first = live.page(f"{C}/{acme}/activity", {"limit": 3})
    rest = live.page(f"{C}/{acme}/activity", {"limit": 3, "cursor": first["next_cursor"]})
    assert [a["event_id"] for a in first["items"] + rest["items"]] == [a["event_id"] for a in feed]
    assert rest["next_cursor"] is None
    assert_problem(live.get(f"{C}/{uuid.uuid4()}/activity"), 404)

    mine = live.items("/api/v1/activity", {"owner_id": "rep-2"})
    assert {a["customer_id"] for a in mine} == {acme, ids["Grace Hopper"]}
    assert len(mine) == 5
    assert len(live.items("/api/v1/activity", {"include_total": "true"})) == 7


# -- operations -----------------------------------------------------------------------
def test_health_ready_and_metrics(system: Any, live: Api, database_url: str) -> None:
    r = live.client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}

    cid = live.register("Metered")
    assert live.get(f"{C}/{cid}").status_code == 200
    assert live.get(f"{C}/{uuid.uuid4()}").status_code == 404
    live.get(C, {"limit": "0"})

    r = live.client.get("/ready")
    assert r.status_code == 200, r.text
    ready = r.json()
    assert ready["status"] == "ready" and ready["event_log_position"] == live.position
    assert {p["name"] for p in ready["projections"]} == {p.name for p in projections.ALL}
    assert all(p["lag_events"] == 0 and p["parked"] == 0 for p in ready["projections"])

    # Only with the metrics token: none, or another (a user's token), is refused.
    assert_problem(live.client.get("/metrics"), 401)
    assert_problem(live.client.get("/metrics", headers={"Authorization": "Bearer not-the-metrics-token"}), 401)
    text = live.client.get("/metrics", headers=METRICS_AUTH)
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    body = text.text
    for p in projections.ALL:
        assert f'crm_projection_position{{projection="{p.name}"}} {live.position}' in body
        assert f'crm_projection_lag_events{{projection="{p.name}"}} 0' in body
        assert f'crm_projection_leader{{projection="{p.name}"}} 1' in body
        assert f'crm_projection_parked_events{{projection="{p.name}"}} 0' in body
    for name in ("head", "lag_seconds", "last_batch_size", "events_applied_total", "batches_total"):
        assert f"# TYPE crm_projection_{name} " in body
    assert f"crm_event_log_head {live.position}" in body
    applied = re.search(r'crm_projection_events_applied_total\{projection="customers"\} (\d+)', body)
    assert applied and int(applied.group(1)) == 1  # the one registration

    route = "/api/v1/customers/{id}"
    assert f'crm_http_requests_total{{method="GET",route="{route}",status="200"}} 1' in body
    assert f'crm_http_requests_total{{method="GET",route="{route}",status="404"}} 1' in body
    assert 'crm_http_requests_total{method="GET",route="/api/v1/customers",status="422"} 1' in body
    assert 'crm_http_requests_total{method="POST",route="/api/v1/customers",status="201"} 1' in body
    assert cid not in body  # templates, not raw paths
    assert "# TYPE crm_http_request_duration_milliseconds histogram" in body
    buckets = re.findall(
        r'crm_http_request_duration_milliseconds_bucket\{method="GET",route="/api/v1/customers/\{id\}",'
        r'status="200",le="([^"]+)"\} (\d+)', body)
    assert [b for b, _ in buckets] == ["5", "10", "25", "50", "100", "250", "500", "1000", "2500", "+Inf"]
    counts = [int(n) for _, n in buckets]
    assert counts == sorted(counts) and counts[-1] == 1
    assert f'crm_http_request_duration_milliseconds_count{{method="GET",route="{route}",status="200"}} 1' in body
    live.client.get("/no/such/path")
    assert 'route="<unmatched>",status="404"' in live.client.get("/metrics", headers=METRICS_AUTH).text

    # A parked event makes the process unready, naming the read model.
    schema = next(p for p in system.read.status() if p.name == "tasks").schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO crm_parked_events (schema_name, projection, position, event_id, event_type,"
                     " aggregate_id, error) VALUES (%s, 'tasks', 1, 'e', 'TaskCreated', 'a', 'boom')", (schema,))
    r = live.client.get("/ready")
    body_ready = assert_problem(r, 503)
    assert body_ready["type"].endswith("/not-ready")
    assert body_ready["reasons"] == ["tasks: 1 parked event(s)"]
    metrics = live.client.get("/metrics", headers=METRICS_AUTH).text
    assert 'crm_projection_parked_events{projection="tasks"} 1' in metrics


# -- keyset paging over NULLs, checked against PostgreSQL's own order ----------------------
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("nullable", ["first", "both"])
def test_keyset_conditions_page_through_nulls_and_ties(database_url: str, descending: bool, nullable: str) -> None:
    import random

    from readapi.listing import SortKey, after_condition, order_by

    rng = random.Random(7)
    rows = [(rng.choice([None, 1, 2, 3]), rng.choice([None, "x", "y"]), i) for i in range(80)]
    keys = [SortKey('"a"', "int", nullable=True), SortKey('"b"', "text", nullable=nullable == "both"),
            SortKey('"id"', "int")]
    if nullable == "first":
        rows = [(a, b or "z", i) for a, b, i in rows]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE keyset_t (a int, b text, id int PRIMARY KEY)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO keyset_t VALUES (%s, %s, %s)", rows)
        order = order_by(keys, descending)
        everything = [r[0] for r in conn.execute(f"SELECT id FROM keyset_t ORDER BY {order}").fetchall()]
        nulls_last = [r for r in everything if rows[r][0] is not None] + [r for r in everything if rows[r][0] is None]
        assert everything == nulls_last
        paged: list[int] = []
        last: tuple[Any, ...] | None = None
        while True:
            where, params = ("TRUE", []) if last is None else after_condition(keys, list(last), descending)
            page = conn.execute(f"SELECT a, b, id FROM keyset_t WHERE {where} ORDER BY {order} LIMIT 7",
                                params).fetchall()
            if not page:
                break
            paged += [r[2] for r in page]
            last = page[-1]
        assert paged == everything
        # The two-key form (one nullable key, then the row's key) too.
        two = [keys[0], keys[2]]
        order = order_by(two, descending)
        everything = [r[0] for r in conn.execute(f"SELECT id FROM keyset_t ORDER BY {order}").fetchall()]
        paged, last = [], None
        while True:
            where, params = ("TRUE", []) if last is None else after_condition(two, list(last), descending)
            page = conn.execute(f"SELECT a, id FROM keyset_t WHERE {where} ORDER BY {order} LIMIT 6",
                                params).fetchall()
            if not page:
                break
            paged += [r[1] for r in page]
            last = page[-1]
        assert paged == everything
