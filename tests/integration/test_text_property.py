"""Property: any text in any text field of any command is either refused (a 4xx, nothing
stored) or reaches every store.

The command types are those of ``commands.HANDLERS``, their text fields found from the
models (strings, secrets, string literals, at any depth: nested models, list items, the
keys and values of mappings). For each field Hypothesis puts arbitrary Unicode there --
NUL and the other control characters, lone surrogates (as JSON escapes), 10,000
characters, right-to-left text, emoji, CJK -- into an otherwise valid command, sent as an
admin through the HTTP API (the few commands no route takes as a body go through the
command service). A refusal must be a 4xx and leave the event log as it was. After all
examples the automation, every read model, the analytics DuckDB file and the Kafka
publisher (against the test broker) catch up to the head of the log with nothing parked,
and every stored event is in DuckDB, on Kafka, in its customer's timeline and in its
customer's signed audit export; every accepted record is in its read model.

A new command type fails here, named, until it has a scenario below (how to make a valid
one); a new text field of a known command is covered without a change.
"""

from __future__ import annotations

import functools
import io
import json
import types
import typing
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any
from uuid import UUID

import anyio.from_thread
import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr, ValidationError

from aggregates.customer import Customer
from aggregates.errors import DomainError
from aggregates.pipeline import LOSS_REASONS, PIPELINES
from aggregates.user import User
from commands import HANDLERS
from commands import customer as cc
from commands import identity as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import Principal, Request, WriteResult
from commands.audit import RecordAuditExport
from commands.base import Command
from commands.interaction import LogInteraction
from projections import ALL
from replay.export import verify_export
from tests.kafka_broker import MockBroker, read_all

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.usefixtures("no_kafka_tracking")]

#: Examples Hypothesis draws per (command, text field), besides the explicit ones below.
EXAMPLES_PER_FIELD = 3
#: Tried on every field, whatever Hypothesis draws.
EXPLICIT = (
    "Bad\x00Name",
    "lone \ud800 surrogate",
    "مرحبا \u202eשלום\u202c 👩\u200d👩\u200d👧 日本語テキスト 🎉",
    "長" * 10_000,
)
TEXT = st.one_of(
    # any character but controls and surrogates (mostly accepted: what must reach every store)
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=60),
    st.sampled_from(["\x00", "\x07", "\x1f", "\t\n\r", "\x7f", "\ud800", "\udfff", "\ufeff", "\uffff",
                     "\U0010ffff", "a" * 10_000, "\u202e" + "x" * 30, "🎉" * 300, "中文" * 60]),
    # any character at all (controls and surrogates included)
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.text(st.characters(exclude_categories=()), min_size=100, max_size=400),
)

ADMIN = Principal(id="admin-1", role="admin")
KEY, VALUE = "<key>", "<value>"
#: Commands no route takes as its body: run through the command service (a refusal is
#: the command model's ValidationError or a DomainError). The erasure route's body is
#: ErasureRequest (checked by its own model), which runs the whole erasure.
SERVICE_ONLY = {cs.SetServiceRequestSla, RecordAuditExport, cc.EraseCustomerPersonalData}
#: Text the read models hold as sent (stripped): (command, field) -> (view, column).
PROJECTED = {("RegisterCustomer", ("name",)): ("customers", "name"),
             ("ChangeCustomerDetails", ("name",)): ("customers", "name"),
             ("ChangeCustomerDetails", ("industry",)): ("customers", "industry"),
             ("OpenOpportunity", ("title",)): ("opportunities", "title"),
             ("LogInteraction", ("subject",)): ("interactions", "subject"),
             ("OpenServiceRequest", ("subject",)): ("service_requests", "subject"),
             ("CreateTask", ("title",)): ("tasks", "title"),
             ("CreateTeam", ("name",)): ("teams", "name"),
             ("RenameTeam", ("name",)): ("teams", "name")}
AGGREGATE_VIEWS = {"customer": "customers", "opportunity": "opportunities", "interaction": "interactions",
                   "service_request": "service_requests", "task": "tasks", "user": "users", "team": "teams",
                   "api_key": "api_keys"}

Path = tuple[str | int, ...]


# -- the text fields of a model ---------------------------------------------------------
def text_paths(model: type[BaseModel], prefix: Path = ()) -> list[Path]:
    """Where a model holds text, as paths into its JSON body: a list's item is 0, a
    mapping's key and value are KEY and VALUE."""
    out: list[Path] = []
    for name, info in model.model_fields.items():
        out += _paths(info.annotation, (*prefix, name))
    return out


