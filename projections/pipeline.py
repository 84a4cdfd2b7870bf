"""The pipeline board: one row per opportunity, shaped for the board (columns by
pipeline and stage, totals per stage by SQL GROUP BY) and the deal lists."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from events import opportunity as oe
from projections.base import BatchView, From, Projection, Table, shared_with_after
from projections.customer_names import NAME_SOURCES, attach, keep_customer_names, names_table

OPPORTUNITIES = Table(
    "opportunities",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "customer_id": "uuid NOT NULL",
        "customer_name": "text",
        "title": "text",
        "pipeline": "text NOT NULL",
        "stage": "text NOT NULL",  # the pipeline's stage while open; won | lost when closed
        "probability": "int NOT NULL",
        "status": "text NOT NULL",  # open | won | lost
        "amount": "numeric NOT NULL",
        "currency": "text NOT NULL",
        "weighted_amount": "numeric NOT NULL",  # amount * probability / 100
        "expected_close": "date",
        "owner_id": "text NOT NULL",
        "shared_with": "text[] NOT NULL DEFAULT '{}'",
        "loss_reason": "text",
        "opened_at": "timestamptz NOT NULL",
        "closed_at": "timestamptz",
        "updated_at": "timestamptz NOT NULL",
        "stage_entered_at": "timestamptz NOT NULL",
    },
    key="id",
    indexes=("pipeline, stage", "owner_id", "customer_id", "status"),
    subject="customer_id",
    sources={"customer_name": NAME_SOURCES, "title": (From(oe.OpportunityOpened, "title"),)},
)
CUSTOMER_NAMES = names_table("opportunity_customers")


class PipelineBoard(Projection):
    name = "pipeline"
    version = 2
    tables = (OPPORTUNITIES, CUSTOMER_NAMES)


keep_customer_names(PipelineBoard, CUSTOMER_NAMES.name, OPPORTUNITIES.name)


def _weighted(amount: Decimal, probability: int) -> Decimal:
    return amount * probability / 100


def _opp(e: Any) -> list[tuple[str, Any]]:
    return [("opportunities", e.originator_id)]


def _change(view: BatchView, e: Any, **changes: Any) -> None:
    """Apply an event to its opportunity's row, keeping the weighted amount in step."""
    new = view.change_record("opportunities", e, **changes)
    if new is not None:
        view.update("opportunities", e.originator_id,
                    weighted_amount=_weighted(new["amount"], new["probability"]))


@PipelineBoard.handles(
    oe.OpportunityOpened,
    needs=lambda e: [("opportunities", e.originator_id), ("opportunity_customers", e.customer_id)],
)
def _opened(view: BatchView, e: oe.OpportunityOpened) -> None:
    existing = view.get("opportunities", e.originator_id)
    if existing is not None and existing["version"] >= e.originator_version:
        return
    at = e.meta.occurred_at
    view.put("opportunities", {
        "id": e.originator_id,
        "version": e.originator_version,
        "customer_id": e.customer_id,
        "customer_name": attach(view, "opportunity_customers", e.customer_id, e.originator_id),
        "title": e.title,
        "pipeline": e.pipeline,
        "stage": e.stage,
        "probability": e.probability,
        "status": "open",
        "amount": e.amount,
        "currency": e.currency,
        "weighted_amount": _weighted(e.amount, e.probability),
        "expected_close": e.expected_close,
        "owner_id": e.owner_id,
        "shared_with": [],
        "loss_reason": None,
        "opened_at": at,
        "closed_at": None,
        "updated_at": e.meta.recorded_at,
        "stage_entered_at": at,
    })


@PipelineBoard.handles(oe.OpportunityStageChanged, needs=_opp)
def _stage(view: BatchView, e: oe.OpportunityStageChanged) -> None:
    _change(view, e, stage=e.to_stage, probability=e.probability, stage_entered_at=e.meta.occurred_at)


@PipelineBoard.handles(oe.OpportunityAmountChanged, needs=_opp)
def _amount(view: BatchView, e: oe.OpportunityAmountChanged) -> None:
    _change(view, e, amount=e.amount, currency=e.currency)


@PipelineBoard.handles(oe.OpportunityCloseDateChanged, needs=_opp)
def _close_date(view: BatchView, e: oe.OpportunityCloseDateChanged) -> None:
    _change(view, e, expected_close=e.expected_close)


@PipelineBoard.handles(oe.OpportunityOwnerChanged, needs=_opp)
def _owner(view: BatchView, e: oe.OpportunityOwnerChanged) -> None:
    _change(view, e, owner_id=e.owner_id)


@PipelineBoard.handles(oe.OpportunityShared, oe.OpportunityUnshared, needs=_opp)
def _sharing(view: BatchView, e: oe.OpportunityShared | oe.OpportunityUnshared) -> None:
    row = view.get("opportunities", e.originator_id)
    if row is not None:
        view.change_record("opportunities", e,
                           shared_with=shared_with_after(row, e.user_id, shared=isinstance(e, oe.OpportunityShared)))


@PipelineBoard.handles(oe.OpportunityWon, needs=_opp)
def _won(view: BatchView, e: oe.OpportunityWon) -> None:
    at = e.meta.occurred_at
    _change(view, e, status="won", stage="won", probability=100, amount=e.amount, currency=e.currency,
            closed_at=at, stage_entered_at=at)


@PipelineBoard.handles(oe.OpportunityLost, needs=_opp)
def _lost(view: BatchView, e: oe.OpportunityLost) -> None:
    at = e.meta.occurred_at
    _change(view, e, status="lost", stage="lost", probability=0, loss_reason=e.loss_reason,
            closed_at=at, stage_entered_at=at)


@PipelineBoard.handles(oe.OpportunityReopened, needs=_opp)
def _reopened(view: BatchView, e: oe.OpportunityReopened) -> None:
    _change(view, e, status="open", stage=e.stage, probability=e.probability, loss_reason=None,
            closed_at=None, stage_entered_at=e.meta.occurred_at)
