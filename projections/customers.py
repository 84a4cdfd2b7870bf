"""The customer list and detail read model: one row per customer, shaped for the
list screen (search, filters, sort) and the detail header."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from events import customer as ce
from events import interaction as ie
from events import opportunity as oe
from events import service_request as se
from events.base import CrmEvent
from projections.base import BatchView, From, Projection, Row, Table, shared_with_after

#: The event fields the customer's name and contact points come from.
NAME_SOURCES = (From(ce.CustomerRegistered, "name"), From(ce.CustomerDetailsChanged, "personal_changes"))
CONTACT_SOURCES = (From(ce.CustomerRegistered, "contacts"), From(ce.ContactAdded, "contact"))

CUSTOMERS = Table(
    "customers",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "kind": "text NOT NULL",
        "name": "text",
        "emails": "text[] NOT NULL DEFAULT '{}'",
        "phones": "text[] NOT NULL DEFAULT '{}'",
        "contacts": "jsonb NOT NULL DEFAULT '[]'",
        "owner_id": "text NOT NULL",
        "shared_with": "text[] NOT NULL DEFAULT '{}'",
        "lifecycle_stage": "text NOT NULL",
        "segment": "text",
        "tags": "text[] NOT NULL DEFAULT '{}'",
        "source": "text",
        "industry": "text",
        "country": "text",
        "preferred_language": "text",
        "consents": "jsonb NOT NULL DEFAULT '{}'",
        "preferences": "jsonb NOT NULL DEFAULT '{}'",
        "created_at": "timestamptz NOT NULL",
        "updated_at": "timestamptz NOT NULL",
        "last_interaction_at": "timestamptz",
        "last_activity_at": "timestamptz NOT NULL",
        "open_opportunities": "int NOT NULL DEFAULT 0",
        "open_pipeline": "jsonb NOT NULL DEFAULT '{}'",
        "open_requests": "int NOT NULL DEFAULT 0",
        "purchases": "int NOT NULL DEFAULT 0",
        "lifetime_purchases": "jsonb NOT NULL DEFAULT '{}'",
        "personal_data_erased": "boolean NOT NULL DEFAULT false",
        "search_text": "text NOT NULL DEFAULT ''",
    },
    key="id",
    subject="id",
    sources={"name": NAME_SOURCES, "emails": CONTACT_SOURCES, "phones": CONTACT_SOURCES,
             "contacts": CONTACT_SOURCES, "search_text": NAME_SOURCES + CONTACT_SOURCES},
    indexes=(
        "owner_id, id",
        "CREATE INDEX {name} ON {table} USING gin (shared_with)",
        "lifecycle_stage, id",
        "segment, id",
        "created_at, id",
        "last_activity_at, id",
        "name, id",
        "CREATE INDEX {name} ON {table} USING gin (tags)",
        "CREATE INDEX {name} ON {table} USING gin (search_text gin_trgm_ops)",
    ),
)
#: What the customer list needs to know about each opportunity and request to keep
#: its open counts and totals right when they change.
DEALS = Table(
    "customer_deals",
    {
        "id": "uuid",
        "customer_id": "uuid NOT NULL",
        "kind": "text NOT NULL",  # opportunity | service_request
        "open": "boolean NOT NULL",
        "amount": "numeric",
        "currency": "text",
    },
    key="id",
)


class CustomerList(Projection):
    name = "customers"
    version = 2
    tables = (CUSTOMERS, DEALS)


def _contacts_columns(contacts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "contacts": contacts,
        "emails": [c["value"] for c in contacts if c["kind"] == "email" and c.get("value")],
        "phones": [c["value"] for c in contacts if c["kind"] == "phone" and c.get("value")],
    }


#: The columns the search text is made of.
_SEARCHED = frozenset({"name", "emails", "phones", "contacts"})


def _search_text(row: Row) -> str:
    parts = [row.get("name") or "", *row.get("emails", []), *row.get("phones", [])]
    parts += ["".join(ch for ch in p if ch.isdigit()) for p in row.get("phones", [])]
    parts += [c.get("person_name") or "" for c in row.get("contacts", [])]
    return " ".join(p for p in parts if p).lower()


def _touch(view: BatchView, event: CrmEvent, **changes: Any) -> None:
    row = view.get("customers", event.originator_id)
    if row is None:
        return
    at = event.meta.occurred_at
    new = {**row, **changes, "version": event.originator_version, "updated_at": event.meta.recorded_at,
           "last_activity_at": max(row["last_activity_at"], at)}
    if not _SEARCHED.isdisjoint(changes):
        new["search_text"] = _search_text(new)
    view.put("customers", new)


def _me(e: CrmEvent) -> list[tuple[str, Any]]:
    return [("customers", e.originator_id)]


@CustomerList.handles(ce.CustomerRegistered, needs=_me)
def _registered(view: BatchView, e: ce.CustomerRegistered) -> None:
    contacts = [_contact(c) for c in e.contacts or ()]
    row: Row = {
        "id": e.originator_id,
        "version": e.originator_version,
        "kind": e.kind,
        "name": e.name,
        **_contacts_columns(contacts),
        "owner_id": e.owner_id,
        "shared_with": [],
        "lifecycle_stage": e.lifecycle_stage,
        "segment": None,
        "tags": sorted(e.tags),
        "source": e.source,
        "industry": e.industry,
        "country": e.country,
        "preferred_language": e.preferred_language,
        "consents": {},
        "preferences": {},
        "created_at": e.meta.occurred_at,
        "updated_at": e.meta.recorded_at,
        "last_interaction_at": None,
        "last_activity_at": e.meta.occurred_at,
        "open_opportunities": 0,
        "open_pipeline": {},
        "open_requests": 0,
        "purchases": 0,
        "lifetime_purchases": {},
        "personal_data_erased": e.personal_data_erased,
    }
    row["search_text"] = _search_text(row)
    view.put("customers", row)


@CustomerList.handles(ce.CustomerPersonalDataErased, needs=_me)
def _erased(view: BatchView, e: ce.CustomerPersonalDataErased) -> None:
    _touch(view, e, name=None, **_contacts_columns([]), personal_data_erased=True)


def _contact(c: Any) -> dict[str, Any]:
    return {"contact_id": str(c.contact_id), "kind": c.kind, "value": c.value, "label": c.label,
            "person_name": c.person_name, "primary": c.primary}


@CustomerList.handles(ce.CustomerDetailsChanged, needs=_me)
def _details(view: BatchView, e: ce.CustomerDetailsChanged) -> None:
    changes = {k: v["after"] for k, v in {**e.changes, **(e.personal_changes or {})}.items()}
    _touch(view, e, **changes)


@CustomerList.handles(ce.ContactAdded, needs=_me)
def _contact_added(view: BatchView, e: ce.ContactAdded) -> None:
    row = view.get("customers", e.originator_id)
    if row is None or e.contact is None:
        _touch(view, e)
        return
    _touch(view, e, **_contacts_columns([*row["contacts"], _contact(e.contact)]))


@CustomerList.handles(ce.ContactRemoved, needs=_me)
def _contact_removed(view: BatchView, e: ce.ContactRemoved) -> None:
    row = view.get("customers", e.originator_id)
    if row is None:
        return
    kept = [c for c in row["contacts"] if c["contact_id"] != str(e.contact_id)]
    _touch(view, e, **_contacts_columns(kept))


@CustomerList.handles(ce.OwnerReassigned, needs=_me)
def _owner(view: BatchView, e: ce.OwnerReassigned) -> None:
    _touch(view, e, owner_id=e.owner_id)


@CustomerList.handles(ce.CustomerShared, ce.CustomerUnshared, needs=_me)
def _sharing(view: BatchView, e: ce.CustomerShared | ce.CustomerUnshared) -> None:
    row = view.get("customers", e.originator_id)
    if row is not None:
        _touch(view, e, shared_with=shared_with_after(row, e.user_id, shared=isinstance(e, ce.CustomerShared)))


@CustomerList.handles(ce.LifecycleStageChanged, needs=_me)
def _lifecycle(view: BatchView, e: ce.LifecycleStageChanged) -> None:
    _touch(view, e, lifecycle_stage=e.to_stage)


@CustomerList.handles(ce.CustomerClassified, needs=_me)
def _classified(view: BatchView, e: ce.CustomerClassified) -> None:
    _touch(view, e, segment=e.segment)


@CustomerList.handles(ce.CustomerTagged, ce.CustomerUntagged, needs=_me)
def _tags(view: BatchView, e: ce.CustomerTagged | ce.CustomerUntagged) -> None:
    row = view.get("customers", e.originator_id)
    if row is None:
        return
    tags = set(row["tags"])
    if isinstance(e, ce.CustomerTagged):
        tags.add(e.tag)
    else:
        tags.discard(e.tag)
    _touch(view, e, tags=sorted(tags))


@CustomerList.handles(ce.ConsentSet, needs=_me)
def _consent(view: BatchView, e: ce.ConsentSet) -> None:
    row = view.get("customers", e.originator_id)
    if row is None:
        return
    _touch(view, e, consents={**row["consents"], e.channel: e.granted})


@CustomerList.handles(ce.PreferencesSet, needs=_me)
def _preferences(view: BatchView, e: ce.PreferencesSet) -> None:
    row = view.get("customers", e.originator_id)
    if row is None:
        return
    _touch(view, e, preferences={**row["preferences"], **{k: v["after"] for k, v in e.changes.items()}})


def _add_money(totals: dict[str, str], currency: str, amount: Decimal) -> dict[str, str]:
    out = dict(totals)
    out[currency] = str(Decimal(out.get(currency, "0")) + amount)
    if Decimal(out[currency]) == 0:
        out.pop(currency)
    return out


@CustomerList.handles(ce.PurchaseRecorded, needs=_me)
def _purchase(view: BatchView, e: ce.PurchaseRecorded) -> None:
    row = view.get("customers", e.originator_id)
    if row is None:
        return
    _touch(view, e, purchases=row["purchases"] + 1,
           lifetime_purchases=_add_money(row["lifetime_purchases"], e.currency, e.amount))


# -- what happens around the customer ------------------------------------------------
def _customer_and_deal(e: Any) -> list[tuple[str, Any]]:
    return [("customers", e.customer_id), ("customer_deals", e.originator_id)]


def _around(view: BatchView, customer_id: Any, at: Any, **changes: Any) -> None:
    row = view.get("customers", customer_id)
    if row is None:
        return
    view.put("customers", {**row, **changes, "last_activity_at": max(row["last_activity_at"], at)})


def _pipeline_change(view: BatchView, e: Any, *, open_: bool, amount: Decimal | None, currency: str | None) -> None:
    """Move this opportunity's contribution to its customer's open pipeline."""
    deal = view.get("customer_deals", e.originator_id)
    customer = view.get("customers", e.customer_id)
    if customer is None:
        return
    pipeline = dict(customer["open_pipeline"])
    count = customer["open_opportunities"]
    if deal is not None and deal["open"]:
        pipeline = _add_money(pipeline, deal["currency"], -Decimal(deal["amount"]))
        count -= 1
    amount = amount if amount is not None else (Decimal(deal["amount"]) if deal else Decimal(0))
    currency = currency or (deal["currency"] if deal else "EUR")
    if open_:
        pipeline = _add_money(pipeline, currency, amount)
        count += 1
    view.put("customer_deals", {"id": e.originator_id, "customer_id": e.customer_id, "kind": "opportunity",
                                "open": open_, "amount": amount, "currency": currency})
    _around(view, e.customer_id, e.meta.occurred_at, open_pipeline=pipeline, open_opportunities=count)


@CustomerList.handles(oe.OpportunityOpened, needs=_customer_and_deal)
def _opp_opened(view: BatchView, e: oe.OpportunityOpened) -> None:
    _pipeline_change(view, e, open_=True, amount=e.amount, currency=e.currency)


@CustomerList.handles(oe.OpportunityAmountChanged, needs=_customer_and_deal)
def _opp_amount(view: BatchView, e: oe.OpportunityAmountChanged) -> None:
    _pipeline_change(view, e, open_=True, amount=e.amount, currency=e.currency)


@CustomerList.handles(oe.OpportunityWon, oe.OpportunityLost, needs=_customer_and_deal)
def _opp_closed(view: BatchView, e: oe.OpportunityWon | oe.OpportunityLost) -> None:
    _pipeline_change(view, e, open_=False, amount=None, currency=None)


@CustomerList.handles(oe.OpportunityReopened, needs=_customer_and_deal)
def _opp_reopened(view: BatchView, e: oe.OpportunityReopened) -> None:
    _pipeline_change(view, e, open_=True, amount=None, currency=None)


@CustomerList.handles(oe.OpportunityStageChanged, oe.OpportunityCloseDateChanged, oe.OpportunityOwnerChanged,
                      needs=lambda e: [("customers", e.customer_id)])
def _opp_activity(view: BatchView, e: Any) -> None:
    _around(view, e.customer_id, e.meta.occurred_at)


def _request_change(view: BatchView, e: Any, open_: bool) -> None:
    deal = view.get("customer_deals", e.originator_id)
    customer = view.get("customers", e.customer_id)
    if customer is None:
        return
    count = customer["open_requests"] - (1 if deal is not None and deal["open"] else 0) + (1 if open_ else 0)
    view.put("customer_deals", {"id": e.originator_id, "customer_id": e.customer_id, "kind": "service_request",
                                "open": open_, "amount": None, "currency": None})
    _around(view, e.customer_id, e.meta.occurred_at, open_requests=count)


@CustomerList.handles(se.ServiceRequestOpened, needs=_customer_and_deal)
def _sr_opened(view: BatchView, e: se.ServiceRequestOpened) -> None:
    _request_change(view, e, True)


@CustomerList.handles(se.ServiceRequestResolved, needs=_customer_and_deal)
def _sr_resolved(view: BatchView, e: se.ServiceRequestResolved) -> None:
    _request_change(view, e, False)


@CustomerList.handles(se.ServiceRequestStatusChanged, needs=_customer_and_deal)
def _sr_status(view: BatchView, e: se.ServiceRequestStatusChanged) -> None:
    _request_change(view, e, e.to_status not in ("resolved", "closed"))


@CustomerList.handles(ie.InteractionLogged, needs=lambda e: [("customers", e.customer_id)])
def _interaction(view: BatchView, e: ie.InteractionLogged) -> None:
    row = view.get("customers", e.customer_id)
    if row is None:
        return
    at = e.meta.occurred_at
    last = row["last_interaction_at"]
    _around(view, e.customer_id, at, last_interaction_at=at if last is None or at > last else last)
