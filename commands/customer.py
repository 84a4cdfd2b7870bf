"""Customer commands and their handlers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregates.base import CommandContext
from aggregates.customer import Customer
from commands.application import UnitOfWork
from commands.base import CheckedInput, Command, Currency, ShortText, Slug, UserId, When, check_email

Country = Field(default=None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
Language = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$", description="BCP 47, e.g. en-GB")


class ContactIn(CheckedInput):
    """An e-mail address, phone number or postal address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["email", "phone", "address"]
    value: str = Field(min_length=1, max_length=500)
    label: str = Field(default="", max_length=50)
    person_name: str | None = Field(default=None, max_length=200)
    primary: bool = False

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind == "email":
            return check_email(value)
        if kind == "phone":
            digits = sum(ch.isdigit() for ch in value)
            if digits < 5 or any(not (ch.isdigit() or ch in "+-() ./") for ch in value):
                raise ValueError("not a valid phone number")
        return value


class RegisterCustomer(Command):
    kind: Literal["person", "company"]
    name: str = Field(min_length=1, max_length=200)
    contacts: list[ContactIn] = Field(default_factory=list, max_length=50)
    source: ShortText = "manual"
    owner_id: UserId | None = Field(default=None, description="Defaults to the caller.")
    lifecycle_stage: Literal["lead", "prospect", "customer"] = "lead"
    industry: str | None = Field(default=None, max_length=100)
    country: str | None = Country
    preferred_language: str | None = Language
    tags: list[Slug] = Field(default_factory=list, max_length=50)


class ChangeCustomerDetails(Command):
    """Only the fields sent are changed; an explicit null clears an optional field."""

    requires_version = True
    name: str | None = Field(default=None, min_length=1, max_length=200)
    industry: str | None = Field(default=None, max_length=100)
    country: str | None = Country
    preferred_language: str | None = Language
    source: ShortText | None = None

    @field_validator("name", "source")
    @classmethod
    def _not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("must not be null")
        return value

    @model_validator(mode="after")
    def _something(self) -> ChangeCustomerDetails:
        if not self.model_fields_set - {"occurred_at", "reason"}:
            raise ValueError("send at least one field to change")
        return self

    def changes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set - {"occurred_at", "reason"}}


class AddContact(Command):
    contact: ContactIn


class RemoveContact(Command):
    requires_version = True
    contact_id: UUID


class ReassignCustomerOwner(Command):
    requires_version = True
    owner_id: UserId


class ShareCustomer(Command):
    """Share with a user (besides the owner): they can see and change the customer."""

    user_id: UserId


class UnshareCustomer(Command):
    user_id: UserId


class ChangeLifecycleStage(Command):
    requires_version = True
    stage: Literal["lead", "prospect", "customer", "churned"]
    reason: str = Field(min_length=1, max_length=1000)


class ClassifyCustomer(Command):
    requires_version = True
    segment: Slug
    reason: str = Field(min_length=1, max_length=1000)


class TagCustomer(Command):
    tag: Slug


class UntagCustomer(Command):
    tag: Slug


class SetConsent(Command):
    channel: Literal["email", "sms", "phone"]
    granted: bool


class SetPreferences(Command):
    preferences: dict[Slug, str | int | bool | None] = Field(max_length=50)


class PurchaseLineIn(CheckedInput):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sku: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=500)
    quantity: Decimal = Field(gt=0, max_digits=12, decimal_places=3)
    unit_price: Decimal = Field(ge=0, max_digits=18, decimal_places=4)


class RecordPurchase(Command):
    order_id: str = Field(min_length=1, max_length=100)
    amount: Decimal = Field(ge=0, max_digits=18, decimal_places=4)
    currency: Currency
    lines: list[PurchaseLineIn] = Field(default_factory=list, max_length=1000)
    purchased_at: When | None = Field(default=None, description="Defaults to occurred_at.")


class EraseCustomerPersonalData(Command):
    """Erase the customer's personal data from every store (right to be forgotten)."""

    reason: str = Field(min_length=1, max_length=1000, description="Why (e.g. the legal basis).")
    request_reference: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="The data subject's request, e.g. a ticket number (no personal data).")


