"""POST /api/v1/customers/{id}/erasure: the right to be forgotten (roles with the
``erasure`` scope: data_admin, admin)."""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from commands.base import CheckedInput
from commands.application import Principal
from api.encoding import JSONResponse
from api.auth import require_scope
from api.problems import Problem
from writeapi.commands import Call
from api.services import services


class ErasureRequest(CheckedInput):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, description="Why (e.g. the legal basis).")
    request_reference: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="The data subject's request, e.g. a ticket number (no personal data).")


class ErasureReceipt(BaseModel):
    """What was done, store by store (see the README, "Erasure")."""

    model_config = ConfigDict(extra="allow")

    customer_id: UUID
    status: str
    event: dict[str, Any] | None
    key: dict[str, Any]
    ledger: dict[str, Any]
    stores: list[dict[str, Any]]
    vacuumed: dict[str, Any]
    analytics: dict[str, Any]
    parquet_exports: dict[str, Any]
    kafka: dict[str, Any]
    completed_at: str


class Outcome(Protocol):
    receipt: dict[str, Any]
    replayed: bool


class Erasures(Protocol):
    def erase(self, customer_id: UUID, principal: Principal, *, reason: str,
              request_reference: str | None = None, correlation_id: str,
              idempotency_key: str | None = None) -> Outcome: ...


def erase(id: UUID, body: ErasureRequest, call: Call, request: Request) -> Any:
    """Erase the customer's personal data from every store; the receipt."""
    require_scope(call.principal, "erasure")
    erasures: Erasures | None = services(request).erasure
    if erasures is None:
        raise Problem(503, "erasure is not available in this process", code="erasure-unavailable")
    outcome = erasures.erase(id, call.principal, reason=body.reason,
                             request_reference=body.request_reference,
                             correlation_id=call.correlation_id,
                             idempotency_key=call.idempotency_key)
    headers = {"Idempotency-Replayed": "true"} if outcome.replayed else {}
    return JSONResponse(outcome.receipt, headers=headers)


def build_erasure_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["customers"])
    router.add_api_route(
        "/customers/{id}/erasure", erase, methods=["POST"], response_model=ErasureReceipt,
        summary="Erase the customer's personal data (right to be forgotten)",
        operation_id="EraseCustomerPersonalData",
        responses={401: {"description": "No or bad token"},
                   403: {"description": "The role may not erase"},
                   404: {"description": "No such customer"},
                   422: {"description": "Invalid input"}})
    return router
