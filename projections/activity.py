"""The activity feed: everything that happened around a customer, one row per event,
newest first per customer and per owner ("what happened with my customers").

Rows are only ever added. Each carries the customer's owner at the time of the event
(kept in a small table of this read model) and a short human summary; summaries name
no personal data (titles, subjects, bodies and names are left to the records), so the
feed stays free of it after an erasure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from events import audit as ae
from events import customer as ce
from events import interaction as ie
from events import opportunity as oe
from events import service_request as se
from events import task as te
from events.base import CrmEvent
from projections.base import BatchView, Projection, Table

ACTIVITIES = Table(
    "activities",
    {
        "event_id": "uuid",
        "occurred_at": "timestamptz NOT NULL",
        "recorded_at": "timestamptz NOT NULL",
        "customer_id": "uuid NOT NULL",
        "owner_id": "text",  # the customer's owner when it happened
        "actor_id": "text NOT NULL",
        "actor_role": "text NOT NULL",
        "aggregate_type": "text NOT NULL",
        "aggregate_id": "uuid NOT NULL",
        "aggregate_version": "int NOT NULL",
        "event_type": "text NOT NULL",
        "summary": "text NOT NULL",
        "reason": "text",
        "correlation_id": "text NOT NULL",
    },
    key="event_id",
    indexes=("customer_id, occurred_at DESC", "owner_id, occurred_at DESC"),
    append_only=True,
)
OWNERS = Table(
    "activity_customers",
    {"id": "uuid", "version": "int NOT NULL", "owner_id": "text NOT NULL"},
    key="id",
)


class ActivityFeed(Projection):
    name = "activity"
    version = 1
    tables = (ACTIVITIES, OWNERS)


def _h(value: str) -> str:
    return value.replace("_", " ")


def _day(value: date | datetime | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _keys(*changes: dict[str, Any] | None) -> str:
    return ", ".join(sorted({_h(k) for c in changes if c for k in c}))


Summary = Callable[[Any], str]

#: A short text per event type; personal fields never appear in it.
SUMMARIES: dict[type[CrmEvent], Summary] = {
    ce.CustomerRegistered: lambda e: f"Customer registered ({e.kind}, {_h(e.lifecycle_stage)})",
    ce.CustomerDetailsChanged: lambda e: (
        f"Details changed: {_keys(e.changes, e.personal_changes)}"
        if e.changes or e.personal_changes else "Details changed"),
    ce.ContactAdded: lambda e: f"{(e.contact.kind if e.contact else 'A').capitalize()} contact added",
    ce.ContactRemoved: lambda e: f"{e.kind.capitalize()} contact removed",
    ce.OwnerReassigned: lambda e: f"Owner changed from {e.previous_owner_id} to {e.owner_id}",
    ce.CustomerShared: lambda e: f"Shared with {e.user_id}",
    ce.CustomerUnshared: lambda e: f"No longer shared with {e.user_id}",
    ce.LifecycleStageChanged: lambda e: f"Lifecycle stage changed from {_h(e.from_stage)} to {_h(e.to_stage)}",
    ce.CustomerClassified: lambda e: f"Classified as {_h(e.segment)}"
    + (f" (was {_h(e.previous_segment)})" if e.previous_segment else ""),
    ce.CustomerTagged: lambda e: f"Tagged {e.tag}",
    ce.CustomerUntagged: lambda e: f"Tag {e.tag} removed",
    ce.ConsentSet: lambda e: f"Consent to {e.channel} {'granted' if e.granted else 'withdrawn'}",
    ce.PreferencesSet: lambda e: f"Preferences changed: {_keys(e.changes)}",
    ce.PurchaseRecorded: lambda e: f"Purchase {e.order_id} recorded: {e.amount} {e.currency}",
    ce.CustomerPersonalDataErased: lambda e: "Personal data erased",
    ie.InteractionLogged: lambda e: f"{_h(e.channel).capitalize()} logged ({e.direction}"
    + (f", {e.duration_minutes} min)" if e.duration_minutes is not None else ")"),
    oe.OpportunityOpened: lambda e: f"Opportunity opened in {_h(e.pipeline)} at {_h(e.stage)}: {e.amount} {e.currency}",
    oe.OpportunityStageChanged: lambda e: f"Stage changed from {_h(e.from_stage)} to {_h(e.to_stage)}",
    oe.OpportunityAmountChanged: lambda e: (
        f"Amount changed from {e.previous_amount} {e.previous_currency} to {e.amount} {e.currency}"),
    oe.OpportunityCloseDateChanged: lambda e: (
        f"Expected close changed from {_day(e.previous_expected_close)} to {_day(e.expected_close)}"),
    oe.OpportunityShared: lambda e: f"Opportunity shared with {e.user_id}",
    oe.OpportunityUnshared: lambda e: f"Opportunity no longer shared with {e.user_id}",
    oe.OpportunityOwnerChanged: lambda e: f"Opportunity owner changed from {e.previous_owner_id} to {e.owner_id}",
    oe.OpportunityWon: lambda e: f"Opportunity won: {e.amount} {e.currency}",
    oe.OpportunityLost: lambda e: f"Opportunity lost at {_h(e.from_stage)} ({_h(e.loss_reason)})",
    oe.OpportunityReopened: lambda e: f"Opportunity reopened at {_h(e.stage)} (was {e.previous_outcome})",
    se.ServiceRequestOpened: lambda e: (
        f"Service request opened: {e.request_type}, {e.priority} priority, via {e.channel}"),
    se.ServiceRequestAssigned: lambda e: f"Service request assigned to {e.assignee_id}",
    se.ServiceRequestPriorityChanged: lambda e: f"Priority changed from {e.previous_priority} to {e.priority}",
    se.ServiceRequestSlaSet: lambda e: (
        f"SLA for {e.priority} priority: first response due {_day(e.first_response_due_at)},"
        f" resolution due {_day(e.resolution_due_at)}"),
    se.ServiceRequestStatusChanged: lambda e: f"Status changed from {_h(e.from_status)} to {_h(e.to_status)}",
    se.ServiceRequestCommented: lambda e: (
        f"{'Customer-visible' if e.visibility == 'customer' else 'Internal'} comment added"),
    se.ServiceRequestResolved: lambda e: "Service request resolved",
    se.SatisfactionRated: lambda e: f"Rated {e.rating}/5",
    te.TaskCreated: lambda e: f"Task created for {e.assignee_id}, due {_day(e.due_at)}",
    te.TaskReassigned: lambda e: f"Task reassigned from {e.previous_assignee_id} to {e.assignee_id}",
    te.TaskDueChanged: lambda e: f"Task due changed from {_day(e.previous_due_at)} to {_day(e.due_at)}",
    te.TaskCommented: lambda e: "Task comment added",
    te.TaskCompleted: lambda e: "Task completed",
    te.TaskCancelled: lambda e: "Task cancelled",
    ae.AuditExported: lambda e: f"Audit export taken ({e.events} events)",
}
_SUMMARY_BY_NAME = {cls.type_name: fn for cls, fn in SUMMARIES.items()}


def customer_of(e: Any) -> UUID | None:
    """The customer an event concerns (None for a task tied to no customer)."""
    if e.aggregate_type == "customer":
        return e.originator_id  # type: ignore[no-any-return]
    return getattr(e, "customer_id", None)


def _needs(e: Any) -> list[tuple[str, Any]]:
    customer_id = customer_of(e)
    return [] if customer_id is None else [("activity_customers", customer_id)]


@ActivityFeed.handles(*SUMMARIES, needs=_needs)
def _feed(view: BatchView, e: Any) -> None:
    customer_id = customer_of(e)
    if customer_id is None:
        return
    if isinstance(e, ce.CustomerRegistered | ce.OwnerReassigned):
        current = view.get("activity_customers", customer_id)
        if current is None or current["version"] < e.originator_version:
            view.put("activity_customers", {"id": customer_id, "version": e.originator_version,
                                            "owner_id": e.owner_id})
        owner_id: str | None = e.owner_id
    else:
        row = view.get("activity_customers", customer_id)
        owner_id = row["owner_id"] if row is not None else None
    meta = e.meta
    view.insert("activities", {
        "event_id": meta.event_id,
        "occurred_at": meta.occurred_at,
        "recorded_at": meta.recorded_at,
        "customer_id": customer_id,
        "owner_id": owner_id,
        "actor_id": meta.actor.id,
        "actor_role": meta.actor.role,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.originator_id,
        "aggregate_version": e.originator_version,
        "event_type": e.type_name,
        "summary": _SUMMARY_BY_NAME[e.type_name](e),
        "reason": meta.reason,
        "correlation_id": meta.correlation_id,
    })
