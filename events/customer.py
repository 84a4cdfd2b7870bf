"""Events of the Customer aggregate (a person or a company)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from events.base import CrmEvent, register
from events.values import ContactPoint, PurchaseLine


class CustomerEvent(CrmEvent):
    aggregate_type = "customer"


@register
class CustomerRegistered(CustomerEvent):
    type_name = "CustomerRegistered"
    creates = True
    personal_fields = ("name", "contacts")

    kind: str
    name: str | None
    contacts: tuple[ContactPoint, ...] | None
    source: str
    owner_id: str
    lifecycle_stage: str
    industry: str | None
    country: str | None
    preferred_language: str | None
    tags: tuple[str, ...]


@register
class CustomerDetailsChanged(CustomerEvent):
    """Only the fields that changed, each as {"before": ..., "after": ...}."""

    type_name = "CustomerDetailsChanged"
    personal_fields = ("personal_changes",)

    changes: dict[str, dict[str, Any]]
    personal_changes: dict[str, dict[str, Any]] | None


@register
class ContactAdded(CustomerEvent):
    type_name = "ContactAdded"
    personal_fields = ("contact",)

    contact: ContactPoint | None


@register
class ContactRemoved(CustomerEvent):
    type_name = "ContactRemoved"

    contact_id: UUID
    kind: str


@register
class OwnerReassigned(CustomerEvent):
    type_name = "CustomerOwnerReassigned"

    previous_owner_id: str
    owner_id: str


@register
class CustomerShared(CustomerEvent):
    """The customer was shared with a user, who can now see and change it."""

    type_name = "CustomerShared"

    user_id: str


@register
class CustomerUnshared(CustomerEvent):
    type_name = "CustomerUnshared"

    user_id: str


@register
class LifecycleStageChanged(CustomerEvent):
    type_name = "CustomerLifecycleStageChanged"

    from_stage: str
    to_stage: str


@register
class CustomerClassified(CustomerEvent):
    type_name = "CustomerClassified"

    previous_segment: str | None
    segment: str


@register
class CustomerTagged(CustomerEvent):
    type_name = "CustomerTagged"

    tag: str


@register
class CustomerUntagged(CustomerEvent):
    type_name = "CustomerUntagged"

    tag: str


@register
class ConsentSet(CustomerEvent):
    """Consent to be contacted on one channel, granted or withdrawn."""

    type_name = "CustomerConsentSet"

    channel: str  # "email" | "sms" | "phone"
    granted: bool
    previous: bool | None


@register
class PreferencesSet(CustomerEvent):
    type_name = "CustomerPreferencesSet"

    changes: dict[str, dict[str, Any]]


@register
class PurchaseRecorded(CustomerEvent):
    type_name = "CustomerPurchaseRecorded"

    order_id: str
    amount: Decimal
    currency: str
    lines: tuple[PurchaseLine, ...]
    purchased_at: datetime


@register
class CustomerPersonalDataErased(CustomerEvent):
    """The customer's personal data is to be erased (right to be forgotten).

    Who asked, when and why are the event's own metadata (actor, times, reason); the
    event holds no personal data. Its key is destroyed once this event is stored.
    """

    type_name = "CustomerPersonalDataErased"

    request_reference: str | None
