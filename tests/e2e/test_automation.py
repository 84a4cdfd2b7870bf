"""Automation end to end over HTTP, with a clock the test moves: stage playbooks, service
routing with SLA escalation, task reminders, satisfaction surveys; and replaying the
automation from position 0 issues nothing new."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from commands.clock import FixedClock
from automation import survey
from tests.conftest import connect, settings_for
from tests.e2e.test_http import Api, served

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PROBLEM = "application/problem+json"
MONDAY_9 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RULES: dict[str, Any] = {
    "playbooks": [{"pipeline": "default", "stage": "proposal", "tasks": [
        {"title": "Send the proposal", "due_in_working_days": 2},
        {"title": "Follow up on the proposal", "due_in_working_days": 5}]}],
    "teams": [
        {"name": "support", "manager": "boss", "agents": [
            {"id": "agent-a"}, {"id": "agent-b"}, {"id": "agent-off", "active": False}]},
        {"name": "complaints", "manager": "boss", "escalate_to": "senior",
         "agents": [{"id": "agent-c"}]},
    ],
    "routes": [{"team": "complaints", "types": ["complaint"]}, {"team": "support"}],
    "sla": {"normal": {"first_response_minutes": 60, "resolution_minutes": 480},
            "high": {"first_response_minutes": 30, "resolution_minutes": 240}},
    "reminders": {"due_soon_minutes": 120},
    "emails": {"boss": "boss@example.com"},
    "attention": {"segments": ["vip"], "min_purchases": 5000, "currency": "EUR", "quiet_days": 30,
                  "title": "Call a quiet key customer"},
}


class Inbox:
    """An aiosmtpd handler keeping what it received."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    api: Api
    system: Any
    clock: FixedClock
    database_url: str
    inbox: Inbox

    def step(self) -> int:
        return int(self.system.automation().step())

    def max_position(self) -> int:
        return int(self.system.app.recorder.max_notification_id() or 0)

    def wait_read(self) -> int:
        return int(self.api.client.get("/ready").json()["event_log_position"])

    def events(self, path: str) -> list[dict[str, Any]]:
        return self.api.events(path, role="admin")

    def notifications(self, user: str) -> list[dict[str, Any]]:
        r = self.api.get("/api/v1/notifications", user=user, role="service_agent")
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]

    def count_events(self) -> int:
        with connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM crm_events").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def world(database_url: str, pg_env: dict[str, str], tmp_path: Path) -> Iterator[World]:
    from crm.bootstrap import build

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    clock = FixedClock(MONDAY_9)
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    smtp.start()
    system = build(settings_for(database_url, tmp_path / "data", automation_rules_file=rules,
                                analytics_enabled=False, automation_enabled=False,
                                smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_sender="crm@example.com"),
                   clock=clock)
    system.start_projections()
    try:
        with served(system) as api:
            yield World(api, system, clock, database_url, inbox)
    finally:
        system.close()
        smtp.stop()


def _customer(w: World) -> str:
    r = w.api.register("Grace Hopper", contacts=[{"kind": "email", "value": "grace@example.com"}])
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _open_request(w: World, customer_id: str, **body: Any) -> dict[str, Any]:
    r = w.api.post("/api/v1/service-requests", {"customer_id": customer_id, "channel": "email",
                                                "type": "question", "subject": "Help", **body},
                   user="front-desk", role="service_agent")
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_entering_a_stage_creates_the_playbook_tasks_for_the_owner(world: World) -> None:
    w = world
    customer_id = _customer(w)
    r = w.api.post("/api/v1/opportunities", {"customer_id": customer_id, "title": "Big deal",
                                             "amount": "1000", "currency": "EUR", "owner_id": "rep-7"})
    assert r.status_code == 201, r.text
    deal = r.json()
    w.clock.advance(timedelta(days=3))  # Thursday 9:00
    r = w.api.post(f"/api/v1/opportunities/{deal['id']}/stage", {"stage": "proposal"},
                   **{"If-Match": f'"{deal["version"]}"'})
    assert r.status_code == 200, r.text
    assert w.step() > 0
    stage_event = w.events(f"/api/v1/opportunities/{deal['id']}")[-1]
    assert stage_event["type"] == "OpportunityStageChanged"

    position = w.wait_read()
    r = w.api.get(f"/api/v1/tasks?assignee_id=rep-7&min_position={position}", user="rep-7")
    assert r.status_code == 200, r.text
    tasks = r.json()["items"]
    assert [(t["title"], t["due_at"]) for t in tasks] == [
        ("Send the proposal", "2026-03-09T09:00:00+00:00"),  # two working days after Thursday: Monday
        ("Follow up on the proposal", "2026-03-12T09:00:00+00:00"),
    ]
    created = w.events(f"/api/v1/tasks/{tasks[0]['id']}")[0]
    assert created["causation_id"] == str(stage_event["event_id"])
    assert created["correlation_id"] == stage_event["correlation_id"]
    assert created["actor_id"] == "automation"
    assert created["data"]["related_id"] == deal["id"]

    # Run again, and again from position 0: nothing new.
    before = w.count_events()
    w.step()
    with connect(w.database_url) as conn:
        conn.execute("UPDATE crm_automation_tracking SET position = 0")
    w.system.automation().step()
    assert w.count_events() == before


