"""ServiceRequest: given past events, when a command, then new events or a refusal."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import pytest

from aggregates.errors import InvalidTransition, InvalidValue
from aggregates.service_request import ServiceRequest
from events.service_request import (
    SatisfactionRated,
    ServiceRequestAssigned,
    ServiceRequestCommented,
    ServiceRequestOpened,
    ServiceRequestPriorityChanged,
    ServiceRequestResolved,
    ServiceRequestSlaSet,
    ServiceRequestStatusChanged,
)
from tests.unit.conftest import NOW

SRID = UUID("00000000-0000-4000-8000-0000000000d1")
CID = UUID("00000000-0000-4000-8000-00000000c001")

STATUSES = ["open", "in_progress", "waiting_on_customer", "resolved", "closed", "reopened"]
#: The status machine of the generic status command, written out here.
ALLOWED_STATUS = {
    ("open", "in_progress"),
    ("open", "waiting_on_customer"),
    ("in_progress", "waiting_on_customer"),
    ("waiting_on_customer", "in_progress"),
    ("resolved", "closed"),
    ("resolved", "reopened"),
    ("closed", "reopened"),
    ("reopened", "in_progress"),
    ("reopened", "waiting_on_customer"),
}
RESOLVABLE = ["open", "in_progress", "waiting_on_customer", "reopened"]


def opened(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "customer_id": CID,
        "channel": "email",
        "request_type": "incident",
        "priority": "normal",
        "subject": "Invoice PDF is empty",
        "description": "Since Monday every invoice PDF is blank.",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def request_in(event, given):
    """request_in(status, rated=False): a request brought to ``status`` by past events."""
    paths = {
        "open": [],
        "in_progress": ["in_progress"],
        "waiting_on_customer": ["waiting_on_customer"],
        "resolved": ["in_progress", "resolved"],
        "closed": ["in_progress", "resolved", "closed"],
        "reopened": ["in_progress", "resolved", "reopened"],
    }

    def make(status: str, *, rated: bool = False) -> ServiceRequest:
        events = [event(ServiceRequestOpened, SRID, **opened())]
        current = "open"
        for step in paths[status]:
            if step == "resolved":
                events.append(event(ServiceRequestResolved, SRID, customer_id=CID,
                                    from_status=current, resolution="Regenerated the PDFs."))
            else:
                events.append(event(ServiceRequestStatusChanged, SRID, customer_id=CID,
                                    from_status=current, to_status=step))
            current = step
            if rated and step == "resolved":
                events.append(event(SatisfactionRated, SRID, customer_id=CID, rating=4,
                                    comment=None))
        sr = given(ServiceRequest, *events)
        assert sr.status == status
        return sr

    return make


# -- open ----------------------------------------------------------------------------


def test_open_emits_service_request_opened(ctx, emitted):
    sr = ServiceRequest.open(
        ctx(), request_id=SRID, customer_id=CID, channel="email", request_type="incident",
        priority="normal", subject="  Invoice PDF is empty ",
        description="Since Monday every invoice PDF is blank.",
    )
    assert emitted(sr) == [(ServiceRequestOpened, opened())]
    assert (sr.status, sr.assignee_id, sr.comments, sr.rating, sr.resolution) == (
        "open", None, [], None, None
    )
    assert sr.subject == "Invoice PDF is empty"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"channel": "fax"}, "channel"),
        ({"request_type": "praise"}, "type"),
        ({"priority": "critical"}, "priority"),
        ({"subject": "   "}, "subject"),
    ],
)
def test_open_refuses(ctx, refused, overrides, field):
    args = {"request_id": SRID, **opened(), **overrides}
    with refused(InvalidValue, field):
        ServiceRequest.open(ctx(), **args)


@pytest.mark.parametrize("channel", ["phone", "email", "web", "chat", "social"])
@pytest.mark.parametrize("request_type", ["question", "incident", "complaint", "request"])
def test_open_accepts_every_channel_and_type(ctx, channel, request_type):
    args = {"request_id": SRID, **opened(channel=channel, request_type=request_type,
                                         description="")}
    sr = ServiceRequest.open(ctx(), **args)
    assert [type(e) for e in sr.collect_events()] == [ServiceRequestOpened]


# -- assign / priority ---------------------------------------------------------------


def test_assign_emits_assigned_with_the_previous_assignee(request_in, ctx, emitted):
    sr = request_in("open")
    assert sr.assign(ctx(), "agent-1") is True
    assert sr.assign(ctx(), "agent-2") is True
    assert emitted(sr) == [
        (ServiceRequestAssigned, {"customer_id": CID, "previous_assignee_id": None,
                                  "assignee_id": "agent-1"}),
        (ServiceRequestAssigned, {"customer_id": CID, "previous_assignee_id": "agent-1",
                                  "assignee_id": "agent-2"}),
    ]
    assert sr.assignee_id == "agent-2"


def test_assign_to_the_current_assignee_is_a_no_op(event, given, ctx):
    sr = given(
        ServiceRequest,
        event(ServiceRequestOpened, SRID, **opened()),
        event(ServiceRequestAssigned, SRID, customer_id=CID, previous_assignee_id=None,
              assignee_id="agent-1"),
    )
    assert sr.assign(ctx(), "agent-1") is False
    assert sr.collect_events() == []


def test_change_priority_emits_priority_changed(request_in, ctx, emitted):
    sr = request_in("in_progress")
    assert sr.change_priority(ctx(), "urgent") is True
    assert emitted(sr) == [
        (ServiceRequestPriorityChanged, {"customer_id": CID, "previous_priority": "normal",
                                         "priority": "urgent"})
    ]
    assert sr.priority == "urgent"


def test_change_priority_to_the_current_priority_is_a_no_op(request_in, ctx):
    sr = request_in("open")
    assert sr.change_priority(ctx(), "normal") is False
    assert sr.collect_events() == []


def test_change_priority_refuses_an_unknown_priority(request_in, ctx, refused):
    sr = request_in("open")
    with refused(InvalidValue, "priority", sr):
        sr.change_priority(ctx(), "p1")


@pytest.mark.parametrize(
    "command",
    [
        lambda sr, c: sr.assign(c, "agent-9"),
        lambda sr, c: sr.change_priority(c, "high"),
        lambda sr, c: sr.change_priority(c, "normal"),
    ],
    ids=["assign", "priority", "same-priority"],
)
def test_closed_request_refuses_assignment_and_priority(request_in, ctx, refused, command):
    sr = request_in("closed")
    with refused(InvalidTransition, "status", sr):
        command(sr, ctx())


@pytest.mark.parametrize("status", ["resolved", "reopened", "waiting_on_customer"])
def test_request_that_is_not_closed_can_be_assigned(request_in, ctx, status):
    sr = request_in(status)
    assert sr.assign(ctx(), "agent-5") is True
    assert [type(e) for e in sr.collect_events()] == [ServiceRequestAssigned]


# -- service level -------------------------------------------------------------------

FIRST_DUE = NOW + timedelta(hours=2)
RESOLUTION_DUE = NOW + timedelta(days=1)


def test_set_sla_records_the_due_times(request_in, ctx, emitted):
    sr = request_in("open")
    assert sr.opened_at == NOW
    assert sr.set_sla(ctx(), "high", FIRST_DUE, RESOLUTION_DUE) is True
    assert emitted(sr) == [
        (ServiceRequestSlaSet, {"customer_id": CID, "priority": "high",
                                "first_response_due_at": FIRST_DUE, "resolution_due_at": RESOLUTION_DUE})
    ]
    assert (sr.sla_priority, sr.first_response_due_at, sr.resolution_due_at) == ("high", FIRST_DUE, RESOLUTION_DUE)


def test_set_sla_again_with_other_times_records_them_and_the_same_is_a_no_op(request_in, ctx, event, given):
    sr = given(ServiceRequest, event(ServiceRequestOpened, SRID, **opened()),
               event(ServiceRequestSlaSet, SRID, customer_id=CID, priority="normal",
                     first_response_due_at=FIRST_DUE, resolution_due_at=RESOLUTION_DUE))
    assert sr.set_sla(ctx(), "normal", FIRST_DUE, RESOLUTION_DUE) is False
    assert sr.collect_events() == []
    later = RESOLUTION_DUE + timedelta(days=2)
    assert sr.set_sla(ctx(), "low", FIRST_DUE, later) is True
    assert [type(e) for e in sr.collect_events()] == [ServiceRequestSlaSet]
    assert (sr.sla_priority, sr.resolution_due_at) == ("low", later)


@pytest.mark.parametrize("status", ["resolved", "closed"])
def test_set_sla_refused_once_the_request_is_resolved(request_in, ctx, refused, status):
    sr = request_in(status)
    with refused(InvalidTransition, "status", sr):
        sr.set_sla(ctx(), "high", FIRST_DUE, RESOLUTION_DUE)


@pytest.mark.parametrize(
    ("priority", "first", "resolution", "field"),
    [
        ("p1", FIRST_DUE, RESOLUTION_DUE, "priority"),
        ("high", RESOLUTION_DUE, FIRST_DUE, "resolution_due_at"),
        ("high", datetime(2024, 5, 1, 14, 0), RESOLUTION_DUE, "first_response_due_at"),
    ],
    ids=["unknown-priority", "resolution-before-first-response", "naive-time"],
)
def test_set_sla_refuses_bad_values(request_in, ctx, refused, priority, first, resolution, field):
    sr = request_in("in_progress")
    with refused(InvalidValue, field, sr):
        sr.set_sla(ctx(), priority, first, resolution)


# -- status machine ------------------------------------------------------------------


@pytest.mark.parametrize("to_status", [s for s in STATUSES if s != "resolved"])
@pytest.mark.parametrize("from_status", STATUSES)
def test_status_machine(request_in, ctx, refused, emitted, from_status, to_status):
    sr = request_in(from_status)
    if (from_status, to_status) in ALLOWED_STATUS:
        sr.change_status(ctx(), to_status)
        assert emitted(sr) == [
            (ServiceRequestStatusChanged, {"customer_id": CID, "from_status": from_status,
                                           "to_status": to_status})
        ]
        assert sr.status == to_status
    else:
        with refused(InvalidTransition, "status", sr) as err:
            sr.change_status(ctx(), to_status)
        assert set(err.value.extra["allowed"]) == {
            t for f, t in ALLOWED_STATUS if f == from_status
        }


@pytest.mark.parametrize("from_status", STATUSES)
def test_status_command_cannot_resolve(request_in, ctx, refused, from_status):
    sr = request_in(from_status)
    with refused(InvalidValue, "status", sr):
        sr.change_status(ctx(), "resolved")


def test_status_must_be_a_known_status(request_in, ctx, refused):
    sr = request_in("open")
    with refused(InvalidValue, "status", sr):
        sr.change_status(ctx(), "done")


def test_reopening_clears_the_resolution(request_in, ctx):
    sr = request_in("resolved")
    assert sr.resolution == "Regenerated the PDFs."
    sr.change_status(ctx(), "reopened")
    assert (sr.status, sr.resolution) == ("reopened", None)


# -- comment -------------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["internal", "customer"])
def test_comment_emits_commented_with_a_new_id(request_in, ctx, emitted, visibility):
    sr = request_in("in_progress")
    comment_id = sr.comment(ctx(new_id=lambda: UUID(int=42)), "Asked for a sample.", visibility)
    assert comment_id == UUID(int=42)
    assert emitted(sr) == [
        (ServiceRequestCommented, {"customer_id": CID, "comment_id": UUID(int=42),
                                   "visibility": visibility, "body": "Asked for a sample."})
    ]
    assert sr.comments == [
        {"comment_id": UUID(int=42), "visibility": visibility, "body": "Asked for a sample.",
         "author_id": "u1", "at": NOW}
    ]


@pytest.mark.parametrize(
    ("body", "visibility", "field"),
    [("Hello", "public", "visibility"), ("  ", "internal", "body"), ("", "customer", "body")],
)
def test_comment_refuses(request_in, ctx, refused, body, visibility, field):
    sr = request_in("open")
    with refused(InvalidValue, field, sr):
        sr.comment(ctx(), body, visibility)


# -- resolve -------------------------------------------------------------------------


@pytest.mark.parametrize("from_status", RESOLVABLE)
def test_resolve_emits_resolved_from_an_unresolved_status(request_in, ctx, emitted,
                                                          from_status):
    sr = request_in(from_status)
    sr.resolve(ctx(), "Fixed the template.")
    assert emitted(sr) == [
        (ServiceRequestResolved, {"customer_id": CID, "from_status": from_status,
                                  "resolution": "Fixed the template."})
    ]
    assert (sr.status, sr.resolution) == ("resolved", "Fixed the template.")


@pytest.mark.parametrize("from_status", ["resolved", "closed"])
def test_resolve_refuses_a_resolved_or_closed_request(request_in, ctx, refused, from_status):
    sr = request_in(from_status)
    with refused(InvalidTransition, "status", sr):
        sr.resolve(ctx(), "Again.")


def test_resolve_needs_a_resolution(request_in, ctx, refused):
    sr = request_in("in_progress")
    with refused(InvalidValue, "resolution", sr):
        sr.resolve(ctx(), "   ")


# -- rate ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["resolved", "closed"])
@pytest.mark.parametrize("rating", [1, 5])
def test_rate_emits_satisfaction_rated_when_resolved_or_closed(request_in, ctx, emitted,
                                                               status, rating):
    sr = request_in(status)
    sr.rate(ctx(), rating, "Quick and friendly.")
    assert emitted(sr) == [
        (SatisfactionRated, {"customer_id": CID, "rating": rating,
                             "comment": "Quick and friendly."})
    ]
    assert (sr.rating, sr.rating_comment) == (rating, "Quick and friendly.")


def test_rate_without_a_comment(request_in, ctx, emitted):
    sr = request_in("resolved")
    sr.rate(ctx(), 3, None)
    assert emitted(sr) == [(SatisfactionRated, {"customer_id": CID, "rating": 3,
                                                "comment": None})]


@pytest.mark.parametrize("status", ["open", "in_progress", "waiting_on_customer", "reopened"])
def test_rate_refuses_an_unresolved_request(request_in, ctx, refused, status):
    sr = request_in(status)
    with refused(InvalidTransition, "status", sr):
        sr.rate(ctx(), 5, None)


@pytest.mark.parametrize("status", ["resolved", "closed"])
def test_rate_only_once(request_in, ctx, refused, status):
    sr = request_in(status, rated=True)
    with refused(InvalidTransition, "rating", sr):
        sr.rate(ctx(), 5, "Changed my mind")


def test_rate_only_once_even_after_reopening_and_resolving_again(request_in, ctx, refused):
    sr = request_in("reopened", rated=True)
    sr.resolve(ctx(), "Fixed for good.")
    assert [type(e) for e in sr.collect_events()] == [ServiceRequestResolved]
    with refused(InvalidTransition, "rating", sr):
        sr.rate(ctx(), 5, None)


@pytest.mark.parametrize("rating", [0, 6, -1])
def test_rate_refuses_a_rating_outside_one_to_five(request_in, ctx, refused, rating):
    sr = request_in("resolved")
    with refused(InvalidValue, "rating", sr):
        sr.rate(ctx(), rating, None)
