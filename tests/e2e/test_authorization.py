"""The authorisation matrix: every role x every route of /api/v1 x a record of the sales
rep's own, of a teammate's, and of another team's.

The routes come from the app's route table, so a new route cannot be forgotten: a route
this file does not classify fails the test. Each cell has one expected outcome:

* ``ok``: the role may do it on that record (2xx, or a rule of the domain refusing the
  change: 409, or 422 about the request's own fields);
* ``hidden``: the record is outside the caller's reach and answers exactly like one that
  does not exist (404; a record named in a request body: 422 naming that field);
* ``forbidden``: the role may not do this at all (403).

Besides the status, no response outside the caller's reach may carry the name of a record
outside it: lists are checked item by item, every other answer byte by byte. And a hidden
or forbidden record answers exactly as a record that does not exist: the same request with
an unknown id in the path gets the same status, headers and body (but for the id itself).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from api.access import READABLE
from readapi.analytics import ANALYTICS_ROLES
from api.auth import ROLES, WRITE_SCOPES
from readapi.replay_routes import EXPORT_ROLES
from writeapi.commands import COMMAND_ROUTES
from tests.e2e.test_http import serving

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

API = "/api/v1"
OWNERS = ("own", "team", "other")
COLLECTIONS = {"customers": "customer", "opportunities": "opportunity", "interactions": "interaction",
               "service-requests": "service_request", "tasks": "task"}
TYPE_PATHS = {v: k for k, v in COLLECTIONS.items()}
PASSWORD = "correct horse battery"
#: statuses of a cell the caller may use on that record
OK = {200, 201, 202, 204, 409}
#: whose records are "own", "team" and "other"
PERSON = {"own": "rep", "team": "mate", "other": "far"}


@dataclass
class Records:
    """One owner's records: a customer and one of each record of it."""

    owner: str
    customer: str
    name: str
    ids: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    http: httpx.Client
    system: Any
    users: dict[str, dict[str, Any]]  # role or person -> user
    records: dict[str, Records]  # own | team | other -> records
    position: int = 0
    api_key: str = ""

    def headers(self, role: str) -> dict[str, str]:
        u = self.users[role]
        return {"Authorization": "Bearer " + self.system.tokens.issue(u["id"], u["role"], team_id=u.get("team_id"))}

    def admin(self) -> dict[str, str]:
        return self.headers("admin")

    def write(self, path: str, body: Any, *, version: int | None = None) -> dict[str, Any]:
        h = self.admin()
        if version is not None:
            h["If-Match"] = f'"{version}"'
        r = self.http.post(path, json=body, headers=h)
        assert r.status_code in (200, 201), r.text
        out: dict[str, Any] = r.json()
        self.position = max(self.position, out.get("position") or 0)
        return out

    def version(self, aggregate_type: str, id: str) -> int:
        path = TYPE_PATHS.get(aggregate_type)
        if path is None:  # users and teams: from their read tables
            params = {"min_position": self.position, "wait_ms": 10000}
            r = self.http.get(f"{API}/{aggregate_type}", params=params, headers=self.admin())
            assert r.status_code == 200, r.text
            return int(next(x["version"] for x in r.json()["items"] if x["id"] == id))
        r = self.http.get(f"{API}/{path}/{id}/current", headers=self.admin())
        assert r.status_code == 200, r.text
        return int(r.json()["version"])