def _paths(tp: Any, path: Path) -> list[Path]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str or tp is SecretStr:
        return [path]
    if origin is typing.Annotated:
        return _paths(args[0], path)
    if origin is typing.Literal:
        return [path] if any(isinstance(a, str) for a in args) else []
    if origin in (typing.Union, types.UnionType):
        found: list[Path] = []
        for a in args:
            found += [p for p in _paths(a, path) if p not in found]
        return found
    if origin in (list, tuple, set, frozenset):
        return _paths(args[0], (*path, 0))
    if origin is dict:
        return [*(_paths(args[0], (*path, KEY))), *_paths(args[1], (*path, VALUE))]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return text_paths(tp, path)
    return []


def put(body: dict[str, Any], path: Path, value: str) -> dict[str, Any]:
    """``body`` (a copy) with ``value`` at ``path``."""
    body = json.loads(json.dumps(body))
    node: Any = body
    for i, step in enumerate(path[:-1]):
        after = path[i + 1]
        if after in (KEY, VALUE):
            assert isinstance(node[step], dict) and len(node[step]) == 1, f"{path}: one entry needed"
            (k, v), = node[step].items()
            node[step] = {value: v} if after == KEY else {k: value}
            return body
        node = node[step]
    node[path[-1]] = value
    return body


# -- the system and how to make each command ----------------------------------------------
class Client:
    """Requests straight to the ASGI app (no server), on one event loop of its own."""

    def __init__(self, app: Any, portal: Any):
        self.portal = portal
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                      base_url="http://test", timeout=60)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self.http.request, method, path, **kwargs))  # type: ignore[no-any-return]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


@dataclass
class Outcome:
    status: int
    detail: str
    kind: str = ""
    id: UUID | None = None
    version: int | None = None
    position: int | None = None