def test_routing_sla_breach_escalates_once_and_notifies(world: World) -> None:
    w = world
    customer_id = _customer(w)
    first = _open_request(w, customer_id)
    second = _open_request(w, customer_id)
    complaint = _open_request(w, customer_id, type="complaint", priority="high")
    w.step()
    # the least-loaded active agent of the team; complaints go to their own team
    assert _one(w, first, "ServiceRequestAssigned")["data"]["assignee_id"] == "agent-a"
    assert _one(w, second, "ServiceRequestAssigned")["data"]["assignee_id"] == "agent-b"
    assigned = _one(w, complaint, "ServiceRequestAssigned")
    assert assigned["data"]["assignee_id"] == "agent-c"
    assert assigned["causation_id"] == w.events(f"/api/v1/service-requests/{complaint['id']}")[0]["event_id"]

    # agent-a responds to the first request in time; the others breach their first response
    r = w.api.post(f"/api/v1/service-requests/{first['id']}/status", {"status": "in_progress"},
                   user="agent-a", role="service_agent", **{"If-Match": '"3"'})
    assert r.status_code == 200, r.text
    w.clock.advance(timedelta(minutes=29))
    w.step()
    assert w.notifications("boss") == []
    w.clock.advance(timedelta(minutes=2))  # 31 minutes: the complaint's 30 have passed
    w.step()
    events = w.events(f"/api/v1/service-requests/{complaint['id']}")
    assert [e["type"] for e in events[-2:]] == ["ServiceRequestPriorityChanged", "ServiceRequestAssigned"]
    assert events[-2]["data"]["priority"] == "urgent"
    assert events[-2]["reason"] == "SLA breach: first response overdue"
    assert events[-1]["data"]["assignee_id"] == "senior"
    assert events[-2]["causation_id"] == events[0]["event_id"]
    boss = w.notifications("boss")
    assert [(n["kind"], n["related_id"]) for n in boss] == [("sla_breach", complaint["id"])]

    w.clock.advance(timedelta(minutes=30))  # the normal requests' 60 minutes
    w.step()
    second_events = w.events(f"/api/v1/service-requests/{second['id']}")
    assert second_events[-1]["type"] == "ServiceRequestPriorityChanged"
    assert second_events[-1]["data"]["priority"] == "high"
    first_events = w.events(f"/api/v1/service-requests/{first['id']}")
    assert all(e["type"] != "ServiceRequestPriorityChanged" for e in first_events)  # met
    assert len(w.notifications("boss")) == 2
    assert [n["kind"] for n in w.notifications("agent-b")] == ["sla_breach"]
    # the manager has an e-mail address: one message per breach
    mail = [m for m in w.inbox.messages if m[0] == ["boss@example.com"]]
    assert len(mail) == 2 and all(b"Subject: [CRM] sla breach" in body for _, body in mail)
    assert all(b"From: crm@example.com" in body for _, body in mail)

    # Stepping again, replaying from 0 and re-firing every timer: no new events.
    before = w.count_events()
    w.step()
    with connect(w.database_url) as conn:
        conn.execute("UPDATE crm_automation_tracking SET position = 0")
        conn.execute("UPDATE crm_automation_timers SET fired_at = NULL")
    w.step()
    assert w.count_events() == before
    assert len(w.notifications("boss")) == 2
    assert len([m for m in w.inbox.messages if m[0] == ["boss@example.com"]]) == 2


