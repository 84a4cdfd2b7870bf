"""The read models on a real PostgreSQL, fed through the real commands: the pipeline
board, the activity feed, the service queue, tasks, interactions and the customer
list's aggregates; every event type handled; a rebuild equal to the live build; a
failing handler parks its event and the rest of the batch applies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row, tuple_row
from pydantic import BaseModel

import projections
from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import Principal, Request, WriteResult
from commands.clock import FixedClock
from crm.bootstrap import email_key
from crm.demo import DemoLoader
from events import all_event_types
from projections.activity import ActivityFeed
from projections.directory import Directory
from projections.base import BatchResult, BatchView, On, Projection
from projections.customers import CustomerList
from projections.interactions import InteractionTimeline
from projections.pipeline import PipelineBoard
from projections.runner import BatchRunner
from projections.service_queue import ServiceQueue
from projections.tasks import TaskList

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")
REP2 = Principal("rep-2", "sales_rep")
AGENT = Principal("agent-7", "service_agent")
BOT = Principal("erp", "integration")
#: Event types no read model needs (none today: the activity feed shows them all).
IGNORED: frozenset[str] = frozenset()
#: When the tests' back-dated events happened: a few days before now, to the second.
T0 = (datetime.now(UTC) - timedelta(days=5)).replace(microsecond=0)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# -- fixtures and helpers ---------------------------------------------------------
@pytest.fixture
def system(make_system: Callable[..., Any]) -> Any:
    """The CRM on an empty event log and empty read models (see tests/conftest.py)."""
    return make_system()


@pytest.fixture
def read(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def run(system: Any, command: BaseModel, who: Principal = REP, target: UUID | None = None,
        version: int | None = None) -> WriteResult:
    result: WriteResult = system.commands.execute(
        command, Request(who, correlation_id="corr-read-models", target=target, expected_version=version))
    return result


def catch_up(system: Any, *which: type[Projection]) -> None:
    for p in which or projections.ALL:
        system.read.runner(p).catch_up()


def one(read: psycopg.Connection[dict[str, Any]], sql: str, *params: Any) -> dict[str, Any]:
    row = read.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


def rows(read: psycopg.Connection[dict[str, Any]], sql: str, *params: Any) -> list[dict[str, Any]]:
    return list(read.execute(sql, params).fetchall())


def register(system: Any, name: str, who: Principal = REP, **fields: Any) -> WriteResult:
    return run(system, cc.RegisterCustomer.model_validate(
        {"kind": "company", "name": name, "occurred_at": at(0), **fields}), who)


def open_opportunity(system: Any, customer_id: UUID, amount: str, currency: str = "EUR",
                     **fields: Any) -> WriteResult:
    return run(system, co.OpenOpportunity.model_validate(
        {"customer_id": customer_id, "title": "Deal", "amount": amount, "currency": currency, **fields}))


def open_request(system: Any, customer_id: UUID, **fields: Any) -> WriteResult:
    return run(system, cs.OpenServiceRequest.model_validate(
        {"customer_id": customer_id, "channel": "email", "type": "incident", "priority": "normal",
         "subject": "Cannot sign in", **fields}), AGENT)


# -- the pipeline board -----------------------------------------------------------
def test_pipeline_board_rows_transitions_and_stage_totals(
    system: Any, read: psycopg.Connection[dict[str, Any]]
) -> None:
    acme = register(system, "Acme GmbH").id
    globex = register(system, "Globex Inc", who=REP2).id
    a = open_opportunity(system, acme, "10000", title="Expansion", expected_close=date(2026, 9, 30),
                         occurred_at=at(1))
    b = open_opportunity(system, acme, "5000", occurred_at=at(2))
    c = open_opportunity(system, globex, "2000", "USD", pipeline="renewal", owner_id="rep-2",
                         occurred_at=at(3))
    d = open_opportunity(system, globex, "700", occurred_at=at(4))
    catch_up(system, PipelineBoard)

    row = one(read, "SELECT * FROM crm_read.opportunities WHERE id = %s", a.id)
    assert row == {
        "id": a.id, "version": 1, "customer_id": acme, "customer_name": "Acme GmbH", "title": "Expansion",
        "pipeline": "default", "stage": "qualification", "probability": 10, "status": "open",
        "amount": Decimal("10000"), "currency": "EUR", "weighted_amount": Decimal("1000"),
        "expected_close": date(2026, 9, 30), "owner_id": "rep-1", "shared_with": [], "loss_reason": None,
        "opened_at": at(1), "closed_at": None, "updated_at": row["updated_at"], "stage_entered_at": at(1),
    }
    assert row["updated_at"] > at(1)  # recording time: now, not the back-dated business time
    assert one(read, "SELECT owner_id FROM crm_read.opportunities WHERE id = %s", d.id)["owner_id"] == "rep-2"

    # Stage moves, amount, close date and owner changes; a win, a loss, a reopening.
    v = run(system, co.ChangeOpportunityStage(stage="proposal", occurred_at=at(10)), target=b.id, version=1).version
    v = run(system, co.UpdateOpportunity.model_validate(
        {"amount": "8000", "currency": "EUR", "expected_close": "2026-10-15", "owner_id": "rep-2"}),
        target=b.id, version=v).version
    catch_up(system, PipelineBoard)
    row = one(read, "SELECT * FROM crm_read.opportunities WHERE id = %s", b.id)
    assert (row["version"], row["stage"], row["probability"], row["amount"], row["weighted_amount"]) == (
        v, "proposal", 50, Decimal("8000"), Decimal("4000"))
    assert (row["stage_entered_at"], row["expected_close"], row["owner_id"]) == (at(10), date(2026, 10, 15), "rep-2")

    run(system, co.WinOpportunity(occurred_at=at(20)), target=a.id, version=1)
    run(system, co.LoseOpportunity(loss_reason="price", occurred_at=at(21)), target=d.id, version=1)
    catch_up(system, PipelineBoard)
    won = one(read, "SELECT * FROM crm_read.opportunities WHERE id = %s", a.id)
    assert (won["status"], won["stage"], won["probability"], won["weighted_amount"], won["closed_at"]) == (
        "won", "won", 100, Decimal("10000"), at(20))
    lost = one(read, "SELECT * FROM crm_read.opportunities WHERE id = %s", d.id)
    assert (lost["status"], lost["stage"], lost["probability"], lost["weighted_amount"]) == (
        "lost", "lost", 0, Decimal("0"))
    assert (lost["loss_reason"], lost["closed_at"], lost["version"]) == ("price", at(21), 2)

    run(system, co.ReopenOpportunity(reason="came back", occurred_at=at(30)), target=d.id, version=2)
    # A rename reaches every deal of that customer.
    run(system, cc.ChangeCustomerDetails(name="Globex Corporation"), target=globex, version=1)
    catch_up(system, PipelineBoard)
    reopened = one(read, "SELECT * FROM crm_read.opportunities WHERE id = %s", d.id)
    assert (reopened["status"], reopened["stage"], reopened["probability"], reopened["loss_reason"],
            reopened["closed_at"], reopened["stage_entered_at"], reopened["version"]) == (
        "open", "qualification", 10, None, None, at(30), 3)
    names = rows(read, "SELECT customer_id, customer_name, count(*) AS n FROM crm_read.opportunities"
                       " GROUP BY 1, 2 ORDER BY 2")
    assert [(r["customer_name"], r["n"]) for r in names] == [("Acme GmbH", 2), ("Globex Corporation", 2)]

    # The board's totals per stage, as the API computes them.
    totals = rows(read,
                  "SELECT pipeline, stage, currency, count(*) AS n, sum(amount) AS amount,"
                  " sum(weighted_amount) AS weighted FROM crm_read.opportunities WHERE status = 'open'"
                  " GROUP BY pipeline, stage, currency ORDER BY pipeline, stage, currency")
    assert [(t["pipeline"], t["stage"], t["currency"], t["n"], t["amount"], t["weighted"]) for t in totals] == [
        ("default", "proposal", "EUR", 1, Decimal("8000"), Decimal("4000")),
        ("default", "qualification", "EUR", 1, Decimal("700"), Decimal("70")),
        ("renewal", "review", "USD", 1, Decimal("2000"), Decimal("800")),
    ]
    by_status = rows(read, "SELECT status, count(*) AS n FROM crm_read.opportunities GROUP BY 1 ORDER BY 1")
    assert [(r["status"], r["n"]) for r in by_status] == [("open", 3), ("won", 1)]
    assert one(read, "SELECT count(*) AS n FROM crm_read.opportunities WHERE id = %s AND version = %s",
               c.id, c.version)["n"] == 1


# -- the activity feed --------------------------------------------------------------
def test_activity_feed_has_every_event_about_a_customer_with_its_owner_then(
    system: Any, read: psycopg.Connection[dict[str, Any]]
) -> None:
    acme = register(system, "Acme GmbH").id
    run(system, ci.LogInteraction(customer_id=acme, channel="call", direction="outbound", subject="Intro",
                                  duration_minutes=20, occurred_at=at(1)))
    opp = open_opportunity(system, acme, "1000", occurred_at=at(2))
    run(system, co.ChangeOpportunityStage(stage="proposal", occurred_at=at(3)), target=opp.id, version=1)
    run(system, cc.ReassignCustomerOwner(owner_id="rep-2", reason="territory change"), target=acme, version=1)
    sr = open_request(system, acme)
    run(system, cs.CommentOnServiceRequest(body="We are on it", visibility="customer"), AGENT, target=sr.id)
    task = run(system, ct.CreateTask(title="Call back", related_type="customer", related_id=acme,
                                     assignee_id="rep-2"))
    run(system, ct.CompleteTask(), REP2, target=task.id, version=1)
    loose = run(system, ct.CreateTask(title="Tidy the desk"))  # about no customer: not in the feed
    catch_up(system, ActivityFeed)

    feed = rows(read, "SELECT * FROM crm_read.activities ORDER BY recorded_at, aggregate_version")
    assert [(f["event_type"], f["summary"], f["owner_id"]) for f in feed] == [
        ("CustomerRegistered", "Customer registered (company, lead)", "rep-1"),
        ("InteractionLogged", "Call logged (outbound, 20 min)", "rep-1"),
        ("OpportunityOpened", "Opportunity opened in default at qualification: 1000 EUR", "rep-1"),
        ("OpportunityStageChanged", "Stage changed from qualification to proposal", "rep-1"),
        ("CustomerOwnerReassigned", "Owner changed from rep-1 to rep-2", "rep-2"),
        ("ServiceRequestOpened", "Service request opened: incident, normal priority, via email", "rep-2"),
        ("ServiceRequestCommented", "Customer-visible comment added", "rep-2"),
        ("TaskCreated", "Task created for rep-2, due none", "rep-2"),
        ("TaskCompleted", "Task completed", "rep-2"),
    ]
    assert {f["customer_id"] for f in feed} == {acme}
    assert loose.id not in {f["aggregate_id"] for f in feed}
    stage = feed[3]
    assert (stage["aggregate_type"], stage["aggregate_id"], stage["aggregate_version"]) == ("opportunity", opp.id, 2)
    assert (stage["actor_id"], stage["actor_role"], stage["occurred_at"]) == ("rep-1", "sales_rep", at(3))
    assert stage["correlation_id"] == "corr-read-models"
    assert feed[4]["reason"] == "territory change"
    stored = {r["id"] for r in rows(read, "SELECT convert_from(state, 'UTF8')::jsonb ->> 'event_id' AS id"
                                          " FROM crm_events WHERE originator_id <> %s", loose.id)}
    assert {str(f["event_id"]) for f in feed} == stored
    # The feed per owner, newest first (what happened to my customers).
    mine = rows(read, "SELECT event_type FROM crm_read.activities WHERE owner_id = %s"
                      " ORDER BY occurred_at DESC, recorded_at DESC LIMIT 2", "rep-2")
    assert [m["event_type"] for m in mine] == ["TaskCompleted", "TaskCreated"]


# -- the service queue --------------------------------------------------------------
def test_service_queue_tracks_status_first_response_resolution_and_rating(
    system: Any, read: psycopg.Connection[dict[str, Any]]
) -> None:
    acme = register(system, "Acme GmbH").id
    sr = open_request(system, acme, priority="high", occurred_at=at(1))
    catch_up(system, ServiceQueue)
    row = one(read, "SELECT * FROM crm_read.service_requests WHERE id = %s", sr.id)
    assert row == {
        "id": sr.id, "version": 1, "customer_id": acme, "customer_name": "Acme GmbH", "channel": "email",
        "request_type": "incident", "priority": "high", "status": "open", "subject": "Cannot sign in",
        "assignee_id": None, "opened_at": at(1), "first_response_at": None, "resolved_at": None,
        "closed_at": None, "rating": None, "first_response_due_at": None, "resolution_due_at": None,
        "sla_due_at": None, "updated_at": row["updated_at"],
    }

    v = run(system, cs.CommentOnServiceRequest(body="note to self", occurred_at=at(2)), AGENT, target=sr.id).version
    v = run(system, cs.AssignServiceRequest(assignee_id="agent-7", occurred_at=at(3)), AGENT, sr.id, v).version
    v = run(system, cs.SetServiceRequestSla(priority="high", first_response_due_at=at(3.5),
                                            resolution_due_at=at(24), reason="SLA policy: high"),
            BOT, target=sr.id).version
    catch_up(system, ServiceQueue)
    row = one(read, "SELECT * FROM crm_read.service_requests WHERE id = %s", sr.id)
    assert (row["assignee_id"], row["first_response_at"], row["version"]) == ("agent-7", None, 4)
    # Nobody responded yet: the first response's due applies.
    assert (row["first_response_due_at"], row["resolution_due_at"], row["sla_due_at"]) == (at(3.5), at(24), at(3.5))

    v = run(system, cs.ChangeServiceRequestStatus(status="in_progress", occurred_at=at(4)), AGENT, sr.id, v).version
    v = run(system, cs.CommentOnServiceRequest(body="Try again", visibility="customer", occurred_at=at(5)),
            AGENT, target=sr.id).version
    v = run(system, cs.ChangeServiceRequestPriority(priority="urgent"), AGENT, sr.id, v).version
    catch_up(system, ServiceQueue)
    row = one(read, "SELECT * FROM crm_read.service_requests WHERE id = %s", sr.id)
    assert (row["status"], row["priority"], row["first_response_at"], row["version"]) == (
        "in_progress", "urgent", at(4), v)
    assert row["sla_due_at"] == at(24)  # responded: the resolution's due applies now

    v = run(system, cs.ResolveServiceRequest(resolution="Reset it", occurred_at=at(6)), AGENT, sr.id, v).version
    v = run(system, cs.RateServiceRequest(rating=4, occurred_at=at(7)), AGENT, target=sr.id).version
    v = run(system, cs.ChangeServiceRequestStatus(status="closed", occurred_at=at(8)), AGENT, sr.id, v).version
    catch_up(system, ServiceQueue)
    row = one(read, "SELECT * FROM crm_read.service_requests WHERE id = %s", sr.id)
    assert (row["status"], row["resolved_at"], row["closed_at"], row["rating"], row["version"]) == (
        "closed", at(6), at(8), 4, v)

    # First response by a customer-visible comment; an integration's status move is none.
    other = open_request(system, acme, channel="phone", occurred_at=at(10))
    w = run(system, cs.ChangeServiceRequestStatus(status="in_progress", occurred_at=at(11)), BOT, other.id, 1).version
    w = run(system, cs.CommentOnServiceRequest(body="Called back", visibility="customer", occurred_at=at(12)),
            AGENT, target=other.id).version
    w = run(system, cs.ResolveServiceRequest(resolution="Done", occurred_at=at(13)), AGENT, other.id, w).version
    w = run(system, cs.ChangeServiceRequestStatus(status="reopened", reason="again"), AGENT, other.id, w).version
    third = open_request(system, acme, priority="low")
    catch_up(system, ServiceQueue)
    row = one(read, "SELECT * FROM crm_read.service_requests WHERE id = %s", other.id)
    assert (row["status"], row["first_response_at"], row["resolved_at"], row["closed_at"], row["version"]) == (
        "reopened", at(12), None, None, w)

    queue = rows(read, "SELECT status, priority, count(*) AS n FROM crm_read.service_requests"
                       " WHERE status NOT IN ('resolved', 'closed') GROUP BY 1, 2 ORDER BY 1, 2")
    assert [(q["status"], q["priority"], q["n"]) for q in queue] == [("open", "low", 1), ("reopened", "normal", 1)]
    assert third.version == 1
    mine = rows(read, "SELECT id FROM crm_read.service_requests WHERE assignee_id = %s AND status = %s",
                "agent-7", "closed")
    assert [m["id"] for m in mine] == [sr.id]


# -- tasks -----------------------------------------------------------------------------
def test_task_rows_follow_their_task(system: Any, read: psycopg.Connection[dict[str, Any]]) -> None:
    acme = register(system, "Acme GmbH").id
    opp = open_opportunity(system, acme, "1000")
    due = T0 + timedelta(days=10)
    t1 = run(system, ct.CreateTask(title="Send the proposal", description="v2 with discount", due_at=due,
                                   related_type="opportunity", related_id=opp.id, occurred_at=at(1)))
    t2 = run(system, ct.CreateTask(title="Call back", related_type="customer", related_id=acme))
    t3 = run(system, ct.CreateTask(title="Expenses", assignee_id="rep-2"))
    catch_up(system, TaskList)
    row = one(read, "SELECT * FROM crm_read.tasks WHERE id = %s", t1.id)
    assert row == {
        "id": t1.id, "version": 1, "title": "Send the proposal", "description": "v2 with discount",
        "assignee_id": "rep-1", "status": "open", "due_at": due, "customer_id": acme,
        "related_type": "opportunity", "related_id": opp.id, "created_at": at(1), "completed_at": None,
        "cancelled_at": None, "updated_at": row["updated_at"],
    }

    v = run(system, ct.ReassignTask(assignee_id="rep-2"), target=t1.id, version=1).version
    v = run(system, ct.ChangeTaskDue(due_at=due + timedelta(days=1)), REP2, t1.id, v).version
    v = run(system, ct.CommentOnTask(body="Sent a draft"), REP2, target=t1.id).version
    v = run(system, ct.CompleteTask(occurred_at=at(5)), REP2, t1.id, v).version
    run(system, ct.CancelTask(reason="not needed", occurred_at=at(6)), target=t2.id, version=1)
    catch_up(system, TaskList)
    row = one(read, "SELECT * FROM crm_read.tasks WHERE id = %s", t1.id)
    assert (row["version"], row["assignee_id"], row["due_at"], row["status"], row["completed_at"]) == (
        v, "rep-2", due + timedelta(days=1), "completed", at(5))
    row = one(read, "SELECT * FROM crm_read.tasks WHERE id = %s", t2.id)
    assert (row["status"], row["cancelled_at"], row["completed_at"], row["customer_id"], row["related_type"]) == (
        "cancelled", at(6), None, acme, "customer")
    row = one(read, "SELECT * FROM crm_read.tasks WHERE id = %s", t3.id)
    assert (row["customer_id"], row["related_id"], row["assignee_id"], row["status"]) == (None, None, "rep-2", "open")

    # My open tasks, soonest due first; the tasks of a customer; of a record.
    mine = rows(read, "SELECT id, status FROM crm_read.tasks WHERE assignee_id = %s ORDER BY status, due_at",
                "rep-2")
    assert [(m["id"], m["status"]) for m in mine] == [(t1.id, "completed"), (t3.id, "open")]
    assert len(rows(read, "SELECT id FROM crm_read.tasks WHERE customer_id = %s", acme)) == 2
    assert [r["id"] for r in rows(read, "SELECT id FROM crm_read.tasks WHERE related_id = %s", opp.id)] == [t1.id]


# -- interactions ---------------------------------------------------------------------
def test_interactions_timeline(system: Any, read: psycopg.Connection[dict[str, Any]]) -> None:
    acme = register(system, "Acme GmbH").id
    opp = open_opportunity(system, acme, "1000")
    sr = open_request(system, acme)
    call = run(system, ci.LogInteraction(customer_id=acme, channel="call", direction="inbound", subject="Pricing",
                                         body="Asked about volume discounts", participants=["rep-1", "Jane Roe"],
                                         duration_minutes=25, opportunity_id=opp.id, occurred_at=at(5)))
    late = run(system, ci.LogInteraction(customer_id=acme, channel="note", direction="internal",
                                         body="Met at the fair", service_request_id=sr.id, occurred_at=at(1)),
               AGENT)
    catch_up(system, InteractionTimeline)
    row = one(read, "SELECT * FROM crm_read.interactions WHERE id = %s", call.id)
    assert row == {
        "id": call.id, "version": 1, "customer_id": acme, "channel": "call", "direction": "inbound",
        "subject": "Pricing", "body": "Asked about volume discounts", "participants": ["rep-1", "Jane Roe"],
        "duration_minutes": 25, "opportunity_id": opp.id, "service_request_id": None,
        "occurred_at": at(5), "recorded_at": row["recorded_at"], "actor_id": "rep-1",
    }
    assert row["recorded_at"] > at(5)
    timeline = rows(read, "SELECT * FROM crm_read.interactions WHERE customer_id = %s ORDER BY occurred_at DESC",
                    acme)
    assert [t["id"] for t in timeline] == [call.id, late.id]
    assert (timeline[1]["participants"], timeline[1]["service_request_id"], timeline[1]["actor_id"]) == (
        [], sr.id, "agent-7")


# -- the customer list's aggregates ----------------------------------------------------
def test_customer_list_aggregates(system: Any, read: psycopg.Connection[dict[str, Any]]) -> None:
    acme = register(system, "Acme GmbH").id
    a = open_opportunity(system, acme, "1000.50")
    b = open_opportunity(system, acme, "2000")
    c = open_opportunity(system, acme, "300", "USD")
    s1 = open_request(system, acme)
    s2 = open_request(system, acme)
    version = run(system, cc.RecordPurchase.model_validate(
        {"order_id": "SO-1", "amount": "99.50", "currency": "EUR"}), BOT, target=acme).version
    version = run(system, cc.RecordPurchase.model_validate(
        {"order_id": "SO-2", "amount": "0.50", "currency": "EUR"}), BOT, target=acme).version
    run(system, ci.LogInteraction(customer_id=acme, channel="email", direction="outbound", subject="Hi",
                                  occurred_at=at(7)))
    run(system, ci.LogInteraction(customer_id=acme, channel="email", direction="inbound", subject="Re: Hi",
                                  occurred_at=at(3)))  # logged later, happened earlier
    catch_up(system, CustomerList)

    def customer() -> dict[str, Any]:
        return one(read, "SELECT * FROM crm_read.customers WHERE id = %s", acme)

    row = customer()
    assert row["open_pipeline"] == {"EUR": "3000.50", "USD": "300"}
    assert (row["open_opportunities"], row["open_requests"], row["purchases"]) == (3, 2, 2)
    assert row["lifetime_purchases"] == {"EUR": "100.00"}
    assert (row["last_interaction_at"], row["version"]) == (at(7), version)

    run(system, co.UpdateOpportunity.model_validate({"amount": "1500", "currency": "USD"}), target=a.id, version=1)
    run(system, co.WinOpportunity(), target=b.id, version=1)
    run(system, co.LoseOpportunity(loss_reason="timing"), target=c.id, version=1)
    run(system, cs.ResolveServiceRequest(resolution="Done"), AGENT, s1.id, 1)
    catch_up(system, CustomerList)
    row = customer()
    assert row["open_pipeline"] == {"USD": "1500"}
    assert (row["open_opportunities"], row["open_requests"]) == (1, 1)

    run(system, co.ReopenOpportunity(reason="budget found"), target=c.id, version=2)
    run(system, cs.ChangeServiceRequestStatus(status="reopened"), AGENT, s1.id, 2)
    run(system, cs.ResolveServiceRequest(resolution="Done"), AGENT, s2.id, 1)
    catch_up(system, CustomerList)
    row = customer()
    assert row["open_pipeline"] == {"USD": "1800"}
    assert (row["open_opportunities"], row["open_requests"]) == (2, 1)

    run(system, cs.ChangeServiceRequestStatus(status="closed"), AGENT, s2.id, 2)
    catch_up(system, CustomerList)
    assert customer()["open_requests"] == 1


# -- coverage, rebuild, parking -----------------------------------------------------------
def test_every_event_type_is_handled_and_tables_are_distinct() -> None:
    handled = {t for p in projections.ALL for t in p.topics()}
    types = set(all_event_types())
    assert types - IGNORED <= handled, f"no read model handles {sorted(types - IGNORED - handled)}"
    assert not IGNORED & handled
    assert handled <= types, f"handlers for unknown event types {sorted(handled - types)}"
    # The feed shows everything that happens (to a customer); who works here is the
    # directory's business.
    identity = {name for name, cls in all_event_types().items()
                if cls.aggregate_type in ("user", "team", "api_key")}
    assert identity and set(ActivityFeed.topics()) == types - identity
    assert set(Directory.topics()) == identity
    names = [t.name for p in projections.ALL for t in p.tables]
    assert len(names) == len(set(names)), "every read table has its own name in crm_read"
    assert len({p.name for p in projections.ALL}) == len(projections.ALL)
    for p in projections.ALL:
        for table in p.tables:
            assert table.key in table.columns
    # The screens' tables hold one row per record, with its version (the API's ETag).
    tables = {t.name: t for p in projections.ALL for t in p.tables}
    for name in ("customers", "opportunities", "service_requests", "tasks", "interactions"):
        assert tables[name].columns["version"].startswith("int"), name
    assert tables["activities"].append_only


class _CatchingUpLoader(DemoLoader):
    """The demo loader, bringing the live read models up to date as it goes."""

    def __init__(self, *args: Any, runners: list[BatchRunner], every: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.runners = runners
        self.every = every

    def _send(self, command: BaseModel, who: str, role: str, target: UUID | None = None,
              version: int | None = None) -> Any:
        result = super()._send(command, who, role, target, version)
        if self.sent % self.every == 0:
            for runner in self.runners:
                runner.catch_up()
        return result


def _table_rows(read: psycopg.Connection[dict[str, Any]], schema: str, p: type[Projection]) -> dict[str, list[Any]]:
    return {t.name: rows(read, f'SELECT * FROM "{schema}"."{t.name}" ORDER BY "{t.key}"') for t in p.tables}


def test_a_rebuild_equals_the_live_build_row_for_row(
    system: Any, read: psycopg.Connection[dict[str, Any]]
) -> None:
    store = system.read.store
    live = {p: store.ensure_active(p) for p in projections.ALL}
    # Small batches, caught up every few commands: rows are read back and changed across
    # many batches, as they are when following the log.
    runners = [BatchRunner(p, live[p], store.conninfo, system.app.codec, batch_size=7) for p in projections.ALL]
    rebuilt: dict[type[Projection], str] = {}
    try:
        loader = _CatchingUpLoader(system.app, email_key(system.settings), FixedClock(datetime(2026, 6, 1, 12, tzinfo=UTC)),
                                   customers=40, runners=runners, every=37)
        sent = loader.load()
        for runner in runners:
            runner.catch_up()
        head = store.head()
        assert head > 500 and sent > 200
        for p in projections.ALL:
            rebuilt[p] = store.new_generation(p)
            runner = BatchRunner(p, rebuilt[p], store.conninfo, system.app.codec)
            try:
                assert runner.catch_up() == head
            finally:
                runner.close()
    finally:
        for runner in runners:
            runner.close()

    for p in projections.ALL:
        assert rebuilt[p] != live[p]
        incremental, fresh = _table_rows(read, live[p], p), _table_rows(read, rebuilt[p], p)
        for table in p.tables:
            assert incremental[table.name] == fresh[table.name], f"{p.name}.{table.name} differs"
    assert read.execute("SELECT count(*) AS n FROM crm_parked_events").fetchone() == {"n": 0}
    # Everything the demo covers is there.
    counts = {t: one(read, f"SELECT count(*) AS n FROM crm_read.{t}")["n"]
              for t in ("customers", "opportunities", "service_requests", "tasks", "interactions", "activities")}
    assert counts["customers"] == 40 and all(counts.values()), counts
    people = [n for n, c in all_event_types().items() if c.aggregate_type in ("user", "team", "api_key")]
    assert counts["activities"] == one(
        read, "SELECT count(*) AS n FROM crm_events WHERE topic <> ALL(%s)", people)["n"]
    assert one(read, "SELECT count(*) AS n FROM crm_read.users")["n"] == 9
    statuses = {r["status"] for r in rows(read, "SELECT DISTINCT status FROM crm_read.service_requests")}
    assert statuses == {"open", "in_progress", "waiting_on_customer", "resolved", "closed", "reopened"}
    # The customer list's open pipeline agrees with the board's.
    board = rows(read, "SELECT customer_id, currency, sum(amount) AS s FROM crm_read.opportunities"
                       " WHERE status = 'open' GROUP BY 1, 2")
    listed = rows(read, "SELECT id, key AS currency, value::numeric AS s"
                        " FROM crm_read.customers, jsonb_each_text(open_pipeline)")
    assert {(b["customer_id"], b["currency"], b["s"]) for b in board if b["s"]} == {
        (c["id"], c["currency"], c["s"]) for c in listed}


def test_a_failing_handler_parks_its_event_and_the_rest_of_the_batch_applies(
    system: Any, read: psycopg.Connection[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = register(system, "Acme GmbH").id
    a = open_opportunity(system, acme, "1000")
    b = open_opportunity(system, acme, "2000")
    bad = run(system, co.ChangeOpportunityStage(stage="proposal"), target=a.id, version=1)
    good = run(system, co.ChangeOpportunityStage(stage="proposal"), target=b.id, version=1)

    def failing(on: On) -> None:
        """Let the handler change the view, then fail, for ``bad``'s event only."""
        original = on.handler

        def handler(view: BatchView, event: Any) -> None:
            original(view, event)
            if event.originator_id == a.id and event.originator_version == bad.version:
                raise RuntimeError("boom")

        monkeypatch.setattr(on, "handler", handler)

    for p in (PipelineBoard, ActivityFeed):
        for on in p.handlers_for("OpportunityStageChanged"):
            failing(on)

    head = system.read.store.head()
    for p in (PipelineBoard, ActivityFeed):
        results: list[BatchResult] = []
        assert system.read.runner(p).catch_up(on_batch=results.append) == head
        assert [(r.events, len(r.parked)) for r in results if r.events] == [(head, 1)]
        assert results[0].applied == head - 1

    assert one(read, "SELECT stage, version FROM crm_read.opportunities WHERE id = %s", a.id) == {
        "stage": "qualification", "version": 1}
    assert one(read, "SELECT stage, version FROM crm_read.opportunities WHERE id = %s", b.id) == {
        "stage": "proposal", "version": good.version}
    position = one(read, "SELECT notification_id AS p FROM crm_events WHERE originator_id = %s"
                         " AND originator_version = %s", a.id, bad.version)["p"]
    parked = rows(read, "SELECT * FROM crm_parked_events ORDER BY projection")
    assert [(r["projection"], r["schema_name"], r["position"], r["event_type"], r["aggregate_id"], r["error"])
            for r in parked] == [
        ("activity", system.read.store.active_schema(ActivityFeed), position, "OpportunityStageChanged",
         str(a.id), "RuntimeError: boom"),
        ("pipeline", system.read.store.active_schema(PipelineBoard), position, "OpportunityStageChanged",
         str(a.id), "RuntimeError: boom"),
    ]
    feed = rows(read, "SELECT aggregate_id, aggregate_version FROM crm_read.activities WHERE event_type = %s",
                "OpportunityStageChanged")
    assert [(f["aggregate_id"], f["aggregate_version"]) for f in feed] == [(b.id, good.version)]
    assert one(read, "SELECT count(*) AS n FROM crm_read.activities")["n"] == head - 1
    status = {s.name: s for s in system.read.status()}
    assert (status["pipeline"].parked, status["pipeline"].position, status["customers"].parked) == (1, head, 0)


