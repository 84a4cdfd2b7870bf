"""Opportunity: a deal for a customer moving through a sales pipeline."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidTransition, InvalidValue
from aggregates.money import require_money
from aggregates.pipeline import LOSS_REASONS, PIPELINES, Pipeline
from events.opportunity import (
    OpportunityAmountChanged,
    OpportunityCloseDateChanged,
    OpportunityLost,
    OpportunityOpened,
    OpportunityOwnerChanged,
    OpportunityReopened,
    OpportunityShared,
    OpportunityStageChanged,
    OpportunityUnshared,
    OpportunityWon,
)


class Opportunity(Aggregate):
    type_name = "opportunity"

    customer_id: UUID
    title: str | None
    amount: Decimal
    currency: str
    expected_close: date | None
    pipeline: str
    stage: str
    probability: int
    owner_id: str
    status: str  # open | won | lost
    loss_reason: str | None
    last_open_stage: str
    #: users (besides the owner) the deal is shared with
    shared_with: list[str] = []  # noqa: RUF012 -- replaced, never mutated

    @classmethod
    def open(
        cls,
        ctx: CommandContext,
        *,
        opportunity_id: UUID,
        customer_id: UUID,
        title: str,
        amount: Decimal,
        currency: str,
        expected_close: date | None,
        pipeline: str,
        owner_id: str,
        stage: str | None = None,
    ) -> Opportunity:
        flow = _pipeline(pipeline)
        if not title.strip():
            raise InvalidValue("title must not be blank", field="title")
        require_money(amount, currency)
        first = flow.stages[0] if stage is None else flow.stage(stage)
        if first is None:
            raise InvalidValue(f"{pipeline} has no stage {stage!r}", field="stage")
        opp = cls.__new__(cls)
        Aggregate.__init__(opp, opportunity_id)
        opp._trigger(
            OpportunityOpened,
            ctx,
            customer_id=customer_id,
            title=title.strip(),
            amount=amount,
            currency=currency,
            expected_close=expected_close,
            pipeline=pipeline,
            stage=first.name,
            probability=first.probability,
            owner_id=owner_id,
        )
        return opp

    def change_stage(self, ctx: CommandContext, to_stage: str) -> None:
        self._check_open()
        flow = _pipeline(self.pipeline)
        target = flow.stage(to_stage)
        if target is None:
            raise InvalidValue(f"{self.pipeline} has no stage {to_stage!r}", field="stage")
        if to_stage == self.stage:
            raise InvalidTransition(f"the deal is already in {to_stage}", field="stage")
        allowed = flow.allowed_moves(self.stage)
        if to_stage not in allowed:
            raise InvalidTransition(
                f"cannot move from {self.stage} to {to_stage}", field="stage", allowed=allowed
            )
        self._trigger(
            OpportunityStageChanged,
            ctx,
            customer_id=self.customer_id,
            from_stage=self.stage,
            to_stage=to_stage,
            probability=target.probability,
        )

    def change_amount(self, ctx: CommandContext, amount: Decimal, currency: str) -> bool:
        self._check_open()
        require_money(amount, currency)
        if amount == self.amount and currency == self.currency:
            return False
        self._trigger(
            OpportunityAmountChanged,
            ctx,
            customer_id=self.customer_id,
            previous_amount=self.amount,
            amount=amount,
            previous_currency=self.currency,
            currency=currency,
        )
        return True

    def change_close_date(self, ctx: CommandContext, expected_close: date | None) -> bool:
        self._check_open()
        if expected_close == self.expected_close:
            return False
        self._trigger(
            OpportunityCloseDateChanged,
            ctx,
            customer_id=self.customer_id,
            previous_expected_close=self.expected_close,
            expected_close=expected_close,
        )
        return True

    def share(self, ctx: CommandContext, user_id: str) -> bool:
        if user_id in self.shared_with or user_id == self.owner_id:
            return False
        self._trigger(OpportunityShared, ctx, customer_id=self.customer_id, user_id=user_id)
        return True

    def unshare(self, ctx: CommandContext, user_id: str) -> bool:
        if user_id not in self.shared_with:
            return False
        self._trigger(OpportunityUnshared, ctx, customer_id=self.customer_id, user_id=user_id)
        return True

    def change_owner(self, ctx: CommandContext, owner_id: str) -> bool:
        self._check_open()
        if owner_id == self.owner_id:
            return False
        self._trigger(
            OpportunityOwnerChanged,
            ctx,
            customer_id=self.customer_id,
            previous_owner_id=self.owner_id,
            owner_id=owner_id,
        )
        return True

    def win(self, ctx: CommandContext) -> None:
        self._check_open()
        self._trigger(
            OpportunityWon,
            ctx,
            customer_id=self.customer_id,
            from_stage=self.stage,
            amount=self.amount,
            currency=self.currency,
        )

    def lose(self, ctx: CommandContext, loss_reason: str) -> None:
        self._check_open()
        if loss_reason not in LOSS_REASONS:
            raise InvalidValue(f"loss reason must be one of {LOSS_REASONS}", field="loss_reason")
        self._trigger(
            OpportunityLost,
            ctx,
            customer_id=self.customer_id,
            from_stage=self.stage,
            loss_reason=loss_reason,
        )

    def reopen(self, ctx: CommandContext, stage: str | None = None) -> None:
        if self.status == "open":
            raise InvalidTransition("only a won or lost deal can be reopened", field="status")
        flow = _pipeline(self.pipeline)
        target = flow.stage(stage or self.last_open_stage)
        if target is None:
            raise InvalidValue(f"{self.pipeline} has no stage {stage!r}", field="stage")
        self._trigger(
            OpportunityReopened,
            ctx,
            customer_id=self.customer_id,
            previous_outcome=self.status,
            stage=target.name,
            probability=target.probability,
        )

    def _check_open(self) -> None:
        if self.status != "open":
            raise InvalidTransition(
                f"the deal is {self.status}; only reopening changes it", field="status"
            )

    @applies(OpportunityOpened)
    def _opened(self, e: OpportunityOpened) -> None:
        self.customer_id = e.customer_id
        self.title = e.title
        self.amount = e.amount
        self.currency = e.currency
        self.expected_close = e.expected_close
        self.pipeline = e.pipeline
        self.stage = e.stage
        self.last_open_stage = e.stage
        self.probability = e.probability
        self.owner_id = e.owner_id
        self.status = "open"
        self.loss_reason = None
        self.shared_with = []

    @applies(OpportunityShared)
    def _shared(self, e: OpportunityShared) -> None:
        self.shared_with = sorted({*self.shared_with, e.user_id})

    @applies(OpportunityUnshared)
    def _unshared(self, e: OpportunityUnshared) -> None:
        self.shared_with = [u for u in self.shared_with if u != e.user_id]

    @applies(OpportunityStageChanged)
    def _stage_changed(self, e: OpportunityStageChanged) -> None:
        self.stage = e.to_stage
        self.last_open_stage = e.to_stage
        self.probability = e.probability

    @applies(OpportunityAmountChanged)
    def _amount_changed(self, e: OpportunityAmountChanged) -> None:
        self.amount = e.amount
        self.currency = e.currency

    @applies(OpportunityCloseDateChanged)
    def _close_date_changed(self, e: OpportunityCloseDateChanged) -> None:
        self.expected_close = e.expected_close

    @applies(OpportunityOwnerChanged)
    def _owner_changed(self, e: OpportunityOwnerChanged) -> None:
        self.owner_id = e.owner_id

    @applies(OpportunityWon)
    def _won(self, e: OpportunityWon) -> None:
        self.status = "won"
        self.stage = "won"
        self.probability = 100

    @applies(OpportunityLost)
    def _lost(self, e: OpportunityLost) -> None:
        self.status = "lost"
        self.stage = "lost"
        self.probability = 0
        self.loss_reason = e.loss_reason

    @applies(OpportunityReopened)
    def _reopened(self, e: OpportunityReopened) -> None:
        self.status = "open"
        self.stage = e.stage
        self.last_open_stage = e.stage
        self.probability = e.probability
        self.loss_reason = None


def _pipeline(name: str) -> Pipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        raise InvalidValue(
            f"no pipeline {name!r}; pipelines: {sorted(PIPELINES)}", field="pipeline"
        ) from None

