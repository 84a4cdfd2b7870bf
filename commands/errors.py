"""Errors of the command layer (beside the domain's own refusals)."""

from __future__ import annotations

from aggregates.errors import DomainError


class ConcurrencyConflict(DomainError):
    """The record changed since the version the caller based its change on (409)."""

    status = 409
    code = "version-conflict"

    def __init__(self, aggregate_id: object, expected: int | None, current: int):
        super().__init__(
            f"the record is at version {current}, not {expected}; reload and re-apply",
            field="If-Match",
            current_version=current,
            aggregate_id=str(aggregate_id),
        )
        self.current_version = current


class PreconditionRequired(DomainError):
    """A change to a record must name the version it is based on (428)."""

    status = 428
    code = "precondition-required"


class IdempotencyKeyReused(DomainError):
    """The same Idempotency-Key was sent with a different request (422)."""

    status = 422
    code = "idempotency-key-reused"
