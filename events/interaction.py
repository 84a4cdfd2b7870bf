"""Events of the Interaction aggregate: a call, e-mail, meeting, note, SMS or chat."""

from __future__ import annotations

from uuid import UUID

from events.base import CrmEvent, register


class InteractionEvent(CrmEvent):
    aggregate_type = "interaction"
    subject_field = "customer_id"


@register
class InteractionLogged(InteractionEvent):
    """``meta.occurred_at`` is when the interaction happened (often logged later)."""

    type_name = "InteractionLogged"
    creates = True
    personal_fields = ("subject", "body", "participants")

    customer_id: UUID
    channel: str  # call | email | meeting | note | sms | chat
    direction: str  # inbound | outbound | internal
    subject: str | None
    body: str | None
    participants: tuple[str, ...] | None
    duration_minutes: int | None
    opportunity_id: UUID | None
    service_request_id: UUID | None
