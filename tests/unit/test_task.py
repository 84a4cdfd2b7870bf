"""Task: given past events, when a command, then new events or a refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest

from aggregates.errors import InvalidTransition, InvalidValue
from aggregates.task import Task
from events.task import (
    TaskCancelled,
    TaskCommented,
    TaskCompleted,
    TaskCreated,
    TaskDueChanged,
    TaskReassigned,
)
from tests.unit.conftest import NOW

TID = UUID("00000000-0000-4000-8000-0000000000f1")
CID = UUID("00000000-0000-4000-8000-00000000c001")
OID = UUID("00000000-0000-4000-8000-0000000000a1")
DUE = datetime(2024, 5, 3, 17, 0, tzinfo=UTC)


def created(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "customer_id": CID,
        "title": "Send the proposal",
        "description": "PDF plus pricing sheet",
        "due_at": DUE,
        "assignee_id": "u1",
        "related_type": "opportunity",
        "related_id": OID,
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def task(event, given):
    """task(outcome=None): an open, completed or cancelled task."""

    def make(outcome: str | None = None, **overrides: object) -> Task:
        events = [event(TaskCreated, TID, **created(**overrides))]
        if outcome == "completed":
            events.append(event(TaskCompleted, TID, customer_id=CID))
        elif outcome == "cancelled":
            events.append(event(TaskCancelled, TID, customer_id=CID))
        t = given(Task, *events)
        assert t.status == (outcome or "open")
        return t

    return make


def test_create_emits_task_created(ctx, emitted):
    t = Task.create(ctx(), task_id=TID, **created(title="  Send the proposal "))
    assert emitted(t) == [(TaskCreated, created())]
    assert (t.status, t.comments, t.version) == ("open", [], 1)


def test_create_without_customer_or_related_record(ctx, emitted):
    t = Task.create(ctx(), task_id=TID, **created(customer_id=None, related_type=None,
                                                  related_id=None, due_at=None))
    [(cls, payload)] = emitted(t)
    assert cls is TaskCreated
    assert (payload["customer_id"], payload["related_type"], payload["related_id"],
            payload["due_at"]) == (None, None, None, None)


def test_task_without_customer_is_its_own_data_subject(ctx):
    t = Task.create(ctx(), task_id=TID, **created(customer_id=None))
    [e] = t.collect_events()
    assert e.subject_id() == TID


@pytest.mark.parametrize("related_type", ["customer", "opportunity", "service_request",
                                          "interaction"])
def test_create_accepts_each_related_type(ctx, related_type):
    t = Task.create(ctx(), task_id=TID, **created(related_type=related_type))
    assert t.related_type == related_type


@pytest.mark.parametrize(
    "overrides",
    [
        {"title": "   "},
        {"related_type": "opportunity", "related_id": None},
        {"related_type": None, "related_id": OID},
        {"related_type": "invoice"},
    ],
)
def test_create_refuses(ctx, refused, overrides):
    field = "title" if "title" in overrides else "related_type"
    with refused(InvalidValue, field):
        Task.create(ctx(), task_id=TID, **created(**overrides))


def test_reassign_emits_task_reassigned(task, ctx, emitted):
    t = task()
    assert t.reassign(ctx(), "u2") is True
    assert emitted(t) == [
        (TaskReassigned, {"customer_id": CID, "previous_assignee_id": "u1", "assignee_id": "u2"})
    ]
    assert t.assignee_id == "u2"


def test_reassign_to_the_current_assignee_is_a_no_op(task, ctx):
    t = task()
    assert t.reassign(ctx(), "u1") is False
    assert t.collect_events() == []


def test_change_due_emits_due_changed(task, ctx, emitted):
    t = task()
    later = datetime(2024, 5, 10, 9, 0, tzinfo=UTC)
    assert t.change_due(ctx(), later) is True
    assert t.change_due(ctx(), None) is True
    assert emitted(t) == [
        (TaskDueChanged, {"customer_id": CID, "previous_due_at": DUE, "due_at": later}),
        (TaskDueChanged, {"customer_id": CID, "previous_due_at": later, "due_at": None}),
    ]
    assert t.due_at is None


def test_change_due_to_the_same_time_is_a_no_op(task, ctx):
    t = task()
    assert t.change_due(ctx(), datetime(2024, 5, 3, 17, 0, tzinfo=UTC)) is False
    assert t.collect_events() == []


def test_comment_emits_task_commented_with_a_new_id(task, ctx, emitted):
    t = task(customer_id=None)
    comment_id = t.comment(ctx(new_id=lambda: UUID(int=9)), "Waiting for legal.")
    assert comment_id == UUID(int=9)
    assert emitted(t) == [
        (TaskCommented, {"customer_id": None, "comment_id": UUID(int=9),
                         "body": "Waiting for legal."})
    ]
    assert t.comments == [
        {"comment_id": UUID(int=9), "body": "Waiting for legal.", "author_id": "u1", "at": NOW}
    ]


def test_comment_refuses_a_blank_body(task, ctx, refused):
    t = task()
    with refused(InvalidValue, "body", t):
        t.comment(ctx(), " \t ")


def test_complete_emits_task_completed(task, ctx, emitted):
    t = task()
    t.complete(ctx())
    assert emitted(t) == [(TaskCompleted, {"customer_id": CID})]
    assert t.status == "completed"


def test_cancel_emits_task_cancelled(task, ctx, emitted):
    t = task()
    t.cancel(ctx())
    assert emitted(t) == [(TaskCancelled, {"customer_id": CID})]
    assert t.status == "cancelled"


@pytest.mark.parametrize("outcome", ["completed", "cancelled"])
@pytest.mark.parametrize(
    "command",
    [
        lambda t, c: t.complete(c),
        lambda t, c: t.cancel(c),
        lambda t, c: t.reassign(c, "u2"),
        lambda t, c: t.reassign(c, "u1"),
        lambda t, c: t.change_due(c, None),
        lambda t, c: t.change_due(c, DUE),
    ],
    ids=["complete", "cancel", "reassign", "same-assignee", "due", "same-due"],
)
def test_task_is_closed_after_complete_or_cancel(task, ctx, refused, outcome, command):
    t = task(outcome)
    with refused(InvalidTransition, "status", t):
        command(t, ctx())


def test_past_events_rebuild_the_task(event, given):
    later = datetime(2024, 6, 1, tzinfo=UTC)
    t = given(
        Task,
        event(TaskCreated, TID, **created()),
        event(TaskReassigned, TID, customer_id=CID, previous_assignee_id="u1",
              assignee_id="u3"),
        event(TaskDueChanged, TID, customer_id=CID, previous_due_at=DUE, due_at=later),
        event(TaskCommented, TID, customer_id=CID, comment_id=UUID(int=1), body="b"),
        event(TaskCompleted, TID, customer_id=CID),
    )
    assert (t.version, t.assignee_id, t.due_at, t.status, len(t.comments)) == (
        5, "u3", later, "completed", 1
    )