def _make_world(http: httpx.Client, system: Any) -> World:
    w = World(http, system, {"admin": {"id": "ops", "role": "admin"}}, {})
    north = w.write(f"{API}/teams", {"name": "North"})["id"]
    south = w.write(f"{API}/teams", {"name": "South"})["id"]
    people = {"rep": ("sales_rep", north), "mate": ("sales_rep", north), "far": ("sales_rep", south)}
    people.update({role: (role, north if role == "manager" else None) for role in ROLES if role != "sales_rep"})
    for name, (role, team) in people.items():
        body: dict[str, Any] = {"username": f"{name}-{uuid.uuid4().hex[:6]}", "password": PASSWORD, "role": role}
        if team:
            body["team_id"] = team
        created = w.write(f"{API}/users", body)
        w.users[name] = {"id": created["id"], "role": role, "team_id": team}
    w.users["sales_rep"] = w.users["rep"]
    w.api_key = w.write(f"{API}/api-keys", {"name": "erp", "role": "integration"})["id"]
    for which, person in (("own", "rep"), ("team", "mate"), ("other", "far")):
        owner = w.users[person]["id"]
        name = f"Zq{which.capitalize()}{uuid.uuid4().hex[:8]}"
        c = w.write(f"{API}/customers", {"kind": "company", "name": name, "owner_id": owner,
                                         "contacts": [{"kind": "email", "value": f"{name.lower()}@example.com"}]})
        rec = Records(which, c["id"], name)
        if which == "own":  # marketing reaches the customers that gave consent
            w.write(f"{API}/customers/{c['id']}/consents", {"channel": "email", "granted": True})
        rec.ids["customer"] = c["id"]
        rec.ids["opportunity"] = w.write(f"{API}/opportunities", {
            "customer_id": c["id"], "title": f"{name} deal", "amount": "1000", "currency": "EUR",
            "owner_id": owner})["id"]
        rec.ids["interaction"] = w.write(f"{API}/interactions", {
            "customer_id": c["id"], "channel": "call", "direction": "outbound", "subject": f"{name} call"})["id"]
        rec.ids["service_request"] = w.write(f"{API}/service-requests", {
            "customer_id": c["id"], "channel": "email", "type": "question", "subject": f"{name} question"})["id"]
        rec.ids["task"] = w.write(f"{API}/tasks", {
            "title": f"{name} follow-up", "assignee_id": owner, "related_type": "customer",
            "related_id": c["id"]})["id"]
        w.records[which] = rec
    return w


@pytest.fixture
def world(system: Any) -> Iterator[World]:
    system.start_projections()
    with serving(system.http_app()) as base, httpx.Client(base_url=base, timeout=30) as http:
        w = _make_world(http, system)
        r = http.get(f"{API}/customers", params={"min_position": w.position, "wait_ms": 10000},
                     headers=w.admin())
        assert r.status_code == 200, r.text
        yield w


# -- what each cell should answer --------------------------------------------------------
def reaches(role: str, aggregate_type: str, owner: str) -> bool:
    """Whether ``role`` reaches the ``owner`` record of this type (the sales rep is "own")."""
    if aggregate_type not in READABLE[role]:
        return False
    if role == "sales_rep":
        return owner == "own"
    if role == "manager":
        return owner in ("own", "team")
    if role == "marketing":
        return owner == "own"  # only that customer gave consent
    return True


def expect_read(role: str, aggregate_type: str, owner: str) -> str:
    if aggregate_type not in READABLE[role]:
        return "forbidden"
    return "ok" if reaches(role, aggregate_type, owner) else "hidden"


def expect_command(role: str, aggregate_type: str, scope: str, owner: str, command: str) -> str:
    if scope not in WRITE_SCOPES[role]:
        return "forbidden"
    if reaches(role, aggregate_type, owner):
        return "ok"
    # a customer the caller could not see afterwards is refused, not hidden: it names no record
    return "forbidden" if command == "RegisterCustomer" else "hidden"


