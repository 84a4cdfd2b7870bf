"""Task: a piece of work for one person, tied to a customer or another record."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidTransition, InvalidValue
from events.task import (
    TaskCancelled,
    TaskCommented,
    TaskCompleted,
    TaskCreated,
    TaskDueChanged,
    TaskReassigned,
)

RELATED_TYPES = ("customer", "opportunity", "service_request", "interaction")


class Task(Aggregate):
    type_name = "task"

    customer_id: UUID | None
    title: str | None
    description: str | None
    due_at: datetime | None
    assignee_id: str
    related_type: str | None
    related_id: UUID | None
    status: str  # open | completed | cancelled
    comments: list[dict[str, object]]

    @classmethod
    def create(
        cls,
        ctx: CommandContext,
        *,
        task_id: UUID,
        title: str,
        description: str,
        due_at: datetime | None,
        assignee_id: str,
        customer_id: UUID | None,
        related_type: str | None,
        related_id: UUID | None,
    ) -> Task:
        if not title.strip():
            raise InvalidValue("title must not be blank", field="title")
        if (related_type is None) != (related_id is None):
            raise InvalidValue("related_type and related_id go together", field="related_type")
        if related_type is not None and related_type not in RELATED_TYPES:
            raise InvalidValue(f"related_type must be one of {RELATED_TYPES}", field="related_type")
        task = cls.__new__(cls)
        Aggregate.__init__(task, task_id)
        task._trigger(
            TaskCreated,
            ctx,
            customer_id=customer_id,
            title=title.strip(),
            description=description,
            due_at=due_at,
            assignee_id=assignee_id,
            related_type=related_type,
            related_id=related_id,
        )
        return task

    def reassign(self, ctx: CommandContext, assignee_id: str) -> bool:
        self._check_open()
        if assignee_id == self.assignee_id:
            return False
        self._trigger(
            TaskReassigned,
            ctx,
            customer_id=self.customer_id,
            previous_assignee_id=self.assignee_id,
            assignee_id=assignee_id,
        )
        return True

    def change_due(self, ctx: CommandContext, due_at: datetime | None) -> bool:
        self._check_open()
        if due_at == self.due_at:
            return False
        self._trigger(
            TaskDueChanged,
            ctx,
            customer_id=self.customer_id,
            previous_due_at=self.due_at,
            due_at=due_at,
        )
        return True

    def comment(self, ctx: CommandContext, body: str) -> UUID:
        if not body.strip():
            raise InvalidValue("a comment must not be blank", field="body")
        comment_id = ctx.new_id()
        self._trigger(
            TaskCommented, ctx, customer_id=self.customer_id, comment_id=comment_id, body=body
        )
        return comment_id

    def complete(self, ctx: CommandContext) -> None:
        self._check_open()
        self._trigger(TaskCompleted, ctx, customer_id=self.customer_id)

    def cancel(self, ctx: CommandContext) -> None:
        self._check_open()
        self._trigger(TaskCancelled, ctx, customer_id=self.customer_id)

    def _check_open(self) -> None:
        if self.status != "open":
            raise InvalidTransition(f"the task is {self.status}", field="status")

    @applies(TaskCreated)
    def _created(self, e: TaskCreated) -> None:
        self.customer_id = e.customer_id
        self.title = e.title
        self.description = e.description
        self.due_at = e.due_at
        self.assignee_id = e.assignee_id
        self.related_type = e.related_type
        self.related_id = e.related_id
        self.status = "open"
        self.comments = []

    @applies(TaskReassigned)
    def _reassigned(self, e: TaskReassigned) -> None:
        self.assignee_id = e.assignee_id

    @applies(TaskDueChanged)
    def _due_changed(self, e: TaskDueChanged) -> None:
        self.due_at = e.due_at

    @applies(TaskCommented)
    def _commented(self, e: TaskCommented) -> None:
        self.comments.append(
            {"comment_id": e.comment_id, "body": e.body, "author_id": e.meta.actor.id,
             "at": e.meta.occurred_at}
        )

    @applies(TaskCompleted)
    def _completed(self, e: TaskCompleted) -> None:
        self.status = "completed"

    @applies(TaskCancelled)
    def _cancelled(self, e: TaskCancelled) -> None:
        self.status = "cancelled"