# -- handlers ------------------------------------------------------------------
def register_customer(cmd: RegisterCustomer, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer_id = uow.request.target or ctx.new_id()
    for i, contact in enumerate(cmd.contacts):
        if contact.kind == "email":
            uow.reserve_email(contact.value, customer_id, f"contacts.{i}.value")
    customer = Customer.register(
        ctx,
        customer_id=customer_id,
        kind=cmd.kind,
        name=cmd.name,
        contacts=[c.model_dump() for c in cmd.contacts],
        source=cmd.source,
        owner_id=cmd.owner_id or ctx.actor.id,
        lifecycle_stage=cmd.lifecycle_stage,
        industry=cmd.industry,
        country=cmd.country,
        preferred_language=cmd.preferred_language,
        tags=list(cmd.tags),
    )
    uow.add(customer)
    return customer


def _customer(uow: UnitOfWork) -> Customer:
    assert uow.request.target is not None
    return uow.get(Customer, uow.request.target)


def change_customer_details(cmd: ChangeCustomerDetails, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.change_details(ctx, cmd.changes())
    return customer


def add_contact(cmd: AddContact, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    point = customer.add_contact(ctx, cmd.contact.model_dump())
    if point.kind == "email" and point.value:
        uow.reserve_email(point.value, customer.id, "contact.value")
    uow.result["contact_id"] = point.contact_id
    return customer


def remove_contact(cmd: RemoveContact, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    point = customer.remove_contact(ctx, cmd.contact_id)
    if point.kind == "email" and point.value:
        uow.release_email(point.value, customer.id)
    return customer


def reassign_customer_owner(cmd: ReassignCustomerOwner, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.reassign_owner(ctx, cmd.owner_id)
    return customer


def share_customer(cmd: ShareCustomer, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.share(ctx, cmd.user_id)
    return customer


def unshare_customer(cmd: UnshareCustomer, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.unshare(ctx, cmd.user_id)
    return customer


def change_lifecycle_stage(cmd: ChangeLifecycleStage, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.change_lifecycle_stage(ctx, cmd.stage)
    return customer


def classify_customer(cmd: ClassifyCustomer, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.classify(ctx, cmd.segment)
    return customer


def tag_customer(cmd: TagCustomer, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.tag(ctx, cmd.tag)
    return customer


def untag_customer(cmd: UntagCustomer, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.untag(ctx, cmd.tag)
    return customer


def set_consent(cmd: SetConsent, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.set_consent(ctx, cmd.channel, cmd.granted)
    return customer


def set_preferences(cmd: SetPreferences, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.set_preferences(ctx, dict(cmd.preferences))
    return customer


def record_purchase(cmd: RecordPurchase, uow: UnitOfWork, ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.record_purchase(
        ctx,
        order_id=cmd.order_id,
        amount=cmd.amount,
        currency=cmd.currency,
        lines=[line.model_dump() for line in cmd.lines],
        purchased_at=cmd.purchased_at or ctx.occurred_at,
    )
    return customer


def erase_customer_personal_data(cmd: EraseCustomerPersonalData, uow: UnitOfWork,
                                 ctx: CommandContext) -> Customer:
    customer = _customer(uow)
    customer.erase_personal_data(ctx, cmd.request_reference)
    return customer


HANDLERS = {
    RegisterCustomer: register_customer,
    ChangeCustomerDetails: change_customer_details,
    AddContact: add_contact,
    RemoveContact: remove_contact,
    ReassignCustomerOwner: reassign_customer_owner,
    ShareCustomer: share_customer,
    UnshareCustomer: unshare_customer,
    ChangeLifecycleStage: change_lifecycle_stage,
    ClassifyCustomer: classify_customer,
    TagCustomer: tag_customer,
    UntagCustomer: untag_customer,
    SetConsent: set_consent,
    SetPreferences: set_preferences,
    RecordPurchase: record_purchase,
    EraseCustomerPersonalData: erase_customer_personal_data,
}
