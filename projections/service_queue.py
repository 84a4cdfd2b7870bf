"""The service queue: one row per service request, shaped for the queue screens (by
status and priority, per assignee, per customer)."""

from __future__ import annotations

from typing import Any

from events import service_request as se
from projections.base import BatchView, From, Projection, Row, Table
from projections.customer_names import NAME_SOURCES, attach, keep_customer_names, names_table

SERVICE_REQUESTS = Table(
    "service_requests",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "customer_id": "uuid NOT NULL",
        "customer_name": "text",
        "channel": "text NOT NULL",
        "request_type": "text NOT NULL",
        "priority": "text NOT NULL",
        "status": "text NOT NULL",
        "subject": "text",
        "assignee_id": "text",
        "opened_at": "timestamptz NOT NULL",
        "first_response_at": "timestamptz",
        "resolved_at": "timestamptz",
        "closed_at": "timestamptz",
        "rating": "int",
        "first_response_due_at": "timestamptz",
        "resolution_due_at": "timestamptz",
        #: the due that applies now: the first response's until someone responded, then
        #: the resolution's (null while the request has no SLA)
        "sla_due_at": "timestamptz",
        "updated_at": "timestamptz NOT NULL",
    },
    key="id",
    indexes=("status, priority", "assignee_id, status", "customer_id"),
    subject="customer_id",
    sources={"customer_name": NAME_SOURCES, "subject": (From(se.ServiceRequestOpened, "subject"),)},
)
CUSTOMER_NAMES = names_table("service_request_customers")

#: Roles whose move of a request to in_progress counts as the first response.
AGENT_ROLES = frozenset({"service_agent", "manager", "admin"})


class ServiceQueue(Projection):
    name = "service_queue"
    version = 2
    tables = (SERVICE_REQUESTS, CUSTOMER_NAMES)


keep_customer_names(ServiceQueue, CUSTOMER_NAMES.name, SERVICE_REQUESTS.name)


def _sr(e: Any) -> list[tuple[str, Any]]:
    return [("service_requests", e.originator_id)]


def _change(view: BatchView, e: Any, **changes: Any) -> Row | None:
    """Apply an event to its request's row."""
    return view.change_record("service_requests", e, **changes)


def _responded(row: Row | None, e: Any) -> dict[str, Any]:
    """``first_response_at`` (and the SLA due that now applies) if this is the first response."""
    if row is None or row["first_response_at"] is not None:
        return {}
    return {"first_response_at": e.meta.occurred_at, "sla_due_at": row["resolution_due_at"]}


@ServiceQueue.handles(
    se.ServiceRequestOpened,
    needs=lambda e: [("service_requests", e.originator_id), ("service_request_customers", e.customer_id)],
)
def _opened(view: BatchView, e: se.ServiceRequestOpened) -> None:
    existing = view.get("service_requests", e.originator_id)
    if existing is not None and existing["version"] >= e.originator_version:
        return
    view.put("service_requests", {
        "id": e.originator_id,
        "version": e.originator_version,
        "customer_id": e.customer_id,
        "customer_name": attach(view, "service_request_customers", e.customer_id, e.originator_id),
        "channel": e.channel,
        "request_type": e.request_type,
        "priority": e.priority,
        "status": "open",
        "subject": e.subject,
        "assignee_id": None,
        "opened_at": e.meta.occurred_at,
        "first_response_at": None,
        "resolved_at": None,
        "closed_at": None,
        "rating": None,
        "first_response_due_at": None,
        "resolution_due_at": None,
        "sla_due_at": None,
        "updated_at": e.meta.recorded_at,
    })


@ServiceQueue.handles(se.ServiceRequestAssigned, needs=_sr)
def _assigned(view: BatchView, e: se.ServiceRequestAssigned) -> None:
    _change(view, e, assignee_id=e.assignee_id)


@ServiceQueue.handles(se.ServiceRequestPriorityChanged, needs=_sr)
def _priority(view: BatchView, e: se.ServiceRequestPriorityChanged) -> None:
    _change(view, e, priority=e.priority)


@ServiceQueue.handles(se.ServiceRequestSlaSet, needs=_sr)
def _sla_set(view: BatchView, e: se.ServiceRequestSlaSet) -> None:
    row = view.get("service_requests", e.originator_id)
    responded = row is not None and row["first_response_at"] is not None
    _change(view, e, first_response_due_at=e.first_response_due_at, resolution_due_at=e.resolution_due_at,
            sla_due_at=e.resolution_due_at if responded else e.first_response_due_at)


@ServiceQueue.handles(se.ServiceRequestStatusChanged, needs=_sr)
def _status(view: BatchView, e: se.ServiceRequestStatusChanged) -> None:
    row = view.get("service_requests", e.originator_id)
    changes: dict[str, Any] = {"status": e.to_status}
    if e.to_status == "in_progress" and e.meta.actor.role in AGENT_ROLES:
        changes.update(_responded(row, e))
    elif e.to_status == "closed":
        changes["closed_at"] = e.meta.occurred_at
    elif e.to_status == "reopened":
        changes.update(resolved_at=None, closed_at=None)
    _change(view, e, **changes)


@ServiceQueue.handles(se.ServiceRequestCommented, needs=_sr)
def _commented(view: BatchView, e: se.ServiceRequestCommented) -> None:
    row = view.get("service_requests", e.originator_id)
    _change(view, e, **(_responded(row, e) if e.visibility == "customer" else {}))


@ServiceQueue.handles(se.ServiceRequestResolved, needs=_sr)
def _resolved(view: BatchView, e: se.ServiceRequestResolved) -> None:
    _change(view, e, status="resolved", resolved_at=e.meta.occurred_at)


@ServiceQueue.handles(se.SatisfactionRated, needs=_sr)
def _rated(view: BatchView, e: se.SatisfactionRated) -> None:
    _change(view, e, rating=e.rating)
