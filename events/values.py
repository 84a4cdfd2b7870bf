"""Value types carried inside events: contact points, purchase lines, money."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID


@dataclass(frozen=True)
class ContactPoint:
    """One way to reach a customer: an e-mail address, a phone number or an address.

    ``value`` (and ``person_name``, for a named contact person at a company) is
    personal data; it is ``None`` once the customer's key has been destroyed.
    """

    contact_id: UUID
    kind: str  # "email" | "phone" | "address"
    value: str | None
    label: str = ""
    person_name: str | None = None
    primary: bool = False


@dataclass(frozen=True)
class PurchaseLine:
    """One line of a purchase: what, how many, at what unit price."""

    sku: str
    description: str
    quantity: Decimal
    unit_price: Decimal
