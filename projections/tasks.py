"""Task lists: one row per task, shaped for "my tasks" (by assignee, status and due
time) and the tasks shown on a customer or another record."""

from __future__ import annotations

from typing import Any

from events import task as te
from projections.base import BatchView, From, Projection, Table

TASKS = Table(
    "tasks",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "title": "text",
        "description": "text",
        "assignee_id": "text NOT NULL",
        "status": "text NOT NULL",  # open | completed | cancelled
        "due_at": "timestamptz",
        "customer_id": "uuid",
        "related_type": "text",
        "related_id": "uuid",
        "created_at": "timestamptz NOT NULL",
        "completed_at": "timestamptz",
        "cancelled_at": "timestamptz",
        "updated_at": "timestamptz NOT NULL",
    },
    key="id",
    indexes=("assignee_id, status, due_at", "customer_id", "related_id"),
    subject="customer_id",
    sources={c: (From(te.TaskCreated, c),) for c in ("title", "description")},
)


class TaskList(Projection):
    name = "tasks"
    version = 1
    tables = (TASKS,)


def _task(e: Any) -> list[tuple[str, Any]]:
    return [("tasks", e.originator_id)]


def _change(view: BatchView, e: Any, **changes: Any) -> None:
    """Apply an event to its task's row."""
    view.change_record("tasks", e, **changes)


@TaskList.handles(te.TaskCreated, needs=_task)
def _created(view: BatchView, e: te.TaskCreated) -> None:
    existing = view.get("tasks", e.originator_id)
    if existing is not None and existing["version"] >= e.originator_version:
        return
    view.put("tasks", {
        "id": e.originator_id,
        "version": e.originator_version,
        "title": e.title,
        "description": e.description,
        "assignee_id": e.assignee_id,
        "status": "open",
        "due_at": e.due_at,
        "customer_id": e.customer_id,
        "related_type": e.related_type,
        "related_id": e.related_id,
        "created_at": e.meta.occurred_at,
        "completed_at": None,
        "cancelled_at": None,
        "updated_at": e.meta.recorded_at,
    })


@TaskList.handles(te.TaskReassigned, needs=_task)
def _reassigned(view: BatchView, e: te.TaskReassigned) -> None:
    _change(view, e, assignee_id=e.assignee_id)


@TaskList.handles(te.TaskDueChanged, needs=_task)
def _due(view: BatchView, e: te.TaskDueChanged) -> None:
    _change(view, e, due_at=e.due_at)


@TaskList.handles(te.TaskCommented, needs=_task)
def _commented(view: BatchView, e: te.TaskCommented) -> None:
    _change(view, e)


@TaskList.handles(te.TaskCompleted, needs=_task)
def _completed(view: BatchView, e: te.TaskCompleted) -> None:
    _change(view, e, status="completed", completed_at=e.meta.occurred_at)


@TaskList.handles(te.TaskCancelled, needs=_task)
def _cancelled(view: BatchView, e: te.TaskCancelled) -> None:
    _change(view, e, status="cancelled", cancelled_at=e.meta.occurred_at)
