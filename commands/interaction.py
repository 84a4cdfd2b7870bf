"""Interaction commands and their handlers."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from aggregates.base import CommandContext
from aggregates.customer import Customer
from aggregates.errors import InvalidValue, PersonalDataErased
from aggregates.interaction import Interaction
from aggregates.opportunity import Opportunity
from aggregates.service_request import ServiceRequest
from commands.application import UnitOfWork
from commands.base import Command


class LogInteraction(Command):
    """Log a call, e-mail, meeting, note, SMS or chat; back-date with occurred_at."""

    customer_id: UUID
    channel: Literal["call", "email", "meeting", "note", "sms", "chat"]
    direction: Literal["inbound", "outbound", "internal"]
    subject: str = Field(default="", max_length=300)
    body: str = Field(default="", max_length=20_000)
    participants: list[str] = Field(default_factory=list, max_length=50)
    duration_minutes: int | None = Field(default=None, ge=0, le=24 * 60)
    opportunity_id: UUID | None = None
    service_request_id: UUID | None = None


def log_interaction(cmd: LogInteraction, uow: UnitOfWork, ctx: CommandContext) -> Interaction:
    customer = uow.get_reference(Customer, cmd.customer_id, "customer_id")
    if customer.personal_data_erased:
        raise PersonalDataErased("this customer's personal data was erased", field="customer_id")
    if cmd.opportunity_id is not None:
        opp = uow.get_reference(Opportunity, cmd.opportunity_id, "opportunity_id")
        if opp.customer_id != customer.id:
            raise InvalidValue("the opportunity belongs to another customer", field="opportunity_id")
    if cmd.service_request_id is not None:
        sr = uow.get_reference(ServiceRequest, cmd.service_request_id, "service_request_id")
        if sr.customer_id != customer.id:
            raise InvalidValue(
                "the service request belongs to another customer", field="service_request_id"
            )
    for i, p in enumerate(cmd.participants):
        if not p.strip() or len(p) > 200:
            raise InvalidValue("a participant is 1 to 200 characters", field=f"participants.{i}")
    interaction = Interaction.log(
        ctx,
        interaction_id=ctx.new_id(),
        customer_id=customer.id,
        channel=cmd.channel,
        direction=cmd.direction,
        subject=cmd.subject,
        body=cmd.body,
        participants=list(cmd.participants),
        duration_minutes=cmd.duration_minutes,
        opportunity_id=cmd.opportunity_id,
        service_request_id=cmd.service_request_id,
    )
    uow.add(interaction)
    return interaction


HANDLERS = {LogInteraction: log_interaction}