@dataclass
class Harness:
    system: Any
    client: Client
    database_url: str
    routes: dict[str, tuple[str, str]]
    anchor: UUID = field(default_factory=lambda: UUID(int=0))
    n: Iterator[int] = field(default_factory=lambda: count(1))
    auth: dict[str, str] = field(default_factory=dict)
    users: dict[str, UUID] = field(default_factory=dict)

    def run(self, command: Command, target: UUID | None = None, version: int | None = None) -> WriteResult:
        return self.system.commands.execute(command, Request(  # type: ignore[no-any-return]
            principal=ADMIN, correlation_id="setup", target=target, expected_version=version))

    def head(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM crm_events").fetchone()
        return int(row[0]) if row else 0

    # records to act on (made through the command service)
    def customer(self) -> tuple[UUID, int]:
        r = self.run(cc.RegisterCustomer(kind="person", name=f"Customer {next(self.n)}", contacts=[
            cc.ContactIn(kind="address", value="1 Main St")]))
        return r.id, r.version

    def opportunity(self) -> tuple[UUID, int]:
        r = self.run(co.OpenOpportunity(customer_id=self.anchor, title="Deal", amount=100, currency="EUR"))
        return r.id, r.version

    def request(self) -> tuple[UUID, int]:
        r = self.run(cs.OpenServiceRequest(customer_id=self.anchor, channel="web", type="question",
                                           subject="Help"))
        return r.id, r.version

    def task(self) -> tuple[UUID, int]:
        r = self.run(ct.CreateTask(title="Call back", related_type="customer", related_id=self.anchor))
        return r.id, r.version

    def user(self) -> tuple[UUID, int]:
        r = self.run(ci.CreateUser(username=f"user-{next(self.n)}", password=SecretStr("a long password 1"),
                                   role="sales_rep"))
        return r.id, r.version

    def team(self) -> tuple[UUID, int]:
        r = self.run(ci.CreateTeam(name=f"Team {next(self.n)}"))
        return r.id, r.version

    def standing_user(self, name: str, *, active: bool = True) -> tuple[UUID, int]:
        """One user per ``name`` for all examples (a password hash costs ~0.3 s), active
        or not as asked."""
        if name not in self.users:
            self.users[name] = self.user()[0]
        user = self.system.app.load(User, self.users[name])
        if user.active != active:
            r = self.run(ci.ReactivateUser() if active else ci.DeactivateUser(), user.id, user.version)
            return r.id, r.version
        return user.id, user.version

    def then(self, made: tuple[UUID, int], command: Command) -> tuple[UUID, int]:
        r = self.run(command, made[0], made[1] if command.requires_version else None)
        return r.id, r.version


#: How to make a valid command of each type: (target id, its version) or None, and a body.
Made = tuple[tuple[UUID, int] | None, dict[str, Any]]
DUE = (datetime.now(UTC) + timedelta(days=3)).isoformat()
STAGES = [s.name for s in PIPELINES["default"].stages]


def _remove_contact(h: Harness) -> Made:
    cid, version = h.customer()
    contact_id = next(iter(h.system.app.load(Customer, cid).state()["contacts"]))
    return (cid, version), {"contact_id": str(contact_id), "reason": "moved"}


def _issue_key(h: Harness) -> tuple[UUID, int]:
    result, _ = ci.issue_api_key(h.system.commands, ci.IssueApiKey(name="erp", role="integration"),
                                 Request(principal=ADMIN, correlation_id="setup"))
    return result.id, result.version


SCENARIOS: dict[type[Command], Callable[[Harness], Made]] = {
    cc.RegisterCustomer: lambda h: (None, {
        "kind": "person", "name": "Ada", "source": "web", "owner_id": "rep-1", "lifecycle_stage": "lead",
        "industry": "Retail", "country": "GB", "preferred_language": "en", "tags": ["vip"], "reason": "met",
        "contacts": [{"kind": "address", "value": "1 Main St", "label": "home", "person_name": "Ada"}]}),
    cc.ChangeCustomerDetails: lambda h: (h.customer(), {
        "name": "Ada B", "industry": "Retail", "country": "GB", "preferred_language": "en", "source": "web",
        "reason": "typo"}),
    cc.AddContact: lambda h: (h.customer(), {"contact": {
        "kind": "address", "value": "2 Side St", "label": "work", "person_name": "Bob"}, "reason": "new"}),
    cc.RemoveContact: _remove_contact,
    cc.ReassignCustomerOwner: lambda h: (h.customer(), {"owner_id": "rep-2", "reason": "holiday"}),
    cc.ShareCustomer: lambda h: (h.customer(), {"user_id": "rep-2", "reason": "cover"}),
    cc.UnshareCustomer: lambda h: (h.then(h.customer(), cc.ShareCustomer(user_id="rep-2")),
                                   {"user_id": "rep-2", "reason": "back"}),
    cc.ChangeLifecycleStage: lambda h: (h.customer(), {"stage": "prospect", "reason": "qualified"}),
    cc.ClassifyCustomer: lambda h: (h.customer(), {"segment": "smb", "reason": "size"}),
    cc.TagCustomer: lambda h: (h.customer(), {"tag": "vip", "reason": "big"}),
    cc.UntagCustomer: lambda h: (h.then(h.customer(), cc.TagCustomer(tag="vip")), {"tag": "vip"}),
    cc.SetConsent: lambda h: (h.customer(), {"channel": "email", "granted": True, "reason": "form"}),
    cc.SetPreferences: lambda h: (h.customer(), {"preferences": {"newsletter": "weekly"}, "reason": "asked"}),
    cc.RecordPurchase: lambda h: (h.customer(), {
        "order_id": "o-1", "amount": "10", "currency": "EUR", "reason": "shop", "lines": [
            {"sku": "s-1", "description": "Tea", "quantity": "1", "unit_price": "10"}]}),
    cc.EraseCustomerPersonalData: lambda h: (h.customer(), {"reason": "GDPR art. 17",
                                                            "request_reference": "T-1"}),
    co.OpenOpportunity: lambda h: (None, {
        "customer_id": str(h.anchor), "title": "Deal", "amount": "100", "currency": "EUR",
        "pipeline": "default", "stage": STAGES[0], "owner_id": "rep-1", "reason": "lead"}),
    co.UpdateOpportunity: lambda h: (h.opportunity(), {"amount": "5", "currency": "EUR", "owner_id": "rep-2",
                                                       "reason": "less"}),
    co.ChangeOpportunityStage: lambda h: (h.opportunity(), {"stage": STAGES[1], "reason": "call"}),
    co.ShareOpportunity: lambda h: (h.opportunity(), {"user_id": "rep-2", "reason": "cover"}),
    co.UnshareOpportunity: lambda h: (h.then(h.opportunity(), co.ShareOpportunity(user_id="rep-2")),
                                      {"user_id": "rep-2"}),
    co.WinOpportunity: lambda h: (h.opportunity(), {"reason": "signed"}),
    co.LoseOpportunity: lambda h: (h.opportunity(), {"loss_reason": LOSS_REASONS[0], "reason": "price"}),
    co.ReopenOpportunity: lambda h: (h.then(h.opportunity(), co.WinOpportunity()),
                                     {"stage": STAGES[0], "reason": "again"}),
    LogInteraction: lambda h: (None, {
        "customer_id": str(h.anchor), "channel": "call", "direction": "inbound", "subject": "Hi",
        "body": "Talked", "participants": ["Ada"], "reason": "call"}),
    cs.OpenServiceRequest: lambda h: (None, {
        "customer_id": str(h.anchor), "channel": "web", "type": "question", "priority": "normal",
        "subject": "Help", "description": "It broke", "reason": "mail"}),
    cs.AssignServiceRequest: lambda h: (h.request(), {"assignee_id": "agent-1"}),
    cs.ChangeServiceRequestPriority: lambda h: (h.request(), {"priority": "high"}),
    cs.SetServiceRequestSla: lambda h: (h.request(), {
        "priority": "normal", "first_response_due_at": DUE, "resolution_due_at": DUE, "reason": "sla"}),
    cs.ChangeServiceRequestStatus: lambda h: (h.request(), {"status": "in_progress"}),
    cs.CommentOnServiceRequest: lambda h: (h.request(), {"body": "Looking", "visibility": "internal"}),
    cs.ResolveServiceRequest: lambda h: (h.request(), {"resolution": "Fixed"}),
    cs.RateServiceRequest: lambda h: (h.then(h.request(), cs.ResolveServiceRequest(resolution="Fixed")),
                                      {"rating": 4, "comment": "Good"}),
    ct.CreateTask: lambda h: (None, {
        "title": "Call", "description": "Soon", "assignee_id": "rep-1", "related_type": "customer",
        "related_id": str(h.anchor)}),
    ct.ReassignTask: lambda h: (h.task(), {"assignee_id": "rep-2"}),
    ct.ChangeTaskDue: lambda h: (h.task(), {"due_at": DUE}),
    ct.CommentOnTask: lambda h: (h.task(), {"body": "Done soon"}),
    ct.CompleteTask: lambda h: (h.task(), {"reason": "done"}),
    ct.CancelTask: lambda h: (h.task(), {"reason": "moot"}),
    RecordAuditExport: lambda h: (None, {"customer_id": str(h.anchor), "events": 1,
                                         "manifest_sha256": "0" * 64, "reason": "audit export"}),
    ci.CreateUser: lambda h: (None, {
        "username": f"new-{next(h.n)}", "password": "a long password 2", "role": "sales_rep",
        "display_name": "New One", "email": f"new{next(h.n)}@example.org", "reason": "hired"}),
    ci.ChangeUserRole: lambda h: (h.standing_user("role"), {"role": "manager"}),
    ci.MoveUserToTeam: lambda h: (h.standing_user("team"), {"team_id": str(h.team()[0])}),
    ci.DeactivateUser: lambda h: (h.standing_user("deactivated"), {"reason": "left"}),
    ci.ReactivateUser: lambda h: (h.standing_user("reactivated", active=False), {"reason": "back"}),
    # an admin sets another's password (current_password, when sent, must be the user's)
    ci.ChangePassword: lambda h: (h.standing_user("password"), {"password": "another password 3"}),
    ci.CreateTeam: lambda h: (None, {"name": "Sales", "reason": "new"}),
    ci.RenameTeam: lambda h: (h.team(), {"name": "Sales 2"}),
    ci.IssueApiKey: lambda h: (None, {"name": "erp", "role": "integration", "reason": "erp"}),
    ci.RevokeApiKey: lambda h: (_issue_key(h), {"reason": "leaked"}),
}


def send(h: Harness, cls: type[Command], made: Made, body: dict[str, Any]) -> Outcome:
    target, _ = made
    if cls in SERVICE_ONLY:
        try:
            command = cls.model_validate(body)
        except ValidationError as e:
            return Outcome(422, str(e.errors()[0]["loc"]))
        try:
            r = h.run(command, target[0] if target else None,
                      target[1] if target and cls.requires_version else None)
        except DomainError as e:
            return Outcome(e.status, e.detail)
        return Outcome(200, "", r.type, r.id, r.version, r.position)
    method, route = h.routes[cls.__name__]
    path = route.replace("{id}", str(target[0])) if target else route
    headers = dict(h.auth)
    if target and cls.requires_version:
        headers["If-Match"] = f'"{target[1]}"'
    # JSON escapes, as a client's encoder writes them: lone surrogates arrive as \ud800
    content = json.dumps(body, ensure_ascii=True)
    r = h.client.request(method, path, content=content,
                         headers={**headers, "Content-Type": "application/json"})
    if r.status_code >= 300:
        return Outcome(r.status_code, r.text[:300])
    out = r.json()
    return Outcome(r.status_code, "", out["type"], UUID(out["id"]), out["version"], out["position"])


# -- the property ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Accepted:
    command: str
    path: Path
    value: str
    kind: str
    aggregate_id: UUID
    version: int
    position: int


def cases() -> list[tuple[type[Command], Path]]:
    commands = sorted(HANDLERS, key=lambda c: c.__name__)
    missing = [c.__name__ for c in commands if c not in SCENARIOS]
    assert not missing, f"commands with no scenario in this test: {missing}"
    out = []
    for cls in commands:
        assert issubclass(cls, Command), f"{cls.__name__} is not a Command (its text is unchecked)"
        paths = text_paths(cls)
        assert ("reason",) in paths, cls.__name__  # the base's, at least
        out += [(cls, p) for p in paths]
    return out


def test_every_text_field_of_every_command_is_refused_or_reaches_every_store(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address, rate_limit_per_second=0)
    app = system.http_app()
    routes = {op["operationId"]: (method.upper(), path) for path, item in app.openapi()["paths"].items()
              for method, op in item.items() if "operationId" in op}
    without_route = {c for c in HANDLERS if c.__name__ not in routes} - SERVICE_ONLY
    assert not without_route, f"commands with no route: {sorted(c.__name__ for c in without_route)}"
    all_cases = cases()
    accepted: list[Accepted] = []
    outcomes: dict[str, int] = defaultdict(int)
    with anyio.from_thread.start_blocking_portal() as portal:
        client = Client(app, portal)
        h = Harness(system, client, database_url, routes,
                    auth={"Authorization": f"Bearer {system.tokens.issue('admin-1', 'admin')}"})
        h.anchor = h.customer()[0]
        for cls, path in all_cases:
            check_field(h, cls, path, accepted, outcomes)
        customers = _customers_of(h, accepted)
        timelines = {cid: _timeline(h, cid) for cid in customers}
        exported = {cid: _audit_export(h, cid) for cid in customers}
        _catch_up(system, database_url, h)
        _everything_reached(system, database_url, broker, accepted, customers, exported, timelines)
    examples = sum(outcomes.values())
    print(f"\n{len(HANDLERS)} command types, {len(all_cases)} (command, text field) pairs, "
          f"{examples} examples: {dict(outcomes)}; {len(accepted)} accepted")
    assert outcomes["accepted"] > len(all_cases) // 2, "too few accepted examples to prove anything"
    assert outcomes["refused"] > len(all_cases), "too few refused examples to prove anything"


def check_field(h: Harness, cls: type[Command], path: Path, accepted: list[Accepted],
                outcomes: dict[str, int]) -> None:
    scenario = SCENARIOS[cls]

    def one(value: str) -> None:
        made, body = scenario(h)
        before = h.head()
        outcome = send(h, cls, (made, body), put(body, path, value))
        where = f"{cls.__name__} {'.'.join(map(str, path))} = {value[:60]!r}"
        assert outcome.status < 500, f"{where}: {outcome.status} {outcome.detail}"
        if outcome.status >= 400:
            assert h.head() == before, f"{where}: refused ({outcome.status}) but the log moved"
            outcomes["refused"] += 1
            if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
                assert outcome.status == 422, f"{where}: {outcome.status} {outcome.detail}"
            return
        assert outcome.id is not None and outcome.position is not None and outcome.version is not None
        assert not any(ord(c) < 0x20 and c not in "\t\n\r" or 0xD800 <= ord(c) <= 0xDFFF for c in value), \
            f"{where}: accepted"
        outcomes["accepted"] += 1
        accepted.append(Accepted(cls.__name__, path, value, outcome.kind, outcome.id, outcome.version, outcome.position))

    run = given(TEXT)(one)
    for value in EXPLICIT:
        run = example(value)(run)
    settings(max_examples=EXAMPLES_PER_FIELD, derandomize=True, database=None, deadline=None,
             suppress_health_check=list(HealthCheck))(run)()


def _customers_of(h: Harness, accepted: list[Accepted]) -> set[UUID]:
    """The customers whose timelines hold an accepted command's events (the others'
    records hang off the anchor customer)."""
    return {h.anchor} | {a.aggregate_id for a in accepted if a.kind == "customer"}


def _timeline(h: Harness, customer_id: UUID) -> set[int]:
    positions: set[int] = set()
    after = 0
    while True:
        r = h.client.get(f"/api/v1/customers/{customer_id}/timeline?limit=1000&after={after}",
                         headers=h.auth)
        assert r.status_code == 200, r.text
        page = r.json()
        positions |= {e["position"] for e in page["items"]}
        if page["next_after"] is None:
            return positions
        after = page["next_after"]


def _audit_export(h: Harness, customer_id: UUID) -> set[int]:
    r = h.client.get(f"/api/v1/customers/{customer_id}/audit-export", headers=h.auth)
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        events, manifest = z.read("events.jsonl"), z.read("manifest.json")
    assert verify_export(events, manifest, h.system.audit_key.public_key()) == []
    return {int(json.loads(line)["position"]) for line in events.splitlines()}


def _catch_up(system: Any, database_url: str, h: Harness) -> None:
    """The automation, every read model, DuckDB and Kafka, to the head (the automation's
    own commands included), each in this thread: a runner that raises is a stalled one."""
    automation = system.automation()
    while True:
        head = h.head()
        automation.step()
        for projection in ALL:
            system.read.runner(projection).catch_up()
        system.analytics.catch_up()
        system.kafka.publisher.catch_up()
        if h.head() == head:
            break


def _everything_reached(system: Any, database_url: str, broker: MockBroker, accepted: list[Accepted],
                        customers: set[UUID], exported: dict[UUID, set[int]],
                        timelines: dict[UUID, set[int]]) -> None:
    with psycopg.connect(database_url) as conn:
        head = int(conn.execute("SELECT max(notification_id) FROM crm_events").fetchone()[0])  # type: ignore[index]
        stored = conn.execute(
            "SELECT notification_id, convert_from(state, 'UTF8')::jsonb ->> 'event_id', originator_id"
            " FROM crm_events ORDER BY notification_id").fetchall()
        positions = conn.execute(
            "SELECT r.name, t.position FROM crm_projections r"
            " JOIN crm_projection_tracking t ON t.schema_name = r.active_schema").fetchall()
        assert {name for name, _ in positions} == {p.name for p in ALL}
        assert all(p == head for _, p in positions), positions
        for table in ("crm_parked_events", "crm_kafka_parked", "crm_automation_parked"):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,):
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        kafka_at = conn.execute("SELECT position FROM crm_kafka_tracking WHERE name = 'kafka'").fetchone()
        assert kafka_at == (head,)
        # every accepted record is in its read model, at least at the accepted version,
        # and the text the finding named holds what was sent
        checked_values = 0
        for a in accepted:
            view = AGGREGATE_VIEWS.get(a.kind)
            if view is None:
                assert a.kind == "audit_export", a
                continue
            row = conn.execute(f"SELECT version FROM crm_read.{view} WHERE id = %s",
                               (a.aggregate_id,)).fetchone()
            assert row is not None and row[0] >= a.version, (a.command, a.path, view)
            if (a.command, a.path) in PROJECTED:
                view, column = PROJECTED[a.command, a.path]
                held = conn.execute(f"SELECT {column} FROM crm_read.{view} WHERE id = %s",
                                    (a.aggregate_id,)).fetchone()
                assert held is not None and held[0] in (a.value, a.value.strip()), \
                    (a.command, a.path, a.value[:60], held)
                checked_values += 1
        assert checked_values >= len(PROJECTED), "too few projected values checked"

    # DuckDB: every event, and the analytics projection at the head with nothing parked
    assert system.analytics.stats.parked == 0
    db = system.analytics.open()
    in_duckdb = {str(r[0]) for r in db.execute("SELECT event_id FROM fact_events").fetchall()}
    assert {e for _, e, _ in stored} <= in_duckdb
    assert system.analytics.position() == head

    # Kafka: every event's envelope on its topic
    topics = sorted(system.kafka.publisher.config.all_topics())
    records = read_all(broker.address, topics)
    on_kafka = {r.envelope["id"] for r in records}
    missing = [e for _, e, _ in stored if e not in on_kafka]
    assert not missing, f"{len(missing)} events not on Kafka"

    # timelines and audit exports (taken after the timelines): every accepted customer-side event
    for cid in customers:
        assert timelines[cid] <= exported[cid], cid
    customer_positions = set().union(*timelines.values())
    customer_side = [a for a in accepted if a.kind not in ("user", "team", "api_key")]
    lost = [(a.command, a.path) for a in customer_side if a.position not in customer_positions]
    assert not lost, f"accepted events in no timeline: {lost[:5]}"
