"""Task commands and their handlers."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from aggregates import AGGREGATE_TYPES
from aggregates.base import CommandContext
from aggregates.customer import Customer
from aggregates.errors import InvalidValue
from aggregates.task import Task
from commands.application import UnitOfWork
from commands.base import Command, UserId, When


class CreateTask(Command):
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=20_000)
    due_at: When | None = None
    assignee_id: UserId | None = Field(default=None, description="Defaults to the caller.")
    related_type: Literal["customer", "opportunity", "service_request", "interaction"] | None = None
    related_id: UUID | None = None


class ReassignTask(Command):
    requires_version = True
    assignee_id: UserId


class ChangeTaskDue(Command):
    requires_version = True
    due_at: When | None


class CommentOnTask(Command):
    body: str = Field(min_length=1, max_length=20_000)


class CompleteTask(Command):
    requires_version = True


class CancelTask(Command):
    requires_version = True


def create_task(cmd: CreateTask, uow: UnitOfWork, ctx: CommandContext) -> Task:
    customer_id: UUID | None = None
    if (cmd.related_type is None) != (cmd.related_id is None):
        raise InvalidValue("related_type and related_id go together", field="related_id")
    if cmd.related_type is not None and cmd.related_id is not None:
        related = uow.get_reference(AGGREGATE_TYPES[cmd.related_type], cmd.related_id, "related_id")
        customer_id = related.id if isinstance(related, Customer) else getattr(related, "customer_id", None)
    task = Task.create(
        ctx,
        task_id=ctx.new_id(),
        title=cmd.title,
        description=cmd.description,
        due_at=cmd.due_at,
        assignee_id=cmd.assignee_id or ctx.actor.id,
        customer_id=customer_id,
        related_type=cmd.related_type,
        related_id=cmd.related_id,
    )
    uow.add(task)
    return task


def _task(uow: UnitOfWork) -> Task:
    assert uow.request.target is not None
    return uow.get(Task, uow.request.target)


def reassign(cmd: ReassignTask, uow: UnitOfWork, ctx: CommandContext) -> Task:
    task = _task(uow)
    task.reassign(ctx, cmd.assignee_id)
    return task


def change_due(cmd: ChangeTaskDue, uow: UnitOfWork, ctx: CommandContext) -> Task:
    task = _task(uow)
    task.change_due(ctx, cmd.due_at)
    return task


def comment(cmd: CommentOnTask, uow: UnitOfWork, ctx: CommandContext) -> Task:
    task = _task(uow)
    uow.result["comment_id"] = task.comment(ctx, cmd.body)
    return task


def complete(cmd: CompleteTask, uow: UnitOfWork, ctx: CommandContext) -> Task:
    task = _task(uow)
    task.complete(ctx)
    return task


def cancel(cmd: CancelTask, uow: UnitOfWork, ctx: CommandContext) -> Task:
    task = _task(uow)
    task.cancel(ctx)
    return task


HANDLERS = {
    CreateTask: create_task,
    ReassignTask: reassign,
    ChangeTaskDue: change_due,
    CommentOnTask: comment,
    CompleteTask: complete,
    CancelTask: cancel,
}
