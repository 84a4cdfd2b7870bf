"""Events of audit exports: every export of a customer's history is itself recorded."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from events.base import CrmEvent, register


class AuditExportEvent(CrmEvent):
    aggregate_type = "audit_export"
    subject_field = "customer_id"


@register
class AuditExported(AuditExportEvent):
    """Who (the event's actor) exported which customer's events, over which business
    times, how many, up to which log position, and the digest of the signed manifest."""

    type_name = "AuditExported"
    creates = True

    customer_id: UUID
    occurred_from: datetime | None
    occurred_to: datetime | None
    events: int
    last_position: int | None
    head_position: int | None
    manifest_sha256: str