# -- sample bodies, one per command ------------------------------------------------------
Body = Callable[[World, Records], dict[str, Any] | None]
SAMPLES: dict[str, Body] = {
    "RegisterCustomer": lambda w, r: {"kind": "person", "name": f"New of {r.owner}",
                                      "owner_id": w.users[PERSON[r.owner]]["id"]},
    "ChangeCustomerDetails": lambda w, r: {"industry": "retail"},
    "AddContact": lambda w, r: {"contact": {"kind": "phone", "value": "+49 30 1234567"}},
    "RemoveContact": lambda w, r: {"contact_id": str(uuid.uuid4())},
    "ShareCustomer": lambda w, r: {"user_id": w.users["auditor"]["id"]},
    "UnshareCustomer": lambda w, r: {"user_id": w.users["auditor"]["id"]},
    "ReassignCustomerOwner": lambda w, r: {"owner_id": w.users[PERSON[r.owner]]["id"]},  # the same
    "ChangeLifecycleStage": lambda w, r: {"stage": "prospect", "reason": "qualified"},
    "ClassifyCustomer": lambda w, r: {"segment": "smb", "reason": "size"},
    "TagCustomer": lambda w, r: {"tag": "matrix"},
    "UntagCustomer": lambda w, r: {"tag": "matrix"},
    "SetConsent": lambda w, r: {"channel": "sms", "granted": False},
    "SetPreferences": lambda w, r: {"preferences": {"newsletter": False}},
    "RecordPurchase": lambda w, r: {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount": "10", "currency": "EUR"},
    "OpenOpportunity": lambda w, r: {"customer_id": r.customer, "title": "More", "amount": "5",
                                     "currency": "EUR"},
    "UpdateOpportunity": lambda w, r: {"expected_close": "2030-01-31"},
    "ChangeOpportunityStage": lambda w, r: {"stage": "qualification"},
    "ShareOpportunity": lambda w, r: {"user_id": w.users["auditor"]["id"]},
    "UnshareOpportunity": lambda w, r: {"user_id": w.users["auditor"]["id"]},
    "WinOpportunity": lambda w, r: None,
    "LoseOpportunity": lambda w, r: {"loss_reason": "price"},
    "ReopenOpportunity": lambda w, r: {"reason": "back on"},
    "LogInteraction": lambda w, r: {"customer_id": r.customer, "channel": "note", "direction": "internal",
                                    "subject": "matrix"},
    "OpenServiceRequest": lambda w, r: {"customer_id": r.customer, "channel": "web", "type": "request",
                                        "subject": "matrix"},
    "AssignServiceRequest": lambda w, r: {"assignee_id": w.users["service_agent"]["id"]},
    "ChangeServiceRequestPriority": lambda w, r: {"priority": "high"},
    "ChangeServiceRequestStatus": lambda w, r: {"status": "in_progress"},
    "CommentOnServiceRequest": lambda w, r: {"body": "looking"},
    "ResolveServiceRequest": lambda w, r: {"resolution": "answered"},
    "RateServiceRequest": lambda w, r: {"rating": 5},
    "CreateTask": lambda w, r: {"title": "matrix", "related_type": "customer", "related_id": r.customer},
    "ReassignTask": lambda w, r: {"assignee_id": w.users[PERSON[r.owner]]["id"]},  # the same
    "ChangeTaskDue": lambda w, r: {"due_at": "2031-01-01T09:00:00Z"},
    "CommentOnTask": lambda w, r: {"body": "noted"},
    "CompleteTask": lambda w, r: None,
    "CancelTask": lambda w, r: None,
}
#: Record commands outside the command table: (method, path) -> (sample name, scope).
#: Erasure runs last of all routes (its router is included last), so it spoils no other cell.
EXTRA_COMMANDS = {("POST", f"{API}/customers/{{id}}/erasure"): ("EraseCustomer", "erasure")}
SAMPLES["EraseCustomer"] = lambda w, r: {"reason": "the data subject asked"}
#: fields of a create command that name an existing record (hidden: 422 on that field)
REFERENCES = {"customer_id", "related_id"}


# -- the route table ---------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    role: str
    method: str
    path: str
    owner: str
    expect: str


def _route_kind(method: str, path: str) -> tuple[str, str] | None:
    """(kind, aggregate type) of a record-level route, or None."""
    rel = path.removeprefix(API)
    if method == "GET" and rel == "/activity":  # the feed: read with the customers
        return "list", "customer"
    m = re.fullmatch(r"/([a-z-]+)(/\{id\})?(/[a-z-]+)?", rel)
    if not m or m.group(1) not in COLLECTIONS:
        return None
    aggregate_type = COLLECTIONS[m.group(1)]
    if method == "GET" and m.group(2):
        return "read", aggregate_type
    if method == "GET" and not m.group(2):
        return ("list", aggregate_type) if m.group(3) in (None, "/board") else None
    return None


def _walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):  # an included router
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "routes"):
            yield from _walk(route.routes, prefix + getattr(route, "path", ""))


def api_routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for path, route in _walk(app.routes):
        if path.startswith(API):
            out += [(m, path) for m in sorted(route.methods)]
    assert len(out) > 50, f"the route table looks incomplete: {out}"
    return out


#: Routes that act on no record of the five types: expected status per role.
#: (role -> the statuses that are right for it)
def _everyone(status: int) -> Callable[[str], set[int]]:
    return lambda role: {status}


def _only(roles: frozenset[str] | set[str], ok: set[int]) -> Callable[[str], set[int]]:
    return lambda role: ok if role in roles else {403}


