"""Events of the ServiceRequest aggregate (a customer's case for the service team)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from events.base import CrmEvent, register


class ServiceRequestEvent(CrmEvent):
    aggregate_type = "service_request"
    subject_field = "customer_id"


@register
class ServiceRequestOpened(ServiceRequestEvent):
    type_name = "ServiceRequestOpened"
    creates = True
    personal_fields = ("subject", "description")

    customer_id: UUID
    channel: str  # phone | email | web | chat | social
    request_type: str  # question | incident | complaint | request
    priority: str  # low | normal | high | urgent
    subject: str | None
    description: str | None


@register
class ServiceRequestAssigned(ServiceRequestEvent):
    type_name = "ServiceRequestAssigned"

    customer_id: UUID
    previous_assignee_id: str | None
    assignee_id: str


@register
class ServiceRequestPriorityChanged(ServiceRequestEvent):
    type_name = "ServiceRequestPriorityChanged"

    customer_id: UUID
    previous_priority: str
    priority: str


@register
class ServiceRequestSlaSet(ServiceRequestEvent):
    """The service level that applies to the request: when its first response and its
    resolution are due, under the SLA policy of ``priority`` (the policy is named in the
    event's reason; the actor is whoever applied it, usually the automation)."""

    type_name = "ServiceRequestSlaSet"

    customer_id: UUID
    priority: str
    first_response_due_at: datetime
    resolution_due_at: datetime


@register
class ServiceRequestStatusChanged(ServiceRequestEvent):
    type_name = "ServiceRequestStatusChanged"

    customer_id: UUID
    from_status: str
    to_status: str


@register
class ServiceRequestCommented(ServiceRequestEvent):
    type_name = "ServiceRequestCommented"
    personal_fields = ("body",)

    customer_id: UUID
    comment_id: UUID
    visibility: str  # internal | customer
    body: str | None


@register
class ServiceRequestResolved(ServiceRequestEvent):
    type_name = "ServiceRequestResolved"
    personal_fields = ("resolution",)

    customer_id: UUID
    from_status: str
    resolution: str | None


@register
class SatisfactionRated(ServiceRequestEvent):
    type_name = "ServiceRequestSatisfactionRated"
    personal_fields = ("comment",)

    customer_id: UUID
    rating: int
    comment: str | None