def test_reading_ahead_applies_each_event_once_and_a_stale_batch_is_refused(
    system: Any, read: psycopg.Connection[dict[str, Any]]
) -> None:
    """Catching up a long way, batches are read and decoded ahead on a second thread;
    a batch read ahead is applied only at the position it was read from."""
    for i in range(12):
        acme = register(system, f"Customer {i}").id
        open_opportunity(system, acme, str(100 * (i + 1)))
    head = system.read.store.head()
    store = system.read.store
    serial, ahead = store.new_generation(CustomerList), store.new_generation(CustomerList)
    one_batch = BatchRunner(CustomerList, serial, store.conninfo, system.app.codec)
    small = BatchRunner(CustomerList, ahead, store.conninfo, system.app.codec, batch_size=2,
                        catchup_batch_size=3)
    try:
        results: list[BatchResult] = []
        assert one_batch.catch_up() == head
        assert small.catch_up(on_batch=results.append) == head
        # The first batch is read by the runner, the rest by the read-ahead thread.
        assert [r.events for r in results] == [2] + [3] * ((head - 2) // 3) + (
            [(head - 2) % 3] if (head - 2) % 3 else [])
        assert _table_rows(read, serial, CustomerList) == _table_rows(read, ahead, CustomerList)

        # A batch read ahead from another position than the tracked one is refused,
        # and the runner forgets the rows it remembered.
        register(system, "Late Ltd")
        with read.cursor(row_factory=tuple_row) as cur:
            stale = small.decode(
                cur.execute("SELECT notification_id, originator_id, originator_version, topic, state"
                            " FROM crm_events WHERE notification_id > %s", (head - 1,)).fetchall(),
                start=head - 1)
        with pytest.raises(Exception, match="read from"):
            small.run_batch(ahead=stale)
        assert small.position() == head
        assert small.catch_up() == head + 1
    finally:
        one_batch.close()
        small.close()