OTHER_ROUTES: dict[tuple[str, str], Callable[[str], set[int]]] = {
    ("GET", f"{API}/schemas"): _everyone(200),
    ("GET", f"{API}/schemas/{{type_name}}/{{version}}"): _everyone(200),
    ("GET", f"{API}/notifications"): _everyone(200),
    ("GET", f"{API}/survey/{{token}}"): _everyone(403),  # a bad link, whoever asks
    ("POST", f"{API}/survey/{{token}}"): lambda role: {403, 422},
    ("GET", f"{API}/analytics/status"): _only(ANALYTICS_ROLES, {200, 503}),
    ("GET", f"{API}/analytics/kpis"): _only(ANALYTICS_ROLES, {200, 503}),
    ("GET", f"{API}/analytics/kpis/{{name}}"): _only(ANALYTICS_ROLES, {200, 503}),
    ("GET", f"{API}/analytics/clv"): _only(ANALYTICS_ROLES, {200, 503}),
    ("POST", f"{API}/analytics/sql"): _only(ANALYTICS_ROLES, {200, 503}),
    ("POST", f"{API}/analytics/export"): _only({"analyst", "admin"}, {200, 503}),
    ("GET", f"{API}/analytics/report"): _only(ANALYTICS_ROLES, {200, 503}),
}
ADMIN_ONLY_WRITE = _only({"admin"}, {200, 201, 409})
OTHER_ROUTES.update({
    # people and systems: not records of a customer; admins manage, managers read their team
    ("POST", f"{API}/auth/token"): _everyone(401),  # wrong password, whoever sends it
    ("POST", f"{API}/auth/session"): _everyone(401),  # the web UI's sign-in: the same
    ("POST", f"{API}/auth/session/refresh"): _everyone(401),  # no session cookie, whatever the token
    ("DELETE", f"{API}/auth/session"): _everyone(204),  # no session cookie: nothing to end
    ("GET", f"{API}/auth/me"): _everyone(200),
    ("POST", f"{API}/auth/refresh"): _everyone(200),
    ("GET", f"{API}/people"): _everyone(200),  # names and roles of colleagues, for every caller  # every role's user may renew their own token
    ("POST", f"{API}/users"): ADMIN_ONLY_WRITE,
    ("GET", f"{API}/users"): _only({"admin", "manager"}, {200}),
    ("GET", f"{API}/users/{{id}}"): _only({"admin", "manager"}, {200}),  # a teammate of the manager
    ("POST", f"{API}/users/{{id}}/role"): ADMIN_ONLY_WRITE,
    ("POST", f"{API}/users/{{id}}/team"): ADMIN_ONLY_WRITE,
    ("POST", f"{API}/users/{{id}}/deactivation"): ADMIN_ONLY_WRITE,
    ("POST", f"{API}/users/{{id}}/reactivation"): ADMIN_ONLY_WRITE,
    ("POST", f"{API}/users/{{id}}/password"): ADMIN_ONLY_WRITE,
    ("POST", f"{API}/teams"): ADMIN_ONLY_WRITE,
    ("POST", f"{API}/teams/{{id}}/name"): ADMIN_ONLY_WRITE,
    ("GET", f"{API}/teams"): _everyone(200),
    ("POST", f"{API}/api-keys"): ADMIN_ONLY_WRITE,
    ("GET", f"{API}/api-keys"): _only({"admin"}, {200}),
    ("POST", f"{API}/api-keys/{{id}}/revocation"): ADMIN_ONLY_WRITE,
})
Args = Callable[["World", str], dict[str, Any]]


def _fixed(**args: Any) -> Args:
    return lambda w, role: args


def _mate(**body: Any) -> Args:
    return lambda w, role: {"path": {"id": w.users["mate"]["id"]}, "json": body or None,
                            "version": ("users", w.users["mate"]["id"])}


