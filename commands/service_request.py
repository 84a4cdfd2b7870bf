"""Service request commands and their handlers."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from aggregates.base import CommandContext
from aggregates.customer import Customer
from aggregates.errors import PersonalDataErased
from aggregates.service_request import ServiceRequest
from commands.application import UnitOfWork
from commands.base import Command, UserId, When

Priority = Literal["low", "normal", "high", "urgent"]


class OpenServiceRequest(Command):
    customer_id: UUID
    channel: Literal["phone", "email", "web", "chat", "social"]
    type: Literal["question", "incident", "complaint", "request"]
    priority: Priority = "normal"
    subject: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=20_000)


class AssignServiceRequest(Command):
    requires_version = True
    assignee_id: UserId


class ChangeServiceRequestPriority(Command):
    requires_version = True
    priority: Priority


class SetServiceRequestSla(Command):
    """Record when the request's first response and resolution are due (the automation
    sends it when it routes a request and when its priority changes)."""

    priority: Priority
    first_response_due_at: When
    resolution_due_at: When


class ChangeServiceRequestStatus(Command):
    requires_version = True
    status: Literal["in_progress", "waiting_on_customer", "closed", "reopened"]


class CommentOnServiceRequest(Command):
    body: str = Field(min_length=1, max_length=20_000)
    visibility: Literal["internal", "customer"] = "internal"


class ResolveServiceRequest(Command):
    requires_version = True
    resolution: str = Field(min_length=1, max_length=20_000)


class RateServiceRequest(Command):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=5_000)


def open_request(cmd: OpenServiceRequest, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    customer = uow.get_reference(Customer, cmd.customer_id, "customer_id")
    if customer.personal_data_erased:
        raise PersonalDataErased("this customer's personal data was erased", field="customer_id")
    sr = ServiceRequest.open(
        ctx,
        request_id=ctx.new_id(),
        customer_id=customer.id,
        channel=cmd.channel,
        request_type=cmd.type,
        priority=cmd.priority,
        subject=cmd.subject,
        description=cmd.description,
    )
    uow.add(sr)
    return sr


def _request(uow: UnitOfWork) -> ServiceRequest:
    assert uow.request.target is not None
    return uow.get(ServiceRequest, uow.request.target)


def assign(cmd: AssignServiceRequest, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    sr.assign(ctx, cmd.assignee_id)
    return sr


def change_priority(cmd: ChangeServiceRequestPriority, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    sr.change_priority(ctx, cmd.priority)
    return sr


def set_sla(cmd: SetServiceRequestSla, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    sr.set_sla(ctx, cmd.priority, cmd.first_response_due_at, cmd.resolution_due_at)
    return sr


def change_status(cmd: ChangeServiceRequestStatus, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    sr.change_status(ctx, cmd.status)
    return sr


def comment(cmd: CommentOnServiceRequest, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    uow.result["comment_id"] = sr.comment(ctx, cmd.body, cmd.visibility)
    return sr


def resolve(cmd: ResolveServiceRequest, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    sr.resolve(ctx, cmd.resolution)
    return sr


def rate(cmd: RateServiceRequest, uow: UnitOfWork, ctx: CommandContext) -> ServiceRequest:
    sr = _request(uow)
    sr.rate(ctx, cmd.rating, cmd.comment)
    return sr


HANDLERS = {
    OpenServiceRequest: open_request,
    AssignServiceRequest: assign,
    ChangeServiceRequestPriority: change_priority,
    SetServiceRequestSla: set_sla,
    ChangeServiceRequestStatus: change_status,
    CommentOnServiceRequest: comment,
    ResolveServiceRequest: resolve,
    RateServiceRequest: rate,
}
