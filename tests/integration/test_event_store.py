"""The event store on a real PostgreSQL: round trips, races, idempotency, sealing,
erasure and upcasting -- through ``CommandService`` as the HTTP layer uses it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from pydantic import BaseModel, ValidationError

from aggregates import Customer, Interaction, Opportunity, ServiceRequest, Task
from aggregates.base import Aggregate
from aggregates.errors import (
    DomainError,
    Duplicate,
    InvalidTransition,
    InvalidValue,
    NotFound,
    PersonalDataErased,
)
from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import Principal, Request, WriteResult
from commands.errors import ConcurrencyConflict, IdempotencyKeyReused, PreconditionRequired
from events import base as events_base
from events.base import CrmEvent

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")
AGENT = Principal("agent-7", "service_agent")


# -- helpers ---------------------------------------------------------------------
def req(
    target: UUID | None = None,
    version: int | None = None,
    key: str | None = None,
    principal: Principal = REP,
) -> Request:
    return Request(
        principal=principal,
        correlation_id="corr-integration",
        target=target,
        expected_version=version,
        idempotency_key=key,
    )


def run(system: Any, command: BaseModel, **kwargs: Any) -> WriteResult:
    return system.commands.execute(command, req(**kwargs))


def count(db: psycopg.Connection[Any], table: str = "crm_events") -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    return {
        t: count(db, t)
        for t in ("crm_events", "crm_email_reservations", "crm_idempotency", "crm_subject_keys")
    }


def customer_ids(db: psycopg.Connection[Any]) -> list[UUID]:
    rows = db.execute(
        "SELECT DISTINCT originator_id FROM crm_events WHERE topic = 'CustomerRegistered'"
    ).fetchall()
    return [r[0] for r in rows]


def register(system: Any, name: str = "Ada Lovelace", emails: tuple[str, ...] = (), **kw: Any) -> WriteResult:
    contacts = [{"kind": "email", "value": e} for e in emails]
    return run(system, cc.RegisterCustomer(kind="person", name=name, contacts=contacts, **kw))


def in_threads(*work: Callable[[], Any], timeout: float = 30) -> list[tuple[str, Any]]:
    """Run each callable in its own thread, released together by a barrier.

    Returns ("ok", value) or ("error", exception) per callable, in order.
    """
    start = threading.Barrier(len(work), timeout=timeout)
    outcomes: list[tuple[str, Any]] = [("missing", None)] * len(work)

    def body(i: int, fn: Callable[[], Any]) -> None:
        start.wait()
        try:
            outcomes[i] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 -- the test inspects it
            outcomes[i] = ("error", e)

    threads = [threading.Thread(target=body, args=(i, fn), daemon=True) for i, fn in enumerate(work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a racing command did not finish"
    return outcomes


def pause_after_first_call(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, parties: int = 2) -> None:
    """Make every thread's first call of ``obj.name`` wait for the others' first call.

    Forces the interleaving of a race: all writers have read before any writes.
    """
    original = getattr(obj, name)
    barrier = threading.Barrier(parties, timeout=15)
    local = threading.local()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not getattr(local, "paused", False):
            local.paused = True
            barrier.wait()
        return result

    monkeypatch.setattr(obj, name, wrapper)


# -- every aggregate type: append, then reload in a fresh application ------------
def _customer_story(system: Any) -> tuple[type[Aggregate], UUID, int, Callable[[Any], None]]:
    r = run(system, cc.RegisterCustomer(
        kind="company",
        name="Analytical Engines Ltd",
        contacts=[
            {"kind": "email", "value": "Office@Engines.example", "label": "work", "primary": True},
            {"kind": "phone", "value": "+44 20 7946 0000", "person_name": "Charles Babbage"},
        ],
        industry="Machinery",
        country="GB",
        preferred_language="en-GB",
        tags=["vip"],
    ))
    cid = r.id
    first = system.app.load(Customer, cid)
    phone_id = next(c.contact_id for c in first.contacts.values() if c.kind == "phone")
    v = r.version
    steps: list[tuple[BaseModel, bool]] = [
        (cc.ChangeCustomerDetails(name="Analytical Engines plc", industry="Computing", country=None), True),
        (cc.AddContact(contact={"kind": "address", "value": "1 Dorset St,  London"}), False),
        (cc.RemoveContact(contact_id=phone_id), True),
        (cc.ReassignCustomerOwner(owner_id="rep-2"), True),
        (cc.ChangeLifecycleStage(stage="customer", reason="signed"), True),
        (cc.ClassifyCustomer(segment="enterprise", reason="headcount"), True),
        (cc.TagCustomer(tag="key-account"), False),
        (cc.UntagCustomer(tag="vip"), False),
        (cc.SetConsent(channel="email", granted=True), False),
        (cc.SetPreferences(preferences={"newsletter": True, "tone": "formal"}), False),
        (cc.RecordPurchase(
            order_id="ORD-1", amount=Decimal("25.50"), currency="GBP",
            lines=[{"sku": "GEAR", "quantity": Decimal("3"), "unit_price": Decimal("8.50")}],
        ), False),
    ]
    for command, versioned in steps:
        result = run(system, command, target=cid, version=v if versioned else None)
        assert result.version == v + 1, type(command).__name__
        v = result.version

    def check(c: Any) -> None:
        assert c.kind == "company"
        assert c.name == "Analytical Engines plc"
        assert c.industry == "Computing" and c.country is None
        assert c.preferred_language == "en-GB"
        assert sorted((p.kind, p.value) for p in c.contacts.values()) == [
            ("address", "1 Dorset St,  London"), ("email", "office@engines.example"),
        ]
        assert c.owner_id == "rep-2"
        assert c.lifecycle_stage == "customer" and c.segment == "enterprise"
        assert c.tags == ["key-account"]
        assert c.consents == {"email": True}
        assert c.preferences == {"newsletter": True, "tone": "formal"}
        assert c.purchases["ORD-1"]["amount"] == Decimal("25.50")
        assert c.purchases["ORD-1"]["currency"] == "GBP"
        assert c.personal_data_erased is False

    return Customer, cid, v, check


def _opportunity_story(system: Any) -> tuple[type[Aggregate], UUID, int, Callable[[Any], None]]:
    cid = register(system).id
    r = run(system, co.OpenOpportunity(
        customer_id=cid, title="Difference engine", amount=Decimal("1000"), currency="EUR",
        expected_close=date(2030, 1, 31),
    ))
    oid, v = r.id, r.version
    for command in (
        co.UpdateOpportunity(amount=Decimal("1250.25"), currency="USD", expected_close=date(2030, 3, 1)),
        co.ChangeOpportunityStage(stage="proposal"),
        co.LoseOpportunity(loss_reason="price"),
        co.ReopenOpportunity(reason="they called back"),
        co.ChangeOpportunityStage(stage="negotiation"),
        co.WinOpportunity(),
    ):
        result = run(system, command, target=oid, version=v)
        assert result.version > v
        v = result.version

    def check(o: Any) -> None:
        assert o.customer_id == cid
        assert o.title == "Difference engine"
        assert (o.amount, o.currency) == (Decimal("1250.25"), "USD")
        assert o.expected_close == date(2030, 3, 1)
        assert (o.status, o.stage, o.probability) == ("won", "won", 100)
        assert o.loss_reason is None and o.last_open_stage == "negotiation"

    return Opportunity, oid, v, check


def _interaction_story(system: Any) -> tuple[type[Aggregate], UUID, int, Callable[[Any], None]]:
    cid = register(system).id
    oid = run(system, co.OpenOpportunity(
        customer_id=cid, title="Deal", amount=Decimal("5"), currency="EUR")).id
    sid = run(system, cs.OpenServiceRequest(
        customer_id=cid, channel="email", type="question", subject="How?")).id
    when = datetime(2024, 2, 29, 9, 30, tzinfo=UTC)
    r = run(system, ci.LogInteraction(
        customer_id=cid, channel="call", direction="inbound", subject="Follow-up",
        body="Talked through the proposal.", participants=["Ada", "Charles"],
        duration_minutes=25, opportunity_id=oid, service_request_id=sid, occurred_at=when,
    ))

    def check(i: Any) -> None:
        assert (i.customer_id, i.opportunity_id, i.service_request_id) == (cid, oid, sid)
        assert (i.channel, i.direction, i.duration_minutes) == ("call", "inbound", 25)
        assert i.subject == "Follow-up" and i.body == "Talked through the proposal."
        assert i.participants == ["Ada", "Charles"]
        assert i.occurred_at == when

    return Interaction, r.id, r.version, check


def _service_request_story(system: Any) -> tuple[type[Aggregate], UUID, int, Callable[[Any], None]]:
    cid = register(system).id
    r = run(system, cs.OpenServiceRequest(
        customer_id=cid, channel="phone", type="incident", priority="high",
        subject="Engine jammed", description="Gears stuck at column 3",
    ))
    sid, v = r.id, r.version
    comment_id = None
    for command, versioned in (
        (cs.AssignServiceRequest(assignee_id="agent-7"), True),
        (cs.ChangeServiceRequestPriority(priority="urgent"), True),
        (cs.ChangeServiceRequestStatus(status="in_progress"), True),
        (cs.CommentOnServiceRequest(body="Oiled the gears", visibility="customer"), False),
        (cs.ResolveServiceRequest(resolution="Replaced a gear"), True),
        (cs.RateServiceRequest(rating=4, comment="Quick"), False),
    ):
        result = system.commands.execute(
            command, req(target=sid, version=v if versioned else None, principal=AGENT)
        )
        assert result.version == v + 1
        v = result.version
        comment_id = result.result.get("comment_id", comment_id)
    assert comment_id is not None

    def check(s: Any) -> None:
        assert s.customer_id == cid
        assert (s.channel, s.request_type, s.priority) == ("phone", "incident", "urgent")
        assert s.subject == "Engine jammed" and s.description == "Gears stuck at column 3"
        assert (s.status, s.assignee_id) == ("resolved", "agent-7")
        assert s.resolution == "Replaced a gear"
        assert (s.rating, s.rating_comment) == (4, "Quick")
        assert [(str(c["comment_id"]), c["body"], c["author_id"]) for c in s.comments] == [
            (comment_id, "Oiled the gears", "agent-7")
        ]

    return ServiceRequest, sid, v, check


def _task_story(system: Any) -> tuple[type[Aggregate], UUID, int, Callable[[Any], None]]:
    cid = register(system).id
    due = datetime(2031, 5, 1, 17, 0, tzinfo=UTC)
    r = run(system, ct.CreateTask(
        title="Send the contract", description="Both copies", due_at=due,
        related_type="customer", related_id=cid,
    ))
    tid, v = r.id, r.version
    later = due + timedelta(days=2)
    for command, versioned in (
        (ct.ReassignTask(assignee_id="rep-9"), True),
        (ct.ChangeTaskDue(due_at=later), True),
        (ct.CommentOnTask(body="Printed"), False),
        (ct.CompleteTask(), True),
    ):
        result = run(system, command, target=tid, version=v if versioned else None)
        assert result.version == v + 1
        v = result.version

    def check(t: Any) -> None:
        assert t.customer_id == cid
        assert (t.related_type, t.related_id) == ("customer", cid)
        assert t.title == "Send the contract" and t.description == "Both copies"
        assert (t.assignee_id, t.due_at, t.status) == ("rep-9", later, "completed")
        assert [c["body"] for c in t.comments] == ["Printed"]

    return Task, tid, v, check


STORIES = {
    "customer": _customer_story,
    "opportunity": _opportunity_story,
    "interaction": _interaction_story,
    "service_request": _service_request_story,
    "task": _task_story,
}


@pytest.mark.parametrize("aggregate_type", sorted(STORIES))
def test_every_aggregate_type_reloads_equal_in_a_fresh_application(
    make_system: Callable[..., Any], db: psycopg.Connection[Any], aggregate_type: str
) -> None:
    writer = make_system()
    cls, aggregate_id, version, check = STORIES[aggregate_type](writer)
    assert cls.type_name == aggregate_type

    before = writer.app.load(cls, aggregate_id)
    check(before)
    assert before.version == version

    reader = make_system()  # a new process on the same database: nothing cached
    after = reader.app.load(cls, aggregate_id)
    assert type(after) is cls
    assert after.version == version
    assert after == before
    check(after)
    assert reader.app.load_any(aggregate_id) == before

    # Stored: one row per version, gap-free, positions strictly increasing.
    rows = db.execute(
        "SELECT originator_version, notification_id FROM crm_events"
        " WHERE originator_id = %s ORDER BY originator_version",
        (aggregate_id,),
    ).fetchall()
    assert [r[0] for r in rows] == list(range(1, version + 1))
    positions = [r[1] for r in rows]
    assert positions == sorted(set(positions))
    assert reader.app.recorder.positions(aggregate_id) == dict(rows)

    # Any earlier version can be rebuilt too.
    first = reader.app.load(cls, aggregate_id, version=1)
    assert first.version == 1


def test_write_result_reports_the_log_position(system: Any, db: psycopg.Connection[Any]) -> None:
    r1 = register(system, "One")
    r2 = register(system, "Two")
    r3 = run(system, cc.TagCustomer(tag="x"), target=r1.id)
    assert (r1.position, r2.position, r3.position) == (1, 2, 3)
    assert (r1.created, r2.created, r3.created) == (True, True, False)
    assert (r1.status, r3.status) == (201, 200)
    assert system.app.recorder.max_notification_id() == 3
    # A command that changes nothing stores nothing and answers with the current state.
    r4 = run(system, cc.TagCustomer(tag="x"), target=r1.id)
    assert (r4.version, r4.position, r4.created) == (2, 3, False)
    assert count(db) == 3


# -- concurrency -------------------------------------------------------------------
def test_two_writers_with_the_same_expected_version_one_wins(
    system: Any, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = register(system).id
    assert count(db) == 1
    # Both writers load version 1 from the log (none from the command cache) before
    # either saves.
    system.commands.cache.clear()
    pause_after_first_call(monkeypatch, system.app, "load")

    def change(industry: str) -> Callable[[], WriteResult]:
        return lambda: run(system, cc.ChangeCustomerDetails(industry=industry), target=cid, version=1)

    outcomes = in_threads(change("Shipping"), change("Mining"))
    oks = [v for kind, v in outcomes if kind == "ok"]
    errors = [v for kind, v in outcomes if kind == "error"]
    assert len(oks) == 1 and len(errors) == 1, outcomes
    assert oks[0].version == 2
    conflict = errors[0]
    assert type(conflict) is ConcurrencyConflict
    assert conflict.status == 409
    assert conflict.current_version == 2
    assert conflict.field == "If-Match"
    assert count(db) == 2  # exactly one more event

    monkeypatch.undo()
    stored = system.app.load(Customer, cid)
    assert stored.version == 2
    winner = "Shipping" if outcomes[0][0] == "ok" else "Mining"
    assert stored.industry == winner


def test_racing_appends_without_expected_version_both_succeed_by_retrying(
    system: Any, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = register(system, emails=("first@race.example",)).id
    system.commands.cache.clear()
    pause_after_first_call(monkeypatch, system.app, "load")

    def add(email: str) -> Callable[[], WriteResult]:
        return lambda: run(system, cc.AddContact(contact={"kind": "email", "value": email}), target=cid)

    outcomes = in_threads(add("second@race.example"), add("third@race.example"))
    assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
    assert sorted(r.version for _, r in outcomes) == [2, 3]
    assert count(db) == 3
    assert count(db, "crm_email_reservations") == 3

    monkeypatch.undo()
    stored = system.app.load(Customer, cid)
    assert stored.version == 3
    assert sorted(stored.emails()) == [
        "first@race.example", "second@race.example", "third@race.example"
    ]
    # The contact ids the callers were given are the stored ones.
    given = {r.result["contact_id"] for _, r in outcomes}
    assert given <= {str(c) for c in stored.contacts}


def test_a_stale_expected_version_is_refused_with_the_current_one(
    system: Any, db: psycopg.Connection[Any]
) -> None:
    cid = register(system).id
    run(system, cc.ChangeCustomerDetails(industry="A"), target=cid, version=1)
    with pytest.raises(ConcurrencyConflict) as info:
        run(system, cc.ChangeCustomerDetails(industry="B"), target=cid, version=1)
    assert info.value.current_version == 2
    assert info.value.extra["aggregate_id"] == str(cid)
    assert count(db) == 2
    assert system.app.load(Customer, cid).industry == "A"


# -- idempotency -----------------------------------------------------------------
def test_the_same_idempotency_key_twice_answers_the_first_result(
    system: Any, db: psycopg.Connection[Any]
) -> None:
    command = cc.RegisterCustomer(kind="person", name="Grace Hopper",
                                  contacts=[{"kind": "email", "value": "grace@navy.example"}])
    first = run(system, command, key="register-grace-1")
    again = run(system, command, key="register-grace-1")
    assert first.replayed is False and again.replayed is True
    assert again.body() == first.body()
    assert (again.id, again.version, again.position, again.status) == (first.id, 1, first.position, 201)
    assert count(db) == 1
    assert count(db, "crm_idempotency") == 1

    # Same key, different request: refused, nothing stored.
    other = cc.RegisterCustomer(kind="person", name="Someone Else")
    with pytest.raises(IdempotencyKeyReused) as info:
        run(system, other, key="register-grace-1")
    assert info.value.status == 422 and info.value.field == "Idempotency-Key"
    assert count(db) == 1

    # Keys belong to their principal: another caller's same key is another request.
    someone = run(system, other, key="register-grace-1", principal=AGENT)
    assert someone.replayed is False and someone.id != first.id
    assert count(db) == 2


def test_idempotent_replay_of_a_versioned_change_is_not_a_conflict(
    system: Any, db: psycopg.Connection[Any]
) -> None:
    cid = register(system).id
    command = cc.ChangeCustomerDetails(industry="Textiles")
    first = run(system, command, target=cid, version=1, key="chg-1")
    again = run(system, command, target=cid, version=1, key="chg-1")
    assert first.version == again.version == 2
    assert again.replayed is True
    assert count(db) == 2

    add = cc.AddContact(contact={"kind": "phone", "value": "+1 555 0100"})
    a1 = run(system, add, target=cid, key="add-phone")
    a2 = run(system, add, target=cid, key="add-phone")
    assert a1.result == a2.result and "contact_id" in a1.result
    assert a2.replayed is True
    assert count(db) == 3
    assert len(system.app.load(Customer, cid).contacts) == 1


def test_a_retry_after_a_restart_finds_the_first_answer(
    make_system: Callable[..., Any], db: psycopg.Connection[Any]
) -> None:
    """The crash between commit and response: the client retries against a new process."""
    before = make_system()
    command = cc.RegisterCustomer(kind="company", name="Restart Ltd",
                                  contacts=[{"kind": "email", "value": "ops@restart.example"}])
    first = run(before, command, key="restart-key")
    before.close()  # the process dies before the client saw the answer

    after = make_system()  # a fresh CrmApplication and CommandService
    again = run(after, command, key="restart-key")
    assert again.replayed is True
    assert again.body() == first.body()
    assert again.status == 201
    assert count(db) == 1
    assert after.app.load(Customer, first.id).name == "Restart Ltd"


def test_concurrent_requests_with_the_same_key_store_one_event(
    system: Any, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both requests find no earlier answer before either saves.
    pause_after_first_call(monkeypatch, system.app.recorder, "idempotency_record")
    command = cc.RegisterCustomer(kind="person", name="Twin Request")

    outcomes = in_threads(
        lambda: run(system, command, key="same-key"),
        lambda: run(system, command, key="same-key"),
    )
    assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
    a, b = (r for _, r in outcomes)
    assert a.id == b.id
    assert a.body() == b.body()
    assert sorted([a.replayed, b.replayed]) == [False, True]
    assert count(db) == 1
    assert count(db, "crm_idempotency") == 1
    assert customer_ids(db) == [a.id]


# -- e-mail uniqueness ----------------------------------------------------------
def test_a_registered_email_in_another_case_is_a_duplicate(
    system: Any, db: psycopg.Connection[Any]
) -> None:
    owner = register(system, "Jane Doe", emails=("Jane.Doe@Example.com",)).id
    before = counts(db)
    with pytest.raises(Duplicate) as info:
        register(system, "Impostor", emails=("  jane.doe@EXAMPLE.COM",))
    assert info.value.status == 409
    assert info.value.field == "contacts.0.value"
    assert info.value.extra["existing_customer_id"] == str(owner)
    assert str(owner) in info.value.detail
    assert counts(db) == before

    # Adding it to another customer is refused the same way.
    other = register(system, "Other").id
    with pytest.raises(Duplicate) as info:
        run(system, cc.AddContact(contact={"kind": "email", "value": "JANE.doe@example.com"}), target=other)
    assert info.value.extra["existing_customer_id"] == str(owner)

    # Once the owner removes the address, it is free again.
    contact_id = next(iter(system.app.load(Customer, owner).contacts))
    run(system, cc.RemoveContact(contact_id=contact_id), target=owner, version=1)
    assert count(db, "crm_email_reservations") == 0
    run(system, cc.AddContact(contact={"kind": "email", "value": "jane.doe@example.com"}), target=other)
    assert count(db, "crm_email_reservations") == 1


def test_racing_registrations_of_one_new_email_store_one_customer(
    system: Any, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both have decided (and are sealing their events) before either saves.
    pause_after_first_call(monkeypatch, system.app.keys, "key_for")
    outcomes = in_threads(
        lambda: register(system, "Racer One", emails=("race@once.example",)),
        lambda: register(system, "Racer Two", emails=("RACE@once.example",)),
    )
    oks = [v for kind, v in outcomes if kind == "ok"]
    errors = [v for kind, v in outcomes if kind == "error"]
    assert len(oks) == 1 and len(errors) == 1, outcomes
    assert type(errors[0]) is Duplicate
    assert errors[0].extra["existing_customer_id"] == str(oks[0].id)
    assert customer_ids(db) == [oks[0].id]
    assert count(db) == 1
    assert count(db, "crm_email_reservations") == 1


# -- bad input: refused, nothing stored ---------------------------------------------
BAD_INPUT: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (cc.RegisterCustomer, {"kind": "person", "name": "X", "nickname": "extra"}, "nickname"),
    (cc.RegisterCustomer, {"kind": "robot", "name": "X"}, "kind"),
    (cc.RegisterCustomer, {"kind": "person", "name": 42}, "name"),
    (cc.RegisterCustomer, {"kind": "person", "name": "X", "contacts": "a@b.example"}, "contacts"),
    (cc.RegisterCustomer, {"kind": "person", "name": "X",
                           "contacts": [{"kind": "email", "value": "not-an-email"}]}, "contacts.0"),
    (cc.RegisterCustomer, {"kind": "person", "name": "X",
                           "contacts": [{"kind": "email", "value": "a@b.example", "x": 1}]}, "contacts.0.x"),
    (cc.RegisterCustomer, {"kind": "person", "name": "X", "country": "Germany"}, "country"),
    (cc.RecordPurchase, {"order_id": "1", "amount": "10.00", "currency": "eur"}, "currency"),
    (cc.RecordPurchase, {"order_id": "1", "amount": "ten", "currency": "EUR"}, "amount"),
    (co.OpenOpportunity, {"customer_id": str(uuid.uuid4()), "title": "T", "amount": "1",
                          "currency": "EURO"}, "currency"),
    (co.OpenOpportunity, {"customer_id": "not-a-uuid", "title": "T", "amount": "1",
                          "currency": "EUR"}, "customer_id"),
    (cc.AddContact, {"contact": {"kind": "email", "value": "two@@at.example"}}, "contact"),
    (cc.ChangeCustomerDetails, {}, ""),
    (cc.ChangeCustomerDetails, {"name": None}, "name"),
    (ci.LogInteraction, {"customer_id": str(uuid.uuid4()), "channel": "call", "direction": "inbound",
                         "body": "b", "occurred_at": "2024-01-01T10:00:00"}, "occurred_at"),
    (cs.RateServiceRequest, {"rating": 6}, "rating"),
    (ct.CreateTask, {"title": "t", "assignee_id": "has spaces"}, "assignee_id"),
]


@pytest.mark.parametrize(("model", "data", "loc"), BAD_INPUT,
                         ids=[f"{m.__name__}-{loc or 'model'}-{i}" for i, (m, _, loc) in enumerate(BAD_INPUT)])
def test_invalid_command_input_is_refused_by_the_model(
    system: Any, db: psycopg.Connection[Any], model: type[BaseModel], data: dict[str, Any], loc: str
) -> None:
    register(system)
    before = counts(db)
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    locs = [".".join(str(p) for p in err["loc"]) for err in info.value.errors()]
    assert any(x.startswith(loc) for x in locs), locs
    assert counts(db) == before


def _refusals() -> list[tuple[str, Callable[[Any], tuple[BaseModel, Request]], type[DomainError], str | None]]:
    """(name, setup(system) -> (command, request), error class, field)."""

    def customer(system: Any) -> UUID:
        return register(system, "Refused Customer", emails=("refused@example.com",)).id

    def purchase_does_not_add_up(s: Any) -> tuple[BaseModel, Request]:
        return cc.RecordPurchase(
            order_id="O-1", amount=Decimal("10.00"), currency="EUR",
            lines=[{"sku": "a", "quantity": Decimal("1"), "unit_price": Decimal("9.00")}],
        ), req(customer(s), key="k-purchase")

    def currency_not_iso(s: Any) -> tuple[BaseModel, Request]:
        return co.OpenOpportunity(customer_id=customer(s), title="T", amount=Decimal(1),
                                  currency="XYZ"), req(key="k-cur")

    def too_many_decimals(s: Any) -> tuple[BaseModel, Request]:
        return co.OpenOpportunity(customer_id=customer(s), title="T", amount=Decimal("1.5"),
                                  currency="JPY"), req()

    def note_not_internal(s: Any) -> tuple[BaseModel, Request]:
        return ci.LogInteraction(customer_id=customer(s), channel="note", direction="outbound",
                                 body="b"), req(key="k-note")

    def unknown_customer_reference(s: Any) -> tuple[BaseModel, Request]:
        customer(s)
        return ci.LogInteraction(customer_id=uuid.uuid4(), channel="call", direction="inbound",
                                 body="b"), req()

    def related_without_id(s: Any) -> tuple[BaseModel, Request]:
        customer(s)
        return ct.CreateTask(title="t", related_type="customer"), req()

    def future_occurred_at(s: Any) -> tuple[BaseModel, Request]:
        return ci.LogInteraction(customer_id=customer(s), channel="call", direction="inbound",
                                 body="b", occurred_at=datetime.now(UTC) + timedelta(days=1)), req()

    def lifecycle_jump(s: Any) -> tuple[BaseModel, Request]:
        return cc.ChangeLifecycleStage(stage="churned", reason="gone"), req(customer(s), 1, key="k-lc")

    def rate_unresolved(s: Any) -> tuple[BaseModel, Request]:
        sid = run(s, cs.OpenServiceRequest(customer_id=customer(s), channel="web", type="question",
                                           subject="s")).id
        return cs.RateServiceRequest(rating=5), req(sid)

    def unknown_target(s: Any) -> tuple[BaseModel, Request]:
        customer(s)
        return cc.ChangeCustomerDetails(industry="x"), req(uuid.uuid4(), 1)

    def target_of_another_type(s: Any) -> tuple[BaseModel, Request]:
        oid = run(s, co.OpenOpportunity(customer_id=customer(s), title="T", amount=Decimal(1),
                                        currency="EUR")).id
        return cc.TagCustomer(tag="vip"), req(oid)

    def no_expected_version(s: Any) -> tuple[BaseModel, Request]:
        return cc.ChangeCustomerDetails(industry="x"), req(customer(s), key="k-pre")

    def stale_version(s: Any) -> tuple[BaseModel, Request]:
        return cc.ChangeCustomerDetails(industry="x"), req(customer(s), 3, key="k-stale")

    def same_contact_twice(s: Any) -> tuple[BaseModel, Request]:
        return cc.AddContact(contact={"kind": "email", "value": "REFUSED@example.com"}), req(customer(s))

    def win_twice(s: Any) -> tuple[BaseModel, Request]:
        oid = run(s, co.OpenOpportunity(customer_id=customer(s), title="T", amount=Decimal(1),
                                        currency="EUR")).id
        run(s, co.WinOpportunity(), target=oid, version=1)
        return co.ChangeOpportunityStage(stage="proposal"), req(oid, 2)

    return [
        ("purchase-lines-do-not-add-up", purchase_does_not_add_up, InvalidValue, "amount"),
        ("currency-not-iso-4217", currency_not_iso, InvalidValue, "currency"),
        ("too-many-decimal-places", too_many_decimals, InvalidValue, "amount"),
        ("note-not-internal", note_not_internal, InvalidValue, "direction"),
        ("unknown-customer-reference", unknown_customer_reference, InvalidValue, "customer_id"),
        ("related-type-without-id", related_without_id, InvalidValue, "related_id"),
        ("occurred-at-in-the-future", future_occurred_at, InvalidValue, "occurred_at"),
        ("lifecycle-lead-to-churned", lifecycle_jump, InvalidTransition, "stage"),
        ("rate-unresolved-request", rate_unresolved, InvalidTransition, "status"),
        ("stage-change-on-won-deal", win_twice, InvalidTransition, "status"),
        ("unknown-target-id", unknown_target, NotFound, None),
        ("target-of-another-type", target_of_another_type, NotFound, None),
        ("no-expected-version", no_expected_version, PreconditionRequired, "If-Match"),
        ("stale-expected-version", stale_version, ConcurrencyConflict, "If-Match"),
        ("same-contact-twice", same_contact_twice, Duplicate, "value"),
    ]


REFUSALS = _refusals()


@pytest.mark.parametrize(("setup", "error", "field"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refused_command_stores_nothing(
    system: Any,
    db: psycopg.Connection[Any],
    setup: Callable[[Any], tuple[BaseModel, Request]],
    error: type[DomainError],
    field: str | None,
) -> None:
    command, request = setup(system)
    before = counts(db)
    with pytest.raises(DomainError) as info:
        system.commands.execute(command, request)
    assert type(info.value) is error
    assert info.value.field == field
    assert info.value.status == {InvalidValue: 422, InvalidTransition: 409, NotFound: 404,
                                 PreconditionRequired: 428, ConcurrencyConflict: 409,
                                 Duplicate: 409}[error]
    assert counts(db) == before  # no event, reservation, idempotency record or key


# -- personal data at rest --------------------------------------------------------
SECRETS = {
    "name": "Zebulon Quixotefield",
    "new_name": "Zebulon Marchbanks-Quixote",
    "email": "zebulon.quixotefield@hidden-mail.example",
    "person_name": "Philomena Farthingale",
    "phone": "+49 30 98765432",
    "interaction_subject": "Armadillo escalation",
    "interaction_body": "The customer described the purple armadillo incident",
    "participant": "Ignatius Wobblesworth",
    "sr_subject": "Flux capacitor leaking",
    "sr_description": "My flux capacitor leaks plutonium onto the carpet",
    "sr_comment": "Advised mopping the plutonium carefully",
    "resolution": "Replaced the capacitor gasket",
    "rating_comment": "Marvellously unflappable agent",
    "opportunity_title": "Operation Moonbeam Glasshouse",
    "task_title": "Telephone Zebulon about moonbeams",
    "task_description": "Mention the glasshouse discount",
    "task_comment": "Zebulon prefers afternoons",
}


def _dump(db: psycopg.Connection[Any], table: str) -> bytes:
    rows = db.execute(f"SELECT * FROM {table}").fetchall()
    out = bytearray()
    for row in rows:
        for value in row:
            out += bytes(value) if isinstance(value, bytes | memoryview) else repr(value).encode()
            out += b"\n"
    return bytes(out)


def test_no_personal_data_is_stored_in_plaintext(system: Any, db: psycopg.Connection[Any]) -> None:
    s = SECRETS
    cid = run(system, cc.RegisterCustomer(
        kind="person", name=s["name"],
        contacts=[{"kind": "email", "value": s["email"].upper(), "person_name": s["person_name"]}],
        industry="Publishing",
    ), key="reg-secret").id
    run(system, cc.ChangeCustomerDetails(name=s["new_name"]), target=cid, version=1, key="chg-secret")
    run(system, cc.AddContact(contact={"kind": "phone", "value": s["phone"]}), target=cid, key="add-secret")
    run(system, ci.LogInteraction(
        customer_id=cid, channel="meeting", direction="inbound", subject=s["interaction_subject"],
        body=s["interaction_body"], participants=[s["participant"]],
    ), key="log-secret")
    sid = run(system, cs.OpenServiceRequest(
        customer_id=cid, channel="email", type="complaint", subject=s["sr_subject"],
        description=s["sr_description"],
    ), key="sr-secret").id
    run(system, cs.CommentOnServiceRequest(body=s["sr_comment"]), target=sid)
    run(system, cs.ResolveServiceRequest(resolution=s["resolution"]), target=sid, version=2)
    run(system, cs.RateServiceRequest(rating=5, comment=s["rating_comment"]), target=sid)
    run(system, co.OpenOpportunity(customer_id=cid, title=s["opportunity_title"], amount=Decimal(1),
                                   currency="EUR"))
    tid = run(system, ct.CreateTask(title=s["task_title"], description=s["task_description"],
                                    related_type="customer", related_id=cid)).id
    run(system, ct.CommentOnTask(body=s["task_comment"]), target=tid)

    # The data is there and readable through the application...
    customer = system.app.load(Customer, cid)
    assert customer.name == s["new_name"]
    assert s["email"] in customer.emails()
    assert system.app.load(ServiceRequest, sid).description == s["sr_description"]

    # ...but no table holds it in clear.
    raw = b"\n".join(_dump(db, t) for t in (
        "crm_events", "crm_email_reservations", "crm_idempotency", "crm_subject_keys"))
    assert count(db) >= 11 and count(db, "crm_idempotency") == 5
    assert b"Publishing" in raw  # clear fields are stored in clear (the dump works)
    lowered = raw.lower()
    for what, secret in s.items():
        for variant in {secret, secret.lower(), secret.upper()}:
            assert variant.encode() not in raw, f"{what} stored in plaintext"
        assert secret.lower().encode() not in lowered, f"{what} stored in plaintext (any case)"
    local_part = s["email"].split("@")[0]
    assert local_part.encode() not in lowered
    assert b"98765432" not in raw

    # The stored form is the documented one: personal fields only in "sealed".
    state = db.execute(
        "SELECT state FROM crm_events WHERE originator_id = %s AND originator_version = 1", (cid,)
    ).fetchone()[0]
    doc = json.loads(bytes(state))
    assert doc["type"] == "CustomerRegistered" and doc["version"] == 1 and doc["format"] == 1
    assert "name" not in doc["data"] and "contacts" not in doc["data"]
    assert doc["data"]["industry"] == "Publishing"
    assert doc["sealed"]["alg"] == "AES-256-GCM"
    assert doc["subject_id"] == str(cid)
    assert doc["actor"] == {"id": "rep-1", "role": "sales_rep"}


def _erasable_customer(system: Any) -> tuple[UUID, UUID, UUID]:
    """A customer with personal data in its own events and in related records."""
    cid = run(system, cc.RegisterCustomer(
        kind="person", name="Erased Person", contacts=[{"kind": "email", "value": "erase@me.example"}],
        industry="Retail", country="SE", tags=["vip"], lifecycle_stage="prospect",
    )).id
    run(system, cc.ChangeCustomerDetails(name="Erased Person II", industry="Wholesale"), target=cid, version=1)
    iid = run(system, ci.LogInteraction(customer_id=cid, channel="call", direction="outbound",
                                        subject="Hello", body="Private chat", participants=["Eve"],
                                        duration_minutes=5)).id
    sid = run(system, cs.OpenServiceRequest(customer_id=cid, channel="web", type="question",
                                            subject="Private question", description="Details")).id
    return cid, iid, sid


def test_destroying_the_key_erases_the_customers_personal_data_but_keeps_the_rest(
    make_system: Callable[..., Any], db: psycopg.Connection[Any]
) -> None:
    system = make_system()
    cid, _, _ = _erasable_customer(system)
    events_before = count(db)

    assert system.app.keys.destroy(cid) is True

    for app in (system.app, make_system().app):  # this process and a fresh one
        customer = app.load(Customer, cid)
        assert customer.personal_data_erased is True
        assert customer.name is None
        assert customer.contacts == {}
        assert customer.version == 2
        assert (customer.kind, customer.industry, customer.country) == ("person", "Wholesale", "SE")
        assert (customer.tags, customer.lifecycle_stage, customer.owner_id) == (["vip"], "prospect", "rep-1")
        events = list(app.stored_events(cid))
        assert [e.personal_data_erased for e in events] == [True, True]

    # Nothing new can be sealed for the erased customer.
    with pytest.raises(PersonalDataErased):
        run(system, cc.AddContact(contact={"kind": "phone", "value": "+1 555 0199"}), target=cid)
    with pytest.raises(PersonalDataErased):
        run(system, cc.ChangeCustomerDetails(name="Back Again"), target=cid, version=2)
    assert count(db) == events_before


def test_destroying_the_key_erases_personal_data_of_related_records(
    make_system: Callable[..., Any], db: psycopg.Connection[Any]
) -> None:
    system = make_system()
    cid, iid, sid = _erasable_customer(system)
    events_before = count(db)

    system.app.keys.destroy(cid)

    for app in (system.app, make_system().app):
        interaction = app.load(Interaction, iid)
        assert (interaction.subject, interaction.body, interaction.participants) == (None, None, None)
        assert (interaction.channel, interaction.duration_minutes, interaction.customer_id) == ("call", 5, cid)
        request = app.load(ServiceRequest, sid)
        assert (request.subject, request.description) == (None, None)
        assert (request.customer_id, request.request_type, request.status) == (cid, "question", "open")

    with pytest.raises(PersonalDataErased):
        run(system, cs.CommentOnServiceRequest(body="still there?"), target=sid)
    assert count(db) == events_before
    row = db.execute("SELECT wrapped_key, destroyed_at FROM crm_subject_keys WHERE subject_id = %s",
                     (cid,)).fetchone()
    assert row is not None and row[0] is None and row[1] is not None
    system.app.keys.destroy(cid)  # destroying again is harmless
    assert system.app.keys.key_for(cid, create=False) is None


def test_another_instance_cannot_seal_with_a_destroyed_key_it_still_caches(
    make_system: Callable[..., Any], db: Any
) -> None:
    """Two processes serve the same store (CRM_WORKERS > 1): after an erasure in one, the
    other refuses to seal new personal data at once, even with the key in its cache."""
    one, two = make_system(), make_system()
    cid, iid, sid = _erasable_customer(one)
    assert two.app.load(Interaction, iid).body == "Private chat"  # two has the key cached

    one.app.keys.destroy(cid)
    before = count(db)
    with pytest.raises(PersonalDataErased):
        run(two, cs.CommentOnServiceRequest(body="sealed with a destroyed key"), target=sid)
    assert count(db) == before


def test_another_instance_stops_reading_erased_data_within_the_key_cache_time(
    make_system: Callable[..., Any],
) -> None:
    one, two = make_system(), make_system(key_cache_seconds=0.3)
    cid, iid, _ = _erasable_customer(one)
    assert two.app.load(Interaction, iid).body == "Private chat"

    one.app.keys.destroy(cid)
    assert one.app.load(Interaction, iid).body is None
    deadline = time.monotonic() + 3.0
    while two.app.load(Interaction, iid).body is not None:
        assert time.monotonic() < deadline, "another instance still decrypts after its cache time"
        time.sleep(0.05)


# -- upcasting an old stored version ------------------------------------------------
class _GadgetEvent(CrmEvent):
    aggregate_type = "test_gadget"


class GadgetPainted(_GadgetEvent):
    """v1 stored ``colour`` and ``size_cm``; v2 renamed it ``color`` and added ``finish``."""

    type_name = "TestGadgetPainted"
    class_version = 2
    creates = True

    color: str
    size_cm: int
    finish: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["color"] = state.pop("colour")
        state.setdefault("finish", "matte")


@pytest.fixture
def gadget_event_type() -> Iterator[type[CrmEvent]]:
    events_base.register(GadgetPainted)
    try:
        yield GadgetPainted
    finally:
        events_base._REGISTRY.pop(GadgetPainted.type_name, None)


def test_an_old_stored_version_is_upcast_when_read(
    system: Any, db: psycopg.Connection[Any], gadget_event_type: type[CrmEvent]
) -> None:
    gadget_id = uuid.uuid4()
    v1 = {
        "format": 1,
        "type": "TestGadgetPainted",
        "version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2023-03-01T10:00:00+00:00",
        "recorded_at": "2023-03-02T11:00:00+00:00",
        "actor": {"id": "legacy-importer", "role": "integration"},
        "reason": "old import",
        "correlation_id": "corr-legacy",
        "causation_id": "cause-legacy",
        "command_id": str(uuid.uuid4()),
        "subject_id": str(gadget_id),
        "data": {"colour": "vermilion", "size_cm": 12},
    }
    state = json.dumps(v1, sort_keys=True, separators=(",", ":")).encode()
    db.execute(
        "INSERT INTO crm_events (originator_id, originator_version, topic, state) VALUES (%s, 1, %s, %s)",
        (gadget_id, "TestGadgetPainted", state),
    )

    events = list(system.app.events.get(gadget_id))
    assert len(events) == 1
    event = events[0]
    assert type(event) is GadgetPainted
    assert event.payload() == {"color": "vermilion", "size_cm": 12, "finish": "matte"}
    assert not hasattr(event, "colour")
    assert (event.originator_id, event.originator_version) == (gadget_id, 1)
    assert event.meta.actor.id == "legacy-importer" and event.meta.reason == "old import"
    assert event.meta.occurred_at == datetime(2023, 3, 1, 10, tzinfo=UTC)
    assert event.meta.recorded_at == datetime(2023, 3, 2, 11, tzinfo=UTC)

    # Written now, the same type is stored as version 2 and read back unchanged.
    topic, new_state = system.app.codec.encode(event)
    assert topic == "TestGadgetPainted"
    assert json.loads(new_state)["version"] == 2
    assert json.loads(new_state)["data"] == {"color": "vermilion", "size_cm": 12, "finish": "matte"}
    back = system.app.codec.decode(gadget_id, 1, topic, new_state)
    assert back.payload() == event.payload()
