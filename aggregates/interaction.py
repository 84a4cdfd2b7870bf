"""Interaction: a call, e-mail, meeting, note, SMS or chat with or about a customer."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidValue
from events.interaction import InteractionLogged

CHANNELS = ("call", "email", "meeting", "note", "sms", "chat")
DIRECTIONS = ("inbound", "outbound", "internal")


class Interaction(Aggregate):
    type_name = "interaction"

    customer_id: UUID
    channel: str
    direction: str
    subject: str | None
    body: str | None
    participants: list[str] | None
    duration_minutes: int | None
    opportunity_id: UUID | None
    service_request_id: UUID | None
    occurred_at: datetime

    @classmethod
    def log(
        cls,
        ctx: CommandContext,
        *,
        interaction_id: UUID,
        customer_id: UUID,
        channel: str,
        direction: str,
        subject: str,
        body: str,
        participants: list[str],
        duration_minutes: int | None = None,
        opportunity_id: UUID | None = None,
        service_request_id: UUID | None = None,
    ) -> Interaction:
        if channel not in CHANNELS:
            raise InvalidValue(f"channel must be one of {CHANNELS}", field="channel")
        if direction not in DIRECTIONS:
            raise InvalidValue(f"direction must be one of {DIRECTIONS}", field="direction")
        if channel == "note" and direction != "internal":
            raise InvalidValue("a note is internal", field="direction")
        if not subject.strip() and not body.strip():
            raise InvalidValue("an interaction needs a subject or a body", field="subject")
        if duration_minutes is not None and channel not in ("call", "meeting"):
            raise InvalidValue("only calls and meetings have a duration", field="duration_minutes")
        it = cls.__new__(cls)
        Aggregate.__init__(it, interaction_id)
        it._trigger(
            InteractionLogged,
            ctx,
            customer_id=customer_id,
            channel=channel,
            direction=direction,
            subject=subject.strip(),
            body=body,
            participants=tuple(participants),
            duration_minutes=duration_minutes,
            opportunity_id=opportunity_id,
            service_request_id=service_request_id,
        )
        return it

    @applies(InteractionLogged)
    def _logged(self, e: InteractionLogged) -> None:
        self.customer_id = e.customer_id
        self.channel = e.channel
        self.direction = e.direction
        self.subject = e.subject
        self.body = e.body
        self.participants = list(e.participants) if e.participants is not None else None
        self.duration_minutes = e.duration_minutes
        self.opportunity_id = e.opportunity_id
        self.service_request_id = e.service_request_id
        self.occurred_at = e.meta.occurred_at
