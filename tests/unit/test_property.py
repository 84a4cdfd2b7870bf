"""Property: whatever commands were accepted, the stored events rebuild the same record.

Random sequences of commands (valid or not) run against a live aggregate; refusals
are ignored. Every new event then goes through the stored form (EventCodec with an
in-memory key ring) and back, and the aggregate rebuilt from the decoded events must
equal the live one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import event as note
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregates.base import Aggregate, CommandContext
from aggregates.customer import Customer
from aggregates.errors import DomainError
from aggregates.opportunity import Opportunity
from aggregates.pipeline import PIPELINES
from aggregates.service_request import ServiceRequest
from aggregates.task import Task
from commands.clock import SequentialIds
from events.base import Actor
from events.codec import EventCodec
from events.keys import InMemoryKeyRing

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CID = UUID("00000000-0000-4000-8000-00000000c001")
AGG_ID = UUID("00000000-0000-4000-8000-0000000000aa")

PROPERTY = settings(max_examples=150, deadline=None)

MakeCtx = Callable[..., CommandContext]
Op = Callable[[Any, MakeCtx, st.DataObject], object]

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
maybe_blank = st.one_of(st.sampled_from(["", "  ", "Ada", " Ada King ", "ok"]), text)
when = st.sampled_from([
    NOW,
    NOW - timedelta(days=3),
    datetime(2024, 4, 30, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
    datetime(2024, 5, 2, 1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
])
users = st.sampled_from(["u1", "u2", "u3"])
reasons = st.sampled_from([None, "", "customer asked", "customer asked", "customer asked"])
currencies = st.sampled_from(["EUR", "JPY", "KWD", "CLF", "XXX", "eur"])


@st.composite
def money(draw: st.DrawFn, min_value: int = -5, max_value: int = 10**7) -> Decimal:
    places = draw(st.integers(0, 5))
    return Decimal(draw(st.integers(min_value, max_value))).scaleb(-places)


def _context_maker(data: st.DataObject) -> MakeCtx:
    ids = SequentialIds("property")

    def make(reason: str | None = None) -> CommandContext:
        return CommandContext(
            actor=Actor(data.draw(users), "sales_rep"),
            recorded_at=NOW,
            occurred_at=data.draw(when),
            correlation_id="corr",
            causation_id="cause",
            command_id=ids(),
            new_id=ids,
            reason=reason,
        )

    return make


def _run(
    cls: type[Aggregate],
    create: Callable[[MakeCtx, st.DataObject], Aggregate],
    fallback: Callable[[MakeCtx], Aggregate],
    ops: list[Op],
    data: st.DataObject,
) -> None:
    make_ctx = _context_maker(data)
    try:
        live = create(make_ctx, data)
    except DomainError:
        live = fallback(make_ctx)
    refused = 0
    for op in ops:
        try:
            op(live, make_ctx, data)
        except DomainError:
            refused += 1
    events = live.collect_events()
    for name in sorted({type(e).__name__ for e in events}):
        note(name)
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert live.version == len(events)
    assert len(events) <= 1 + len(ops) - refused

    codec = EventCodec(InMemoryKeyRing())
    stored = [(e.originator_id, e.originator_version, *codec.encode(e)) for e in events]
    decoded = [codec.decode(*s) for s in stored]
    assert [type(e) for e in decoded] == [type(e) for e in events]

    assert cls.project(None, events) == live
    rebuilt = cls.project(None, decoded)
    assert rebuilt == live, (rebuilt.state(), live.state())


# -- customer ------------------------------------------------------------------------

contact_kinds = st.sampled_from(["email", "email", "phone", "address", "fax", None])
contact_values = st.one_of(
    st.sampled_from(["a@x.io", " A@X.io", "b@y.org", "+1 555 0100", "+1-555-0100",
                     "1 Main St", "1  Main St", "", " "]),
    text,
)


@st.composite
def contact(draw: st.DrawFn) -> dict[str, Any]:
    c: dict[str, Any] = {"kind": draw(contact_kinds), "value": draw(contact_values)}
    if draw(st.booleans()):
        c["label"] = draw(text)
        c["person_name"] = draw(st.one_of(st.none(), text))
        c["primary"] = draw(st.booleans())
    return c


tags = st.sampled_from(["vip", " VIP ", "b2b", "Churn-Risk", "", "x"])


def _register(make_ctx: MakeCtx, data: st.DataObject) -> Customer:
    return Customer.register(
        make_ctx(),
        customer_id=CID,
        kind=data.draw(st.sampled_from(["person", "company", "robot"])),
        name=data.draw(maybe_blank),
        contacts=data.draw(st.lists(contact(), max_size=3)),
        source=data.draw(st.sampled_from(["web", "referral"])),
        owner_id=data.draw(users),
        lifecycle_stage=data.draw(st.sampled_from(["lead", "prospect", "customer", "churned"])),
        industry=data.draw(st.one_of(st.none(), text)),
        country=data.draw(st.sampled_from([None, "GB", "JP"])),
        preferred_language=data.draw(st.sampled_from([None, "en", "ja"])),
        tags=data.draw(st.lists(tags, max_size=3)),
    )


def _registered(make_ctx: MakeCtx) -> Customer:
    return Customer.register(make_ctx(), customer_id=CID, kind="person", name="Ada",
                             contacts=[], source="web", owner_id="u1")


def _record_purchase(c: Customer, make_ctx: MakeCtx, data: st.DataObject) -> None:
    lines = data.draw(st.lists(
        st.fixed_dictionaries({
            "sku": st.sampled_from(["A", "B"]),
            "description": text,
            "quantity": money(min_value=-1, max_value=20),
            "unit_price": money(min_value=-1, max_value=10**4),
        }),
        max_size=3,
    ))
    total = sum((line["quantity"] * line["unit_price"] for line in lines), Decimal(0))
    amount = data.draw(st.one_of(st.just(total), money()))
    c.record_purchase(
        make_ctx(),
        order_id=data.draw(st.sampled_from(["o-1", "o-2", "o-3"])),
        amount=amount,
        currency=data.draw(currencies),
        lines=lines,
        purchased_at=data.draw(when),
    )


CUSTOMER_OPS: list[Op] = [
    lambda c, m, d: c.change_details(m(), d.draw(st.dictionaries(
        st.sampled_from(["name", "industry", "country", "preferred_language", "source",
                         "owner_id"]),
        st.one_of(st.none(), maybe_blank),
        max_size=3,
    ))),
    lambda c, m, d: c.add_contact(m(), d.draw(contact())),
    lambda c, m, d: c.remove_contact(
        m(), d.draw(st.sampled_from([*c.contacts, UUID(int=1)]))
    ),
    lambda c, m, d: c.reassign_owner(m(), d.draw(users)),
    lambda c, m, d: c.change_lifecycle_stage(
        m(d.draw(reasons)),
        d.draw(st.sampled_from(["lead", "prospect", "customer", "churned", "partner"])),
    ),
    lambda c, m, d: c.classify(m(d.draw(reasons)), d.draw(st.sampled_from(["smb", "ent"]))),
    lambda c, m, d: c.tag(m(), d.draw(tags)),
    lambda c, m, d: c.untag(m(), d.draw(st.one_of(st.sampled_from([*c.tags, "x"]), tags))),
    lambda c, m, d: c.set_consent(
        m(), d.draw(st.sampled_from(["email", "sms", "phone", "fax"])), d.draw(st.booleans())
    ),
    lambda c, m, d: c.set_preferences(m(), d.draw(st.dictionaries(
        st.sampled_from(["newsletter", "calls", "max_mails"]),
        st.one_of(st.none(), st.booleans(), st.integers(-3, 3), text),
        max_size=3,
    ))),
    _record_purchase,
]


@PROPERTY
@given(ops=st.lists(st.sampled_from(CUSTOMER_OPS), max_size=25), data=st.data())
def test_customer_rebuilt_from_stored_events_equals_the_live_customer(ops, data):
    _run(Customer, _register, _registered, ops, data)


# -- opportunity ---------------------------------------------------------------------

stages = st.sampled_from([None, "qualification", "needs_analysis", "proposal", "negotiation",
                          "review", "offer", "commitment", "won", "lost"])
close_dates = st.sampled_from([None, date(2024, 6, 30), date(2024, 12, 31)])


def _open(make_ctx: MakeCtx, data: st.DataObject) -> Opportunity:
    return Opportunity.open(
        make_ctx(),
        opportunity_id=AGG_ID,
        customer_id=CID,
        title=data.draw(maybe_blank),
        amount=data.draw(money()),
        currency=data.draw(currencies),
        expected_close=data.draw(close_dates),
        pipeline=data.draw(st.sampled_from(["default", "renewal", "enterprise"])),
        owner_id=data.draw(users),
        stage=data.draw(stages),
    )


def _opened(make_ctx: MakeCtx) -> Opportunity:
    return Opportunity.open(make_ctx(), opportunity_id=AGG_ID, customer_id=CID, title="Deal",
                            amount=Decimal(100), currency="EUR", expected_close=None,
                            pipeline="default", owner_id="u1")


OPPORTUNITY_OPS: list[Op] = [
    lambda o, m, d: o.change_stage(m(), d.draw(st.one_of(
        st.sampled_from([s.name for s in PIPELINES[o.pipeline].stages]), stages
    ))),
    lambda o, m, d: o.change_amount(m(), d.draw(money()), d.draw(currencies)),
    lambda o, m, d: o.change_close_date(m(), d.draw(close_dates)),
    lambda o, m, d: o.change_owner(m(), d.draw(users)),
    lambda o, m, d: o.win(m()),
    lambda o, m, d: o.lose(m(), d.draw(st.sampled_from(["price", "timing", "other", "meh"]))),
    lambda o, m, d: o.reopen(m(), d.draw(stages)),
]


@PROPERTY
@given(ops=st.lists(st.sampled_from(OPPORTUNITY_OPS), max_size=25), data=st.data())
def test_opportunity_rebuilt_from_stored_events_equals_the_live_deal(ops, data):
    _run(Opportunity, _open, _opened, ops, data)


# -- service request -----------------------------------------------------------------

statuses = st.sampled_from(["open", "in_progress", "waiting_on_customer", "resolved",
                            "closed", "reopened", "done"])
priorities = st.sampled_from(["low", "normal", "high", "urgent", "p1"])


def _open_request(make_ctx: MakeCtx, data: st.DataObject) -> ServiceRequest:
    return ServiceRequest.open(
        make_ctx(),
        request_id=AGG_ID,
        customer_id=CID,
        channel=data.draw(st.sampled_from(["phone", "email", "web", "fax"])),
        request_type=data.draw(st.sampled_from(["question", "incident", "praise"])),
        priority=data.draw(priorities),
        subject=data.draw(maybe_blank),
        description=data.draw(text),
    )


def _opened_request(make_ctx: MakeCtx) -> ServiceRequest:
    return ServiceRequest.open(make_ctx(), request_id=AGG_ID, customer_id=CID, channel="web",
                               request_type="question", priority="normal", subject="Help",
                               description="")


SERVICE_REQUEST_OPS: list[Op] = [
    lambda s, m, d: s.assign(m(), d.draw(st.sampled_from(["agent-1", "agent-2"]))),
    lambda s, m, d: s.change_priority(m(), d.draw(priorities)),
    lambda s, m, d: s.change_status(m(), d.draw(statuses)),
    lambda s, m, d: s.comment(m(), d.draw(maybe_blank),
                              d.draw(st.sampled_from(["internal", "customer", "public"]))),
    lambda s, m, d: s.resolve(m(), d.draw(maybe_blank)),
    lambda s, m, d: s.rate(m(), d.draw(st.integers(-1, 7)), d.draw(st.one_of(st.none(), text))),
]


@PROPERTY
@given(ops=st.lists(st.sampled_from(SERVICE_REQUEST_OPS), max_size=25), data=st.data())
def test_service_request_rebuilt_from_stored_events_equals_the_live_request(ops, data):
    _run(ServiceRequest, _open_request, _opened_request, ops, data)


# -- task ----------------------------------------------------------------------------

due_times = st.sampled_from([None, NOW + timedelta(days=2),
                             datetime(2024, 5, 3, 9, 0, tzinfo=timezone(timedelta(hours=9)))])


def _create_task(make_ctx: MakeCtx, data: st.DataObject) -> Task:
    related = data.draw(st.sampled_from([(None, None), ("opportunity", UUID(int=5)),
                                         ("invoice", UUID(int=6)), ("customer", None)]))
    return Task.create(
        make_ctx(),
        task_id=AGG_ID,
        title=data.draw(maybe_blank),
        description=data.draw(text),
        due_at=data.draw(due_times),
        assignee_id=data.draw(users),
        customer_id=data.draw(st.sampled_from([None, CID])),
        related_type=related[0],
        related_id=related[1],
    )


def _created_task(make_ctx: MakeCtx) -> Task:
    return Task.create(make_ctx(), task_id=AGG_ID, title="Call back", description="",
                       due_at=None, assignee_id="u1", customer_id=None, related_type=None,
                       related_id=None)


TASK_OPS: list[Op] = [
    lambda t, m, d: t.reassign(m(), d.draw(users)),
    lambda t, m, d: t.change_due(m(), d.draw(due_times)),
    lambda t, m, d: t.comment(m(), d.draw(maybe_blank)),
    lambda t, m, d: t.complete(m()),
    lambda t, m, d: t.cancel(m()),
]
#: Closing is final, so the other commands come up more often.
TASK_OPS = [*TASK_OPS[:3] * 3, *TASK_OPS[3:]]


@PROPERTY
@given(ops=st.lists(st.sampled_from(TASK_OPS), max_size=25), data=st.data())
def test_task_rebuilt_from_stored_events_equals_the_live_task(ops, data):
    _run(Task, _create_task, _created_task, ops, data)
