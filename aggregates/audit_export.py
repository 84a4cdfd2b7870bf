"""AuditExport: one export of a customer's history, kept as a record of who took it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidValue
from events.audit import AuditExported


class AuditExport(Aggregate):
    type_name = "audit_export"

    customer_id: UUID
    occurred_from: datetime | None
    occurred_to: datetime | None
    events: int
    last_position: int | None
    head_position: int | None
    manifest_sha256: str

    @classmethod
    def record(cls, ctx: CommandContext, *, export_id: UUID, customer_id: UUID,
               occurred_from: datetime | None, occurred_to: datetime | None, events: int,
               last_position: int | None, head_position: int | None,
               manifest_sha256: str) -> AuditExport:
        if events < 0:
            raise InvalidValue("events must not be negative", field="events")
        export = cls.__new__(cls)
        Aggregate.__init__(export, export_id)
        export._trigger(AuditExported, ctx, customer_id=customer_id, occurred_from=occurred_from,
                        occurred_to=occurred_to, events=events, last_position=last_position,
                        head_position=head_position, manifest_sha256=manifest_sha256)
        return export

    @applies(AuditExported)
    def _exported(self, e: AuditExported) -> None:
        self.customer_id = e.customer_id
        self.occurred_from = e.occurred_from
        self.occurred_to = e.occurred_to
        self.events = e.events
        self.last_position = e.last_position
        self.head_position = e.head_position
        self.manifest_sha256 = e.manifest_sha256
