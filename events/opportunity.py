"""Events of the Opportunity aggregate (a deal moving through a sales pipeline)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from uuid import UUID

from events.base import CrmEvent, register


class OpportunityEvent(CrmEvent):
    aggregate_type = "opportunity"
    subject_field = "customer_id"


@register
class OpportunityOpened(OpportunityEvent):
    type_name = "OpportunityOpened"
    creates = True
    personal_fields = ("title",)

    customer_id: UUID
    title: str | None
    amount: Decimal
    currency: str
    expected_close: date | None
    pipeline: str
    stage: str
    probability: int
    owner_id: str


@register
class OpportunityShared(OpportunityEvent):
    """The deal was shared with a user, who can now see and change it."""

    type_name = "OpportunityShared"

    customer_id: UUID
    user_id: str


@register
class OpportunityUnshared(OpportunityEvent):
    type_name = "OpportunityUnshared"

    customer_id: UUID
    user_id: str


@register
class OpportunityStageChanged(OpportunityEvent):
    type_name = "OpportunityStageChanged"

    customer_id: UUID
    from_stage: str
    to_stage: str
    probability: int


@register
class OpportunityAmountChanged(OpportunityEvent):
    type_name = "OpportunityAmountChanged"

    customer_id: UUID
    previous_amount: Decimal
    amount: Decimal
    previous_currency: str
    currency: str


@register
class OpportunityCloseDateChanged(OpportunityEvent):
    type_name = "OpportunityCloseDateChanged"

    customer_id: UUID
    previous_expected_close: date | None
    expected_close: date | None


@register
class OpportunityOwnerChanged(OpportunityEvent):
    type_name = "OpportunityOwnerChanged"

    customer_id: UUID
    previous_owner_id: str
    owner_id: str


@register
class OpportunityWon(OpportunityEvent):
    type_name = "OpportunityWon"

    customer_id: UUID
    from_stage: str
    amount: Decimal
    currency: str


@register
class OpportunityLost(OpportunityEvent):
    type_name = "OpportunityLost"

    customer_id: UUID
    from_stage: str
    loss_reason: str


@register
class OpportunityReopened(OpportunityEvent):
    type_name = "OpportunityReopened"

    customer_id: UUID
    previous_outcome: str
    stage: str
    probability: int