OTHER_ARGS: dict[tuple[str, str], Args] = {
    ("GET", f"{API}/schemas/{{type_name}}/{{version}}"): _fixed(path={"type_name": "CustomerRegistered",
                                                                     "version": "1"}),
    ("GET", f"{API}/survey/{{token}}"): _fixed(path={"token": "not-a-token"}),
    ("POST", f"{API}/survey/{{token}}"): _fixed(path={"token": "not-a-token"}, json={"rating": 5}),
    ("GET", f"{API}/analytics/kpis/{{name}}"): _fixed(path={"name": "funnel"}),
    ("POST", f"{API}/analytics/sql"): _fixed(json={"sql": "SELECT 1"}),
    ("POST", f"{API}/analytics/export"): _fixed(json={"name": "matrix"}),
    ("POST", f"{API}/auth/token"): _fixed(json={"username": "nobody", "password": "not the password"}),
    # another name: sign-in attempts are limited per username (a burst of ten)
    ("POST", f"{API}/auth/session"): _fixed(json={"username": "nobody-else", "password": "not the password"}),
    ("POST", f"{API}/users"): lambda w, role: {"json": {"username": f"new-{role}-{uuid.uuid4().hex[:6]}",
                                                        "password": PASSWORD, "role": "sales_rep"}},
    ("GET", f"{API}/users/{{id}}"): lambda w, role: {"path": {"id": w.users["mate"]["id"]}},
    ("POST", f"{API}/users/{{id}}/role"): _mate(role="sales_rep"),
    ("POST", f"{API}/users/{{id}}/team"): lambda w, role: {**_mate()(w, role),
                                                            "json": {"team_id": w.users["rep"]["team_id"]}},
    ("POST", f"{API}/users/{{id}}/deactivation"): _mate(),
    ("POST", f"{API}/users/{{id}}/reactivation"): _mate(),
    ("POST", f"{API}/users/{{id}}/password"): lambda w, role: {"path": {"id": w.users["mate"]["id"]},
                                                                "json": {"password": "another long password"}},
    ("POST", f"{API}/teams"): lambda w, role: {"json": {"name": f"Team of {role}"}},
    ("POST", f"{API}/teams/{{id}}/name"): lambda w, role: {"path": {"id": w.users["rep"]["team_id"]},
                                                            "json": {"name": "North"},
                                                            "version": ("teams", w.users["rep"]["team_id"])},
    ("POST", f"{API}/api-keys"): lambda w, role: {"json": {"name": f"erp-{role}", "role": "integration"}},
    ("POST", f"{API}/api-keys/{{id}}/revocation"): lambda w, role: {"path": {"id": w.api_key}},
}


def matrix(app: Any) -> tuple[list[Cell], list[tuple[str, str]]]:
    """Every cell of the matrix, and the routes nobody classified."""
    commands = {**{(m, API + p): (cls.__name__, scope) for m, p, cls, scope, _ in COMMAND_ROUTES},
                **EXTRA_COMMANDS}
    cells: list[Cell] = []
    unknown = []
    for method, path in api_routes(app):
        kind = _route_kind(method, path)
        for role in ROLES:
            if (method, path) in commands:
                name, scope = commands[(method, path)]
                aggregate_type = COLLECTIONS[path.removeprefix(API).split("/")[1]]
                for owner in OWNERS:
                    cells.append(Cell(role, method, path, owner,
                                      expect_command(role, aggregate_type, scope, owner, name)))
            elif kind is not None and kind[0] == "list":
                cells.append(Cell(role, method, path, "list", "ok" if kind[1] in READABLE[role] else "forbidden"))
            elif kind is not None:
                export = path.endswith("/audit-export") and role not in EXPORT_ROLES
                for owner in OWNERS:
                    cells.append(Cell(role, method, path, owner,
                                      "forbidden" if export else expect_read(role, kind[1], owner)))
            elif (method, path) in OTHER_ROUTES:
                cells.append(Cell(role, method, path, "-", "other"))
            elif role == ROLES[0]:
                unknown.append((method, path))
    return cells, unknown


# -- running a cell ----------------------------------------------------------------------
def _target(w: World, cell: Cell) -> tuple[str, Records | None, str | None]:
    """The URL of the cell, the records it concerns, and the record's type when targeted."""
    rel = cell.path.removeprefix(API)
    if cell.owner == "-":
        args = OTHER_ARGS.get((cell.method, cell.path), _fixed())(w, cell.role)
        url = cell.path
        for k, v in args.get("path", {}).items():
            url = url.replace("{" + k + "}", v)
        return url, None, None
    if cell.owner == "list":
        return cell.path, None, None
    rec = w.records[cell.owner]
    aggregate_type = COLLECTIONS[rel.split("/")[1]]
    if "{id}" in cell.path:
        return cell.path.replace("{id}", rec.ids[aggregate_type]), rec, aggregate_type
    return cell.path, rec, None


