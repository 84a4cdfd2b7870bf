"""Events of the Task aggregate: work assigned to a person, tied to a record."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from events.base import CrmEvent, register


class TaskEvent(CrmEvent):
    aggregate_type = "task"
    subject_field = "customer_id"


@register
class TaskCreated(TaskEvent):
    type_name = "TaskCreated"
    creates = True
    personal_fields = ("title", "description")

    customer_id: UUID | None
    title: str | None
    description: str | None
    due_at: datetime | None
    assignee_id: str
    related_type: str | None  # customer | opportunity | service_request | interaction
    related_id: UUID | None


@register
class TaskReassigned(TaskEvent):
    type_name = "TaskReassigned"

    customer_id: UUID | None
    previous_assignee_id: str
    assignee_id: str


@register
class TaskDueChanged(TaskEvent):
    type_name = "TaskDueChanged"

    customer_id: UUID | None
    previous_due_at: datetime | None
    due_at: datetime | None


@register
class TaskCommented(TaskEvent):
    type_name = "TaskCommented"
    personal_fields = ("body",)

    customer_id: UUID | None
    comment_id: UUID
    body: str | None


@register
class TaskCompleted(TaskEvent):
    type_name = "TaskCompleted"

    customer_id: UUID | None


@register
class TaskCancelled(TaskEvent):
    type_name = "TaskCancelled"

    customer_id: UUID | None
