"""ServiceRequest: a customer's case, from opening to resolution and rating."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidTransition, InvalidValue
from events.service_request import (
    SatisfactionRated,
    ServiceRequestAssigned,
    ServiceRequestCommented,
    ServiceRequestOpened,
    ServiceRequestPriorityChanged,
    ServiceRequestResolved,
    ServiceRequestSlaSet,
    ServiceRequestStatusChanged,
)

CHANNELS = ("phone", "email", "web", "chat", "social")
REQUEST_TYPES = ("question", "incident", "complaint", "request")
PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("open", "in_progress", "waiting_on_customer", "resolved", "closed", "reopened")
#: Status moves through the generic status command; resolving has its own command
#: because it carries the resolution.
STATUS_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("in_progress", "waiting_on_customer"),
    "in_progress": ("waiting_on_customer",),
    "waiting_on_customer": ("in_progress",),
    "resolved": ("closed", "reopened"),
    "closed": ("reopened",),
    "reopened": ("in_progress", "waiting_on_customer"),
}
RESOLVABLE = ("open", "in_progress", "waiting_on_customer", "reopened")
VISIBILITIES = ("internal", "customer")


class ServiceRequest(Aggregate):
    type_name = "service_request"

    customer_id: UUID
    channel: str
    request_type: str
    priority: str
    subject: str | None
    description: str | None
    status: str
    assignee_id: str | None
    comments: list[dict[str, object]]
    resolution: str | None
    rating: int | None
    rating_comment: str | None
    #: when the request was opened (business time); None in snapshots taken before it was kept
    opened_at: datetime | None = None
    #: the service level (ServiceRequestSlaSet); None in snapshots taken before SLAs
    sla_priority: str | None = None
    first_response_due_at: datetime | None = None
    resolution_due_at: datetime | None = None

    @classmethod
    def open(
        cls,
        ctx: CommandContext,
        *,
        request_id: UUID,
        customer_id: UUID,
        channel: str,
        request_type: str,
        priority: str,
        subject: str,
        description: str,
    ) -> ServiceRequest:
        if channel not in CHANNELS:
            raise InvalidValue(f"channel must be one of {CHANNELS}", field="channel")
        if request_type not in REQUEST_TYPES:
            raise InvalidValue(f"type must be one of {REQUEST_TYPES}", field="type")
        if priority not in PRIORITIES:
            raise InvalidValue(f"priority must be one of {PRIORITIES}", field="priority")
        if not subject.strip():
            raise InvalidValue("subject must not be blank", field="subject")
        sr = cls.__new__(cls)
        Aggregate.__init__(sr, request_id)
        sr._trigger(
            ServiceRequestOpened,
            ctx,
            customer_id=customer_id,
            channel=channel,
            request_type=request_type,
            priority=priority,
            subject=subject.strip(),
            description=description,
        )
        return sr

    def assign(self, ctx: CommandContext, assignee_id: str) -> bool:
        self._check_not_closed()
        if assignee_id == self.assignee_id:
            return False
        self._trigger(
            ServiceRequestAssigned,
            ctx,
            customer_id=self.customer_id,
            previous_assignee_id=self.assignee_id,
            assignee_id=assignee_id,
        )
        return True

    def change_priority(self, ctx: CommandContext, priority: str) -> bool:
        self._check_not_closed()
        if priority not in PRIORITIES:
            raise InvalidValue(f"priority must be one of {PRIORITIES}", field="priority")
        if priority == self.priority:
            return False
        self._trigger(
            ServiceRequestPriorityChanged,
            ctx,
            customer_id=self.customer_id,
            previous_priority=self.priority,
            priority=priority,
        )
        return True

    def set_sla(self, ctx: CommandContext, priority: str, first_response_due_at: datetime,
                resolution_due_at: datetime) -> bool:
        """Record the service level due times; False when they are already these."""
        if self.status in ("resolved", "closed"):
            raise InvalidTransition(
                f"a request that is {self.status} has no service level to meet", field="status"
            )
        if priority not in PRIORITIES:
            raise InvalidValue(f"priority must be one of {PRIORITIES}", field="priority")
        for name, due in (("first_response_due_at", first_response_due_at),
                          ("resolution_due_at", resolution_due_at)):
            if due.tzinfo is None:
                raise InvalidValue(f"{name} must carry a time zone", field=name)
        if resolution_due_at < first_response_due_at:
            raise InvalidValue(
                "the resolution cannot be due before the first response", field="resolution_due_at"
            )
        if (priority, first_response_due_at, resolution_due_at) == (
            self.sla_priority, self.first_response_due_at, self.resolution_due_at
        ):
            return False
        self._trigger(
            ServiceRequestSlaSet,
            ctx,
            customer_id=self.customer_id,
            priority=priority,
            first_response_due_at=first_response_due_at,
            resolution_due_at=resolution_due_at,
        )
        return True

    def change_status(self, ctx: CommandContext, to_status: str) -> None:
        if to_status not in STATUSES:
            raise InvalidValue(f"status must be one of {STATUSES}", field="status")
        if to_status == "resolved":
            raise InvalidValue("resolve with the resolve command and a resolution", field="status")
        allowed = STATUS_TRANSITIONS[self.status]
        if to_status not in allowed:
            raise InvalidTransition(
                f"a request that is {self.status} cannot become {to_status}",
                field="status",
                allowed=list(allowed),
            )
        self._trigger(
            ServiceRequestStatusChanged,
            ctx,
            customer_id=self.customer_id,
            from_status=self.status,
            to_status=to_status,
        )

    def comment(self, ctx: CommandContext, body: str, visibility: str) -> UUID:
        if visibility not in VISIBILITIES:
            raise InvalidValue(f"visibility must be one of {VISIBILITIES}", field="visibility")
        if not body.strip():
            raise InvalidValue("a comment must not be blank", field="body")
        comment_id = ctx.new_id()
        self._trigger(
            ServiceRequestCommented,
            ctx,
            customer_id=self.customer_id,
            comment_id=comment_id,
            visibility=visibility,
            body=body,
        )
        return comment_id

    def resolve(self, ctx: CommandContext, resolution: str) -> None:
        if self.status not in RESOLVABLE:
            raise InvalidTransition(
                f"a request that is {self.status} cannot be resolved", field="status"
            )
        if not resolution.strip():
            raise InvalidValue("a resolution must not be blank", field="resolution")
        self._trigger(
            ServiceRequestResolved,
            ctx,
            customer_id=self.customer_id,
            from_status=self.status,
            resolution=resolution,
        )

    def rate(self, ctx: CommandContext, rating: int, comment: str | None) -> None:
        if self.status not in ("resolved", "closed"):
            raise InvalidTransition("only a resolved request can be rated", field="status")
        if self.rating is not None:
            raise InvalidTransition("the request was already rated", field="rating")
        if not 1 <= rating <= 5:
            raise InvalidValue("rating must be 1 to 5", field="rating")
        self._trigger(
            SatisfactionRated, ctx, customer_id=self.customer_id, rating=rating, comment=comment
        )

    def _check_not_closed(self) -> None:
        if self.status == "closed":
            raise InvalidTransition("the request is closed; reopen it first", field="status")

    @applies(ServiceRequestOpened)
    def _opened(self, e: ServiceRequestOpened) -> None:
        self.customer_id = e.customer_id
        self.channel = e.channel
        self.request_type = e.request_type
        self.priority = e.priority
        self.subject = e.subject
        self.description = e.description
        self.status = "open"
        self.opened_at = e.meta.occurred_at
        self.assignee_id = None
        self.comments = []
        self.resolution = None
        self.rating = None
        self.rating_comment = None
        self.sla_priority = None
        self.first_response_due_at = None
        self.resolution_due_at = None

    @applies(ServiceRequestAssigned)
    def _assigned(self, e: ServiceRequestAssigned) -> None:
        self.assignee_id = e.assignee_id

    @applies(ServiceRequestPriorityChanged)
    def _priority_changed(self, e: ServiceRequestPriorityChanged) -> None:
        self.priority = e.priority

    @applies(ServiceRequestSlaSet)
    def _sla_set(self, e: ServiceRequestSlaSet) -> None:
        self.sla_priority = e.priority
        self.first_response_due_at = e.first_response_due_at
        self.resolution_due_at = e.resolution_due_at

    @applies(ServiceRequestStatusChanged)
    def _status_changed(self, e: ServiceRequestStatusChanged) -> None:
        self.status = e.to_status
        if e.to_status == "reopened":
            self.resolution = None

    @applies(ServiceRequestCommented)
    def _commented(self, e: ServiceRequestCommented) -> None:
        self.comments.append(
            {
                "comment_id": e.comment_id,
                "visibility": e.visibility,
                "body": e.body,
                "author_id": e.meta.actor.id,
                "at": e.meta.occurred_at,
            }
        )

    @applies(ServiceRequestResolved)
    def _resolved(self, e: ServiceRequestResolved) -> None:
        self.status = "resolved"
        self.resolution = e.resolution

    @applies(SatisfactionRated)
    def _rated(self, e: SatisfactionRated) -> None:
        self.rating = e.rating
        self.rating_comment = e.comment
