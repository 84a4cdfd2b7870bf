"""Recording audit exports: every export is itself an event (who exported what, when).

Not an HTTP command of its own: the export route and `crm audit export` send it after
writing the signed export.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from aggregates.audit_export import AuditExport
from aggregates.base import CommandContext
from aggregates.customer import Customer
from commands.application import CommandService, Principal, Request, UnitOfWork, WriteResult
from commands.base import Command, When


class RecordAuditExport(Command):
    customer_id: UUID
    occurred_from: When | None = None
    occurred_to: When | None = None
    events: int = Field(ge=0)
    last_position: int | None = None
    head_position: int | None = None
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def record_audit_export(cmd: RecordAuditExport, uow: UnitOfWork, ctx: CommandContext) -> AuditExport:
    uow.get_reference(Customer, cmd.customer_id, "customer_id")
    export = AuditExport.record(
        ctx, export_id=ctx.new_id(), customer_id=cmd.customer_id, occurred_from=cmd.occurred_from,
        occurred_to=cmd.occurred_to, events=cmd.events, last_position=cmd.last_position,
        head_position=cmd.head_position, manifest_sha256=cmd.manifest_sha256)
    uow.add(export)
    return export


def record_export(service: CommandService, manifest: dict[str, Any], manifest_sha256: str,
                  principal: Principal, correlation_id: str) -> WriteResult:
    """Record that this export (its signed manifest) was taken by ``principal``."""
    links = manifest.get("links") or []
    head = manifest.get("head") or {}

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    command = RecordAuditExport(
        customer_id=UUID(manifest["customer_id"]), occurred_from=when(manifest.get("from")),
        occurred_to=when(manifest.get("to")), events=int(manifest["events"]),
        last_position=links[-1][0] if links else None, head_position=head.get("position"),
        manifest_sha256=manifest_sha256, reason="audit export")
    return service.execute(command, Request(principal=principal, correlation_id=correlation_id))


HANDLERS = {RecordAuditExport: record_audit_export}