def run_cell(w: World, cell: Cell, command: str | None) -> str | None:
    """None if the cell answers as expected, else what went wrong."""
    url, rec, targeted = _target(w, cell)
    headers = w.headers(cell.role)
    kwargs: dict[str, Any] = {}
    if cell.owner == "-":
        args = OTHER_ARGS.get((cell.method, cell.path), _fixed())(w, cell.role)
        if args.get("json") is not None:
            kwargs["json"] = args["json"]
        if "version" in args:
            headers["If-Match"] = f'"{w.version(*args["version"])}"'
        if cell.method == "GET":
            kwargs["params"] = {"min_position": w.position, "wait_ms": 10000}
    elif command is not None:
        assert rec is not None
        body = SAMPLES[command](w, rec)
        if body is not None:
            kwargs["json"] = body
        if targeted is not None:
            headers["If-Match"] = f'"{w.version(targeted, rec.ids[targeted])}"'
    elif targeted is None and cell.method == "GET":
        kwargs["params"] = {"min_position": w.position, "wait_ms": 10000}
    headers["X-Correlation-ID"] = f"matrix-{uuid.uuid4().hex}"  # the same for a twin request
    r = w.http.request(cell.method, url, headers=headers, **kwargs)
    if targeted is not None and rec is not None and cell.expect in ("hidden", "forbidden"):
        differs = _differs_from_missing(w, cell, url, rec.ids[targeted], headers, kwargs, r)
        if differs:
            return differs
    if r.status_code < 300 and cell.method == "POST":
        w.position = max(w.position, r.json().get("position") or 0)
    status = r.status_code
    if status >= 500:
        return f"server error {status}: {r.text[:200]}"
    if cell.expect == "other":
        allowed = OTHER_ROUTES[(cell.method, cell.path)](cell.role)
        return None if status in allowed else f"status {status}, expected one of {sorted(allowed)}: {r.text[:200]}"
    leak = _leak(w, cell, r)
    if leak:
        return leak
    field_ = r.json().get("field") if r.headers.get("content-type", "").startswith("application/problem") else None
    if cell.expect == "forbidden":
        return None if status == 403 else f"status {status}, expected 403: {r.text[:200]}"
    if cell.expect == "hidden":
        if status == 404 or (status == 422 and field_ in REFERENCES and targeted is None):
            return None
        return f"status {status}, expected it hidden: {r.text[:200]}"
    # ok
    # 422, or 404 naming a field: about something the request itself names (a contact id)
    if status in OK or (status in (404, 422) and field_ is not None and field_ not in REFERENCES):
        return None
    return f"status {status}, expected it allowed: {r.text[:200]}"


def _differs_from_missing(w: World, cell: Cell, url: str, record_id: str, headers: dict[str, str],
                          kwargs: dict[str, Any], r: httpx.Response) -> str | None:
    """How the answer about a record out of reach differs from the answer about none."""
    missing = str(uuid.uuid4())
    twin = w.http.request(cell.method, url.replace(record_id, missing), headers=headers, **kwargs)

    def seen(response: httpx.Response, id_: str) -> tuple[int, list[tuple[str, str]], bytes]:
        head = sorted((k, v.replace(id_, "{id}")) for k, v in response.headers.items() if k != "date")
        return response.status_code, head, response.content.replace(id_.encode(), b"{id}")

    if seen(r, record_id) != seen(twin, missing):
        return (f"answers unlike a missing record: {r.status_code} {r.text[:150]} | "
                f"missing: {twin.status_code} {twin.text[:150]}")
    return None


def _leak(w: World, cell: Cell, r: httpx.Response) -> str | None:
    """The name or id of a record outside the caller's reach in the answer."""
    text = r.text
    for owner, rec in w.records.items():
        if owner == cell.owner and cell.expect == "ok" or reaches(cell.role, "customer", owner):
            continue
        if all(reaches(cell.role, t, owner) for t in READABLE[cell.role]):
            continue
        if rec.name in text:
            return f"leaks the name of the {owner} customer"
        if cell.owner == "list":
            for t, id_ in rec.ids.items():
                if id_ in text and not reaches(cell.role, t, owner):
                    return f"leaks the {owner} {t} {id_}"
    return None


def test_every_route_is_in_the_matrix_and_every_cell_answers_as_expected(world: World) -> None:
    app = world.system.http_app()
    cells, unknown = matrix(app)
    assert not unknown, f"classify these routes in the authorisation matrix: {unknown}"
    commands = {**{(m, API + p): cls.__name__ for m, p, cls, _, _ in COMMAND_ROUTES},
                **{k: name for k, (name, _) in EXTRA_COMMANDS.items()}}
    assert set(SAMPLES) >= set(commands.values()), "give every command a sample body"
    assert api_routes(app)[-1] == ("POST", f"{API}/customers/{{id}}/erasure"), "erasure must run last"
    failures = []
    for cell in cells:
        problem = run_cell(world, cell, commands.get((cell.method, cell.path)))
        if problem:
            failures.append(f"{cell.role} {cell.method} {cell.path} [{cell.owner}, {cell.expect}]: {problem}")
    print(f"authorisation matrix: {len(cells)} cells over {len(api_routes(app))} routes and {len(ROLES)} roles")
    assert not failures, f"{len(failures)} of {len(cells)} cells wrong:\n" + "\n".join(failures[:60])
