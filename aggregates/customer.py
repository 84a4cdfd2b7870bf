"""Customer: a person or a company the business sells to and serves."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import (
    Duplicate,
    InvalidTransition,
    InvalidValue,
    NotFound,
    PersonalDataErased,
)
from aggregates.money import require_money
from events.customer import (
    ConsentSet,
    ContactAdded,
    ContactRemoved,
    CustomerClassified,
    CustomerDetailsChanged,
    CustomerPersonalDataErased,
    CustomerRegistered,
    CustomerTagged,
    CustomerUntagged,
    LifecycleStageChanged,
    CustomerShared,
    CustomerUnshared,
    OwnerReassigned,
    PreferencesSet,
    PurchaseRecorded,
)
from events.values import ContactPoint, PurchaseLine

KINDS = ("person", "company")
CONTACT_KINDS = ("email", "phone", "address")
CONSENT_CHANNELS = ("email", "sms", "phone")
LIFECYCLE_STAGES = ("lead", "prospect", "customer", "churned")
LIFECYCLE_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "lead": ("prospect", "customer"),
    "prospect": ("lead", "customer"),
    "customer": ("churned",),
    "churned": ("customer", "prospect"),  # reactivated
}
#: Fields a details change may touch; the personal ones are sealed when stored.
PERSONAL_DETAILS = ("name",)
CLEAR_DETAILS = ("industry", "country", "preferred_language", "source")
MAX_CONTACTS = 50
MAX_TAGS = 50


def normalise_email(address: str) -> str:
    """The form used to detect duplicates: trimmed, lower case."""
    return address.strip().lower()


def normalise_contact_value(kind: str, value: str) -> str:
    if kind == "email":
        return normalise_email(value)
    if kind == "phone":
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    return " ".join(value.split())


class Customer(Aggregate):
    type_name = "customer"

    kind: str
    name: str | None
    contacts: dict[UUID, ContactPoint]
    source: str
    owner_id: str
    lifecycle_stage: str
    segment: str | None
    industry: str | None
    country: str | None
    preferred_language: str | None
    tags: list[str]
    consents: dict[str, bool]
    preferences: dict[str, Any]
    purchases: dict[str, dict[str, Any]]
    personal_data_erased: bool
    #: users (besides the owner) the customer is shared with; () in snapshots taken before sharing
    shared_with: list[str] = []  # noqa: RUF012 -- replaced, never mutated
    #: an erasure was recorded (the key may still be destroyed after it)
    erasure_recorded: bool = False

    # -- decisions -------------------------------------------------------------
    @classmethod
    def register(
        cls,
        ctx: CommandContext,
        *,
        customer_id: UUID,
        kind: str,
        name: str,
        contacts: list[dict[str, Any]],
        source: str,
        owner_id: str,
        lifecycle_stage: str = "lead",
        industry: str | None = None,
        country: str | None = None,
        preferred_language: str | None = None,
        tags: list[str] | None = None,
    ) -> Customer:
        if kind not in KINDS:
            raise InvalidValue(f"kind must be one of {KINDS}", field="kind")
        if lifecycle_stage not in ("lead", "prospect", "customer"):
            raise InvalidValue(
                "a new customer starts as lead, prospect or customer",
                field="lifecycle_stage",
            )
        if not name.strip():
            raise InvalidValue("name must not be blank", field="name")
        if len(contacts) > MAX_CONTACTS:
            raise InvalidValue(f"at most {MAX_CONTACTS} contacts", field="contacts")
        points: list[ContactPoint] = []
        seen: set[tuple[str, str]] = set()
        for i, c in enumerate(contacts):
            point = _contact_point(ctx, c, field=f"contacts.{i}")
            key = (point.kind, normalise_contact_value(point.kind, point.value or ""))
            if key in seen:
                raise Duplicate(f"{point.kind} listed twice", field=f"contacts.{i}.value")
            seen.add(key)
            points.append(point)
        tag_list = _normalise_tags(tags or [])
        customer = cls.__new__(cls)
        Aggregate.__init__(customer, customer_id)
        customer._trigger(
            CustomerRegistered,
            ctx,
            kind=kind,
            name=name.strip(),
            contacts=tuple(points),
            source=source,
            owner_id=owner_id,
            lifecycle_stage=lifecycle_stage,
            industry=industry,
            country=country,
            preferred_language=preferred_language,
            tags=tuple(tag_list),
        )
        return customer

    def change_details(self, ctx: CommandContext, changes: dict[str, Any]) -> bool:
        """Change some details; only fields whose value differs become the event."""
        self._check_not_erased()
        unknown = set(changes) - set(PERSONAL_DETAILS) - set(CLEAR_DETAILS)
        if unknown:
            field = sorted(unknown)[0]
            raise InvalidValue(f"{field} cannot be changed here", field=field)
        if "name" in changes and not (changes["name"] or "").strip():
            raise InvalidValue("name must not be blank", field="name")
        if "source" in changes and not changes["source"]:
            raise InvalidValue("source must not be blank", field="source")
        clear: dict[str, dict[str, Any]] = {}
        personal: dict[str, dict[str, Any]] = {}
        for field, after in changes.items():
            if field == "name":
                after = after.strip()
            before = getattr(self, field)
            if before == after:
                continue
            target = personal if field in PERSONAL_DETAILS else clear
            target[field] = {"before": before, "after": after}
        if not clear and not personal:
            return False
        self._trigger(
            CustomerDetailsChanged, ctx, changes=clear, personal_changes=personal
        )
        return True

    def add_contact(self, ctx: CommandContext, contact: dict[str, Any]) -> ContactPoint:
        self._check_not_erased()
        if len(self.contacts) >= MAX_CONTACTS:
            raise InvalidValue(f"at most {MAX_CONTACTS} contacts", field="contacts")
        point = _contact_point(ctx, contact, field="")
        wanted = normalise_contact_value(point.kind, point.value or "")
        for existing in self.contacts.values():
            if existing.kind == point.kind and normalise_contact_value(
                existing.kind, existing.value or ""
            ) == wanted:
                raise Duplicate(
                    f"this {point.kind} is already a contact",
                    field="value",
                    contact_id=str(existing.contact_id),
                )
        self._trigger(ContactAdded, ctx, contact=point)
        return point

    def remove_contact(self, ctx: CommandContext, contact_id: UUID) -> ContactPoint:
        self._check_not_erased()
        point = self.contacts.get(contact_id)
        if point is None:
            raise NotFound(f"no contact {contact_id}", field="contact_id")
        self._trigger(ContactRemoved, ctx, contact_id=contact_id, kind=point.kind)
        return point

    def reassign_owner(self, ctx: CommandContext, owner_id: str) -> bool:
        self._check_not_erased()
        if owner_id == self.owner_id:
            return False
        self._trigger(
            OwnerReassigned, ctx, previous_owner_id=self.owner_id, owner_id=owner_id
        )
        return True

    def share(self, ctx: CommandContext, user_id: str) -> bool:
        if user_id in self.shared_with or user_id == self.owner_id:
            return False
        self._trigger(CustomerShared, ctx, user_id=user_id)
        return True

    def unshare(self, ctx: CommandContext, user_id: str) -> bool:
        if user_id not in self.shared_with:
            return False
        self._trigger(CustomerUnshared, ctx, user_id=user_id)
        return True

    def change_lifecycle_stage(self, ctx: CommandContext, to_stage: str) -> None:
        self._check_not_erased()
        if to_stage not in LIFECYCLE_STAGES:
            raise InvalidValue(
                f"lifecycle stage must be one of {LIFECYCLE_STAGES}", field="stage"
            )
        if not ctx.reason:
            raise InvalidValue("a lifecycle change needs a reason", field="reason")
        if to_stage not in LIFECYCLE_TRANSITIONS[self.lifecycle_stage]:
            raise InvalidTransition(
                f"a {self.lifecycle_stage} cannot become {to_stage}",
                field="stage",
                allowed=list(LIFECYCLE_TRANSITIONS[self.lifecycle_stage]),
            )
        self._trigger(
            LifecycleStageChanged, ctx, from_stage=self.lifecycle_stage, to_stage=to_stage
        )

    def classify(self, ctx: CommandContext, segment: str) -> bool:
        self._check_not_erased()
        if not ctx.reason:
            raise InvalidValue("a classification needs a reason", field="reason")
        if segment == self.segment:
            return False
        self._trigger(
            CustomerClassified, ctx, previous_segment=self.segment, segment=segment
        )
        return True

    def tag(self, ctx: CommandContext, tag: str) -> bool:
        self._check_not_erased()
        tag = _normalise_tags([tag])[0]
        if tag in self.tags:
            return False
        if len(self.tags) >= MAX_TAGS:
            raise InvalidValue(f"at most {MAX_TAGS} tags", field="tag")
        self._trigger(CustomerTagged, ctx, tag=tag)
        return True

    def untag(self, ctx: CommandContext, tag: str) -> bool:
        self._check_not_erased()
        tag = _normalise_tags([tag])[0]
        if tag not in self.tags:
            return False
        self._trigger(CustomerUntagged, ctx, tag=tag)
        return True

    def set_consent(self, ctx: CommandContext, channel: str, granted: bool) -> bool:
        self._check_not_erased()
        if channel not in CONSENT_CHANNELS:
            raise InvalidValue(
                f"channel must be one of {CONSENT_CHANNELS}", field="channel"
            )
        previous = self.consents.get(channel)
        if previous is granted:
            return False
        self._trigger(ConsentSet, ctx, channel=channel, granted=granted, previous=previous)
        return True

    def set_preferences(self, ctx: CommandContext, preferences: dict[str, Any]) -> bool:
        self._check_not_erased()
        changes = {
            k: {"before": self.preferences.get(k), "after": v}
            for k, v in preferences.items()
            if self.preferences.get(k) != v
        }
        if not changes:
            return False
        self._trigger(PreferencesSet, ctx, changes=changes)
        return True

    def record_purchase(
        self,
        ctx: CommandContext,
        *,
        order_id: str,
        amount: Decimal,
        currency: str,
        lines: list[dict[str, Any]],
        purchased_at: datetime,
    ) -> None:
        self._check_not_erased()
        if order_id in self.purchases:
            raise Duplicate(f"order {order_id} is already recorded", field="order_id")
        require_money(amount, currency)
        purchase_lines: list[PurchaseLine] = []
        total = Decimal(0)
        for i, line in enumerate(lines):
            if line["quantity"] <= 0:
                raise InvalidValue("quantity must be positive", field=f"lines.{i}.quantity")
            require_money(line["unit_price"], currency, field=f"lines.{i}.unit_price")
            purchase_lines.append(PurchaseLine(**line))
            total += line["quantity"] * line["unit_price"]
        if purchase_lines and total != amount:
            raise InvalidValue(
                f"the lines add up to {total}, not {amount}", field="amount"
            )
        self._trigger(
            PurchaseRecorded,
            ctx,
            order_id=order_id,
            amount=amount,
            currency=currency,
            lines=tuple(purchase_lines),
            purchased_at=purchased_at,
        )

    def erase_personal_data(self, ctx: CommandContext, request_reference: str | None) -> bool:
        """Record that the customer's personal data is to be erased; False if already
        recorded (an erasure is re-run, never recorded twice)."""
        if not (ctx.reason or "").strip():
            raise InvalidValue("an erasure needs a reason", field="reason")
        if self.erasure_recorded:
            return False
        self._trigger(CustomerPersonalDataErased, ctx, request_reference=request_reference)
        return True

    def emails(self) -> list[str]:
        """The customer's e-mail addresses, normalised."""
        return [
            normalise_email(c.value)
            for c in self.contacts.values()
            if c.kind == "email" and c.value
        ]

    def _check_not_erased(self) -> None:
        if self.personal_data_erased:
            raise PersonalDataErased("this customer's personal data was erased")

    # -- state changes (re-run on replay: assign only) -------------------------
    @applies(CustomerRegistered)
    def _registered(self, e: CustomerRegistered) -> None:
        self.kind = e.kind
        self.name = e.name
        self.contacts = {c.contact_id: c for c in e.contacts or ()}
        self.source = e.source
        self.owner_id = e.owner_id
        self.lifecycle_stage = e.lifecycle_stage
        self.segment = None
        self.industry = e.industry
        self.country = e.country
        self.preferred_language = e.preferred_language
        self.tags = list(e.tags)
        self.consents = {}
        self.preferences = {}
        self.purchases = {}
        self.personal_data_erased = e.personal_data_erased
        self.shared_with = []

    @applies(CustomerPersonalDataErased)
    def _erased(self, e: CustomerPersonalDataErased) -> None:
        self.erasure_recorded = True
        self.personal_data_erased = True

    @applies(CustomerDetailsChanged)
    def _details_changed(self, e: CustomerDetailsChanged) -> None:
        for field, change in e.changes.items():
            setattr(self, field, change["after"])
        if e.personal_changes is not None:
            for field, change in e.personal_changes.items():
                setattr(self, field, change["after"])

    @applies(ContactAdded)
    def _contact_added(self, e: ContactAdded) -> None:
        if e.contact is not None:
            self.contacts[e.contact.contact_id] = e.contact

    @applies(ContactRemoved)
    def _contact_removed(self, e: ContactRemoved) -> None:
        self.contacts.pop(e.contact_id, None)

    @applies(OwnerReassigned)
    def _owner_reassigned(self, e: OwnerReassigned) -> None:
        self.owner_id = e.owner_id

    @applies(CustomerShared)
    def _shared(self, e: CustomerShared) -> None:
        self.shared_with = sorted({*self.shared_with, e.user_id})

    @applies(CustomerUnshared)
    def _unshared(self, e: CustomerUnshared) -> None:
        self.shared_with = [u for u in self.shared_with if u != e.user_id]

    @applies(LifecycleStageChanged)
    def _lifecycle_changed(self, e: LifecycleStageChanged) -> None:
        self.lifecycle_stage = e.to_stage

    @applies(CustomerClassified)
    def _classified(self, e: CustomerClassified) -> None:
        self.segment = e.segment

    @applies(CustomerTagged)
    def _tagged(self, e: CustomerTagged) -> None:
        self.tags = sorted({*self.tags, e.tag})

    @applies(CustomerUntagged)
    def _untagged(self, e: CustomerUntagged) -> None:
        self.tags = [t for t in self.tags if t != e.tag]

    @applies(ConsentSet)
    def _consent_set(self, e: ConsentSet) -> None:
        self.consents[e.channel] = e.granted

    @applies(PreferencesSet)
    def _preferences_set(self, e: PreferencesSet) -> None:
        for key, change in e.changes.items():
            self.preferences[key] = change["after"]

    @applies(PurchaseRecorded)
    def _purchase_recorded(self, e: PurchaseRecorded) -> None:
        self.purchases[e.order_id] = {
            "amount": e.amount,
            "currency": e.currency,
            "purchased_at": e.purchased_at,
            "lines": len(e.lines),
        }


def _normalise_tags(tags: list[str]) -> list[str]:
    out = []
    for tag in tags:
        t = tag.strip().lower()
        if not t:
            raise InvalidValue("a tag must not be blank", field="tag")
        out.append(t)
    return sorted(set(out))


def _contact_point(ctx: CommandContext, c: dict[str, Any], *, field: str) -> ContactPoint:
    prefix = f"{field}." if field else ""
    kind = c.get("kind")
    if kind not in CONTACT_KINDS:
        raise InvalidValue(f"kind must be one of {CONTACT_KINDS}", field=f"{prefix}kind")
    value = (c.get("value") or "").strip()
    if not value:
        raise InvalidValue("value must not be blank", field=f"{prefix}value")
    if kind == "email":
        value = normalise_email(value)
    return ContactPoint(
        contact_id=c.get("contact_id") or ctx.new_id(),
        kind=kind,
        value=value,
        label=c.get("label") or "",
        person_name=c.get("person_name"),
        primary=bool(c.get("primary", False)),
    )