def _one(w: World, request: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The request's only event of ``event_type``."""
    found = [e for e in w.events(f"/api/v1/service-requests/{request['id']}") if e["type"] == event_type]
    assert len(found) == 1, found
    return found[0]


def _queue(w: World, **params: str) -> list[dict[str, Any]]:
    """The service queue from the read model, once it has everything written so far."""
    query = "&".join(f"{k}={v}" for k, v in {"min_position": str(w.max_position()), **params}.items())
    r = w.api.get(f"/api/v1/service-requests?{query}", user="ops", role="admin")
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def test_routing_records_the_sla_on_the_request_and_the_queue_sorts_by_it(world: World) -> None:
    w = world
    customer_id = _customer(w)
    normal = _open_request(w, customer_id)
    high = _open_request(w, customer_id, priority="high")
    low = _open_request(w, customer_id, priority="low")  # no SLA for low in these rules
    w.step()
    sla = _one(w, high, "ServiceRequestSlaSet")
    assert sla["actor_id"] == "automation"
    assert sla["reason"] == ("SLA policy for high priority: first response within 30 min and resolution"
                             " within 240 min of opening")
    assert sla["causation_id"] == w.events(f"/api/v1/service-requests/{high['id']}")[0]["event_id"]
    assert sla["data"]["first_response_due_at"] == "2026-03-02T09:30:00Z"
    assert sla["data"]["resolution_due_at"] == "2026-03-02T13:00:00Z"
    assert all(e["type"] != "ServiceRequestSlaSet" for e in w.events(f"/api/v1/service-requests/{low['id']}"))

    rows = {r["id"]: r for r in _queue(w)}
    assert rows[high["id"]]["sla_due_at"] == "2026-03-02T09:30:00+00:00"  # nobody responded: the first response
    assert rows[high["id"]]["resolution_due_at"] == "2026-03-02T13:00:00+00:00"
    assert rows[normal["id"]]["sla_due_at"] == "2026-03-02T10:00:00+00:00"
    assert rows[low["id"]]["sla_due_at"] is None

    # The agent responds: the resolution's due applies.
    version = _one(w, normal, "ServiceRequestSlaSet")["aggregate_version"]
    r = w.api.post(f"/api/v1/service-requests/{normal['id']}/status", {"status": "in_progress"},
                   user="agent-a", role="service_agent", **{"If-Match": f'"{version}"'})
    assert r.status_code == 200, r.text
    w.wait_read()
    assert {r["id"]: r for r in _queue(w)}[normal["id"]]["sla_due_at"] == "2026-03-02T17:00:00+00:00"

    # A person raises the priority: the automation sets the new priority's SLA, from the
    # opening, and the breach timer follows (30 minutes instead of 60).
    w.clock.advance(timedelta(minutes=10))
    r = w.api.post(f"/api/v1/service-requests/{normal['id']}/priority", {"priority": "high", "reason": "VIP"},
                   user="ops", role="admin", **{"If-Match": f'"{version + 1}"'})
    assert r.status_code == 200, r.text
    w.step()
    resets = [e for e in w.events(f"/api/v1/service-requests/{normal['id']}") if e["type"] == "ServiceRequestSlaSet"]
    assert [e["data"]["priority"] for e in resets] == ["normal", "high"]
    assert resets[-1]["reason"].endswith("of opening; priority changed from normal")
    assert resets[-1]["data"]["resolution_due_at"] == "2026-03-02T13:00:00Z"
    assert {r["id"]: r for r in _queue(w)}[normal["id"]]["sla_due_at"] == "2026-03-02T13:00:00+00:00"
    with connect(w.database_url) as conn:
        due = conn.execute("SELECT due_at FROM crm_automation_timers WHERE id = %s",
                           (f"sla-resolution:{normal['id']}",)).fetchone()
    assert due is not None and due[0] == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)

    # The queue by priority, then the soonest due: high (09:30), high (13:00), low.
    assert [r["id"] for r in _queue(w, sort="priority")] == [high["id"], normal["id"], low["id"]]
    assert [r["id"] for r in _queue(w, sort="sla_due_at")] == [high["id"], normal["id"], low["id"]]
    assert [r["id"] for r in _queue(w, sort="-sla_due_at")][0] == normal["id"]


