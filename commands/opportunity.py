"""Opportunity commands and their handlers."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import Field, model_validator

from aggregates.base import CommandContext
from aggregates.customer import Customer
from aggregates.errors import PersonalDataErased
from aggregates.opportunity import Opportunity
from aggregates.pipeline import LOSS_REASONS
from commands.application import UnitOfWork
from commands.base import Command, Currency, Date, Slug, UserId


class OpenOpportunity(Command):
    customer_id: UUID
    title: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(ge=0, max_digits=18, decimal_places=4)
    currency: Currency
    expected_close: Date | None = None
    pipeline: Slug = "default"
    stage: Slug | None = Field(default=None, description="Defaults to the pipeline's first stage.")
    owner_id: UserId | None = Field(default=None, description="Defaults to the caller.")


class ChangeOpportunityStage(Command):
    requires_version = True
    stage: Slug


class UpdateOpportunity(Command):
    """Amount (with currency), expected close date and owner; only what is sent."""

    requires_version = True
    amount: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=4)
    currency: Currency | None = None
    expected_close: Date | None = None
    owner_id: UserId | None = None

    @model_validator(mode="after")
    def _something(self) -> UpdateOpportunity:
        sent = self.model_fields_set - {"occurred_at", "reason"}
        if not sent:
            raise ValueError("send at least one field to change")
        if ("amount" in sent) != ("currency" in sent):
            raise ValueError("amount and currency go together")
        return self


class ShareOpportunity(Command):
    """Share with a user (besides the owner): they can see and change the deal."""

    user_id: UserId


class UnshareOpportunity(Command):
    user_id: UserId


class WinOpportunity(Command):
    requires_version = True


class LoseOpportunity(Command):
    requires_version = True
    loss_reason: Literal[LOSS_REASONS]  # type: ignore[valid-type]


class ReopenOpportunity(Command):
    requires_version = True
    stage: Slug | None = None
    reason: str = Field(min_length=1, max_length=1000)


def open_opportunity(cmd: OpenOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    customer = uow.get_reference(Customer, cmd.customer_id, "customer_id")
    if customer.personal_data_erased:
        raise PersonalDataErased("this customer's personal data was erased", field="customer_id")
    opp = Opportunity.open(
        ctx,
        opportunity_id=ctx.new_id(),
        customer_id=customer.id,
        title=cmd.title,
        amount=cmd.amount,
        currency=cmd.currency,
        expected_close=cmd.expected_close,
        pipeline=cmd.pipeline,
        stage=cmd.stage,
        owner_id=cmd.owner_id or customer.owner_id,
    )
    uow.add(opp)
    return opp


def _opportunity(uow: UnitOfWork) -> Opportunity:
    assert uow.request.target is not None
    return uow.get(Opportunity, uow.request.target)


def change_stage(cmd: ChangeOpportunityStage, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    opp.change_stage(ctx, cmd.stage)
    return opp


def update_opportunity(cmd: UpdateOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    sent = cmd.model_fields_set
    if "amount" in sent:
        assert cmd.amount is not None and cmd.currency is not None
        opp.change_amount(ctx, cmd.amount, cmd.currency)
    if "expected_close" in sent:
        opp.change_close_date(ctx, cmd.expected_close)
    if "owner_id" in sent and cmd.owner_id is not None:
        opp.change_owner(ctx, cmd.owner_id)
    return opp


def share(cmd: ShareOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    opp.share(ctx, cmd.user_id)
    return opp


def unshare(cmd: UnshareOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    opp.unshare(ctx, cmd.user_id)
    return opp


def win(cmd: WinOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    opp.win(ctx)
    return opp


def lose(cmd: LoseOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    opp.lose(ctx, cmd.loss_reason)
    return opp


def reopen(cmd: ReopenOpportunity, uow: UnitOfWork, ctx: CommandContext) -> Opportunity:
    opp = _opportunity(uow)
    opp.reopen(ctx, cmd.stage)
    return opp


HANDLERS = {
    OpenOpportunity: open_opportunity,
    ChangeOpportunityStage: change_stage,
    UpdateOpportunity: update_opportunity,
    ShareOpportunity: share,
    UnshareOpportunity: unshare,
    WinOpportunity: win,
    LoseOpportunity: lose,
    ReopenOpportunity: reopen,
}