def test_task_reminders_due_soon_then_overdue(world: World) -> None:
    w = world
    due = MONDAY_9 + timedelta(hours=5)
    r = w.api.post("/api/v1/tasks", {"title": "Call back", "due_at": due.isoformat(), "assignee_id": "rep-2"},
                   role="manager", user="rep-2")
    assert r.status_code == 201, r.text
    task = r.json()
    w.step()
    assert w.notifications("rep-2") == []
    w.clock.advance(timedelta(hours=3, minutes=30))  # 90 minutes before: within the 120
    w.step()
    assert [n["kind"] for n in w.notifications("rep-2")] == ["task_due_soon"]
    w.clock.advance(timedelta(hours=2))
    w.step()
    kinds = [n["kind"] for n in w.notifications("rep-2")]
    assert sorted(kinds) == ["task_due_soon", "task_overdue"]
    assert all(n["related_id"] == task["id"] for n in w.notifications("rep-2"))

    # A completed task is not reminded of.
    r = w.api.post("/api/v1/tasks", {"title": "Done soon", "due_at": (w.clock.now() + timedelta(hours=1)).isoformat(),
                                     "assignee_id": "rep-3"}, role="manager", user="rep-3")
    done = r.json()
    r = w.api.post(f"/api/v1/tasks/{done['id']}/complete", None, user="rep-3", **{"If-Match": '"1"'})
    assert r.status_code == 200, r.text
    w.step()
    w.clock.advance(timedelta(hours=2))
    w.step()
    assert w.notifications("rep-3") == []


def test_the_survey_link_works_once_and_rejects_forged_and_expired_ones(world: World) -> None:
    w = world
    customer_id = _customer(w)
    sr = _open_request(w, customer_id)
    w.step()  # routed to agent-a, its SLA set
    r = w.api.post(f"/api/v1/service-requests/{sr['id']}/resolution", {"resolution": "Fixed"},
                   user="agent-a", role="service_agent", **{"If-Match": '"3"'})
    assert r.status_code == 200, r.text
    w.step()
    invitations = [n for n in w.notifications("agent-a") if n["kind"] == "survey_invitation"]
    assert len(invitations) == 1
    link = invitations[0]["link"]
    token = link.rsplit("/", 1)[1]

    r = w.api.client.get(link)  # no login
    assert r.status_code == 200, r.text
    assert r.json()["answered"] is False and r.json()["request_id"] == sr["id"]

    # forged: another request's id under a made-up signature, or a flipped signature bit
    forged = survey.sign(b"not the key", sr["id"], MONDAY_9 + timedelta(days=30))
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (forged, flipped, "x" * 20):
        r = w.api.client.post(f"/api/v1/survey/{bad}", json={"rating": 5})
        assert r.status_code == 403, r.text
        assert r.headers["content-type"] == PROBLEM and r.json()["field"] == "token"

    r = w.api.client.post(link, json={"rating": 9})
    assert r.status_code == 422 and r.json()["field"] == "rating"
    r = w.api.client.post(link, json={"rating": 4, "comment": "Quick"})
    assert r.status_code == 200, r.text
    rated = w.events(f"/api/v1/service-requests/{sr['id']}")[-1]
    assert rated["type"] == "ServiceRequestSatisfactionRated" and rated["data"]["rating"] == 4
    assert rated["actor_id"] == "survey"
    r = w.api.client.post(link, json={"rating": 1})
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert w.api.client.get(link).json()["answered"] is True

    w.clock.advance(timedelta(days=15))  # links live 14 days
    r = w.api.client.get(link)
    assert r.status_code == 410 and r.json()["field"] == "token"


def test_a_quiet_high_value_customer_gets_a_task_for_the_owner(world: World) -> None:
    w = world
    vip = w.api.register("Vera Vip").json()
    r = w.api.post(f"/api/v1/customers/{vip['id']}/classification", {"segment": "vip", "reason": "top ten"},
                   **{"If-Match": f'"{vip["version"]}"'})
    assert r.status_code == 200, r.text
    big = w.api.register("Bob Buyer", owner_id="rep-8", user="rep-8").json()
    r = w.api.post(f"/api/v1/customers/{big['id']}/purchases",
                   {"order_id": "o-1", "amount": "6000", "currency": "EUR"}, user="rep-8")
    assert r.status_code in (200, 201), r.text
    small = w.api.register("Sam Small").json()
    r = w.api.post(f"/api/v1/customers/{small['id']}/purchases",
                   {"order_id": "o-2", "amount": "6000", "currency": "USD"})  # not EUR: not counted
    assert r.status_code in (200, 201), r.text
    w.clock.advance(timedelta(days=10))
    r = w.api.post("/api/v1/interactions", {"customer_id": vip["id"], "channel": "call", "direction": "outbound",
                                            "subject": "Check-in"})
    assert r.status_code == 201, r.text
    last_call = r.json()

    def attention_tasks() -> list[dict[str, Any]]:
        position = w.wait_read()
        r = w.api.get(f"/api/v1/tasks?min_position={position}", role="admin")
        assert r.status_code == 200, r.text
        return [t for t in r.json()["items"] if t["title"] == "Call a quiet key customer"]

    w.clock.advance(timedelta(days=25))  # Bob quiet 35 days, Vera 25
    w.step()
    tasks = attention_tasks()
    assert [(t["assignee_id"], t["related_id"]) for t in tasks] == [("rep-8", big["id"])]
    w.clock.advance(timedelta(days=6))  # Vera quiet 31 days
    w.step()
    w.step()
    tasks = attention_tasks()
    assert sorted((t["assignee_id"], t["related_id"]) for t in tasks) == sorted(
        [("rep-8", big["id"]), ("rep-1", vip["id"])])
    vip_task = next(t for t in tasks if t["related_id"] == vip["id"])
    created = w.events(f"/api/v1/tasks/{vip_task['id']}")[0]
    call_event = w.events(f"/api/v1/interactions/{last_call['id']}")[0]
    assert created["causation_id"] == call_event["event_id"]

    # replaying from 0 makes nothing new; a new quiet spell after a new call does
    before = w.count_events()
    with connect(w.database_url) as conn:
        conn.execute("UPDATE crm_automation_tracking SET position = 0")
    w.step()
    assert w.count_events() == before
    r = w.api.post("/api/v1/interactions", {"customer_id": vip["id"], "channel": "email", "direction": "inbound",
                                            "subject": "Hello"})
    assert r.status_code == 201, r.text
    w.clock.advance(timedelta(days=31))
    w.step()
    assert len([t for t in attention_tasks() if t["related_id"] == vip["id"]]) == 2


def test_an_event_whose_rule_fails_on_its_data_is_parked_not_blocking(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    runner = w.system.automation()

    def broken(event: Any) -> None:
        raise RuntimeError("broken rule")

    customer_id = _customer(w)
    deal = w.api.post("/api/v1/opportunities", {"customer_id": customer_id, "title": "Deal", "amount": "1",
                                                "currency": "EUR"}).json()
    monkeypatch.setattr(runner, "_playbook", broken)
    runner.step()  # the rule fails on this event: parked at once, the step goes on
    monkeypatch.undo()
    with connect(w.database_url) as conn:
        parked = conn.execute("SELECT event_type, error FROM crm_automation_parked").fetchall()
    assert parked == [("OpportunityOpened", "RuntimeError: broken rule")]
    # what follows still runs
    r = w.api.post(f"/api/v1/opportunities/{deal['id']}/stage", {"stage": "proposal"}, **{"If-Match": '"1"'})
    assert r.status_code == 200, r.text
    runner.step()
    r = w.api.get(f"/api/v1/tasks?related_id={deal['id']}&min_position={w.wait_read()}")
    assert len(r.json()["items"]) == 2


def test_a_timer_that_keeps_failing_is_given_up_and_recorded(world: World) -> None:
    w = world
    with connect(w.database_url) as conn:
        conn.execute(
            "INSERT INTO crm_automation_timers (id, due_at, kind, payload) VALUES (%s, %s, %s, %s)",
            ("sla-first-response:gone", MONDAY_9, "sla_first_response",
             json.dumps({"request_id": "00000000-0000-4000-8000-000000000000", "team": None,
                         "causation_id": "x", "correlation_id": "y"})))
    runner = w.system.automation()
    for _ in range(2):
        with pytest.raises(Exception, match="no service request"):
            runner.step()
    runner.step()
    with connect(w.database_url) as conn:
        row = conn.execute("SELECT fired_at, outcome FROM crm_automation_timers").fetchone()
    assert row is not None and row[0] is not None and row[1].startswith("failed: NotFound")
