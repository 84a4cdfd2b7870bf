"""Opportunity: given past events, when a command, then new events or a refusal."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from uuid import UUID

import pytest

from aggregates.errors import InvalidTransition, InvalidValue
from aggregates.opportunity import Opportunity
from events.opportunity import (
    OpportunityAmountChanged,
    OpportunityCloseDateChanged,
    OpportunityLost,
    OpportunityOpened,
    OpportunityOwnerChanged,
    OpportunityReopened,
    OpportunityStageChanged,
    OpportunityWon,
)

OID = UUID("00000000-0000-4000-8000-0000000000a1")
CID = UUID("00000000-0000-4000-8000-00000000c001")
CLOSE = date(2024, 6, 30)

#: The default pipeline, written out here so a change to it is noticed.
DEFAULT_STAGES = [("qualification", 10), ("needs_analysis", 25), ("proposal", 50),
                  ("negotiation", 75)]
PROBABILITY = dict(DEFAULT_STAGES)
LOSS_REASONS = ["price", "competitor", "no_budget", "no_decision", "timing", "product_fit",
                "other"]


def opened(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "customer_id": CID,
        "title": "50 seats",
        "amount": Decimal("12000.00"),
        "currency": "EUR",
        "expected_close": CLOSE,
        "pipeline": "default",
        "stage": "qualification",
        "probability": 10,
        "owner_id": "u1",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def deal(event, given):
    """deal(stage="qualification", outcome=None): an open, won or lost deal."""

    def make(stage: str = "qualification", outcome: str | None = None) -> Opportunity:
        events = [event(OpportunityOpened, OID, **opened())]
        if stage != "qualification":
            events.append(event(OpportunityStageChanged, OID, customer_id=CID,
                                from_stage="qualification", to_stage=stage,
                                probability=PROBABILITY[stage]))
        if outcome == "won":
            events.append(event(OpportunityWon, OID, customer_id=CID, from_stage=stage,
                                amount=Decimal("12000.00"), currency="EUR"))
        elif outcome == "lost":
            events.append(event(OpportunityLost, OID, customer_id=CID, from_stage=stage,
                                loss_reason="price"))
        return given(Opportunity, *events)

    return make


def open_args(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "opportunity_id": OID,
        "customer_id": CID,
        "title": "50 seats",
        "amount": Decimal("12000.00"),
        "currency": "EUR",
        "expected_close": CLOSE,
        "pipeline": "default",
        "owner_id": "u1",
    }
    args.update(overrides)
    return args


# -- open ----------------------------------------------------------------------------


def test_open_emits_opportunity_opened_in_the_first_stage(ctx, emitted):
    opp = Opportunity.open(ctx(), **open_args(title="  50 seats "))
    assert emitted(opp) == [(OpportunityOpened, opened())]
    assert (opp.status, opp.stage, opp.probability, opp.loss_reason) == (
        "open", "qualification", 10, None
    )


def test_open_event_is_about_the_customer(ctx):
    opp = Opportunity.open(ctx(), **open_args())
    [e] = opp.collect_events()
    assert (e.originator_id, e.originator_version, e.subject_id()) == (OID, 1, CID)


@pytest.mark.parametrize(
    ("pipeline", "stage", "expected"),
    [
        ("default", "proposal", ("proposal", 50)),
        ("default", "negotiation", ("negotiation", 75)),
        ("renewal", None, ("review", 40)),
        ("renewal", "commitment", ("commitment", 90)),
    ],
)
def test_open_in_a_chosen_pipeline_and_stage(ctx, pipeline, stage, expected):
    opp = Opportunity.open(ctx(), **open_args(pipeline=pipeline, stage=stage))
    [e] = opp.collect_events()
    assert (e.pipeline, e.stage, e.probability) == (pipeline, *expected)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("1500", "JPY"), ("12.345", "KWD"), ("0", "USD"), ("12.5", "EUR")],
)
def test_open_accepts_amounts_in_the_currency_minor_units(ctx, amount, currency):
    opp = Opportunity.open(ctx(), **open_args(amount=Decimal(amount), currency=currency,
                                              expected_close=None))
    [e] = opp.collect_events()
    assert (e.amount, e.currency, e.expected_close) == (Decimal(amount), currency, None)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"pipeline": "enterprise"}, "pipeline"),
        ({"title": "  "}, "title"),
        ({"currency": "EURO"}, "currency"),
        ({"amount": Decimal("1500.5"), "currency": "JPY"}, "amount"),
        ({"amount": Decimal("1.2345"), "currency": "KWD"}, "amount"),
        ({"amount": Decimal("10.001"), "currency": "EUR"}, "amount"),
        ({"amount": Decimal("-1")}, "amount"),
        ({"amount": Decimal("1e15")}, "amount"),
        ({"stage": "won"}, "stage"),
        ({"stage": "review"}, "stage"),
    ],
)
def test_open_refuses(ctx, refused, overrides, field):
    with refused(InvalidValue, field):
        Opportunity.open(ctx(), **open_args(**overrides))


# -- change_stage --------------------------------------------------------------------

STAGE_NAMES = [name for name, _ in DEFAULT_STAGES]


def _allowed(from_stage: str, to_stage: str) -> bool:
    """Forward any number of stages, or back exactly one."""
    i, j = STAGE_NAMES.index(from_stage), STAGE_NAMES.index(to_stage)
    return j > i or j == i - 1


@pytest.mark.parametrize("to_stage", STAGE_NAMES)
@pytest.mark.parametrize("from_stage", STAGE_NAMES)
def test_stage_moves_forward_any_or_back_one(deal, ctx, refused, emitted, from_stage,
                                             to_stage):
    opp = deal(from_stage)
    if _allowed(from_stage, to_stage):
        opp.change_stage(ctx(), to_stage)
        assert emitted(opp) == [
            (OpportunityStageChanged,
             {"customer_id": CID, "from_stage": from_stage, "to_stage": to_stage,
              "probability": PROBABILITY[to_stage]})
        ]
        assert (opp.stage, opp.probability) == (to_stage, PROBABILITY[to_stage])
    else:
        with refused(InvalidTransition, "stage", opp):
            opp.change_stage(ctx(), to_stage)


def test_stage_refusal_lists_the_allowed_moves(deal, ctx, refused):
    opp = deal("proposal")
    with refused(InvalidTransition, "stage", opp) as err:
        opp.change_stage(ctx(), "qualification")
    assert err.value.extra["allowed"] == ["needs_analysis", "negotiation"]


@pytest.mark.parametrize("to_stage", ["won", "lost", "review", "closing"])
def test_stage_change_to_an_unknown_stage_is_invalid(deal, ctx, refused, to_stage):
    opp = deal()
    with refused(InvalidValue, "stage", opp):
        opp.change_stage(ctx(), to_stage)


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_closed_deal_refuses_a_stage_change(deal, ctx, refused, outcome):
    opp = deal("proposal", outcome)
    with refused(InvalidTransition, "status", opp):
        opp.change_stage(ctx(), "negotiation")


# -- amount, close date, owner -------------------------------------------------------


def test_change_amount_emits_amount_changed(deal, ctx, emitted):
    opp = deal()
    assert opp.change_amount(ctx(), Decimal("15000"), "EUR") is True
    assert opp.change_amount(ctx(), Decimal("2000000"), "JPY") is True
    assert emitted(opp) == [
        (OpportunityAmountChanged,
         {"customer_id": CID, "previous_amount": Decimal("12000.00"), "amount": Decimal("15000"),
          "previous_currency": "EUR", "currency": "EUR"}),
        (OpportunityAmountChanged,
         {"customer_id": CID, "previous_amount": Decimal("15000"),
          "amount": Decimal("2000000"), "previous_currency": "EUR", "currency": "JPY"}),
    ]
    assert (opp.amount, opp.currency) == (Decimal("2000000"), "JPY")


def test_change_amount_to_the_same_money_is_a_no_op(deal, ctx):
    opp = deal()
    assert opp.change_amount(ctx(), Decimal("12000"), "EUR") is False
    assert opp.collect_events() == []


def test_change_amount_to_the_same_number_in_another_currency_is_a_change(deal, ctx, emitted):
    opp = deal()
    assert opp.change_amount(ctx(), Decimal("12000.00"), "USD") is True
    [(cls, payload)] = emitted(opp)
    assert (cls, payload["previous_currency"], payload["currency"]) == (
        OpportunityAmountChanged, "EUR", "USD"
    )


@pytest.mark.parametrize(
    ("amount", "currency", "field"),
    [("10", "ABC", "currency"), ("10.5", "JPY", "amount"), ("0.0001", "KWD", "amount"),
     ("-5", "EUR", "amount"), ("NaN", "EUR", "amount")],
)
def test_change_amount_refuses_invalid_money(deal, ctx, refused, amount, currency, field):
    opp = deal()
    with refused(InvalidValue, field, opp):
        opp.change_amount(ctx(), Decimal(amount), currency)


def test_change_close_date_emits_close_date_changed(deal, ctx, emitted):
    opp = deal()
    assert opp.change_close_date(ctx(), date(2024, 9, 30)) is True
    assert opp.change_close_date(ctx(), None) is True
    assert emitted(opp) == [
        (OpportunityCloseDateChanged,
         {"customer_id": CID, "previous_expected_close": CLOSE,
          "expected_close": date(2024, 9, 30)}),
        (OpportunityCloseDateChanged,
         {"customer_id": CID, "previous_expected_close": date(2024, 9, 30),
          "expected_close": None}),
    ]
    assert opp.expected_close is None


def test_change_close_date_to_the_same_date_is_a_no_op(deal, ctx):
    opp = deal()
    assert opp.change_close_date(ctx(), date(2024, 6, 30)) is False
    assert opp.collect_events() == []


def test_change_owner_emits_owner_changed(deal, ctx, emitted):
    opp = deal()
    assert opp.change_owner(ctx(), "u2") is True
    assert emitted(opp) == [
        (OpportunityOwnerChanged, {"customer_id": CID, "previous_owner_id": "u1",
                                   "owner_id": "u2"})
    ]
    assert opp.owner_id == "u2"


def test_change_owner_to_the_current_owner_is_a_no_op(deal, ctx):
    opp = deal()
    assert opp.change_owner(ctx(), "u1") is False
    assert opp.collect_events() == []


@pytest.mark.parametrize("outcome", ["won", "lost"])
@pytest.mark.parametrize(
    "command",
    [
        lambda opp, c: opp.change_amount(c, Decimal("1"), "EUR"),
        lambda opp, c: opp.change_amount(c, Decimal("12000.00"), "EUR"),
        lambda opp, c: opp.change_close_date(c, date(2025, 1, 1)),
        lambda opp, c: opp.change_close_date(c, CLOSE),
        lambda opp, c: opp.change_owner(c, "u2"),
        lambda opp, c: opp.change_owner(c, "u1"),
        lambda opp, c: opp.win(c),
        lambda opp, c: opp.lose(c, "price"),
        lambda opp, c: opp.lose(c, "not-a-reason"),
    ],
    ids=["amount", "same-amount", "close-date", "same-close-date", "owner", "same-owner", "win",
         "lose", "lose-bad-reason"],
)
def test_won_or_lost_deal_cannot_change_except_by_reopening(deal, ctx, refused, outcome,
                                                            command):
    opp = deal("negotiation", outcome)
    with refused(InvalidTransition, "status", opp):
        command(opp, ctx())


# -- win, lose, reopen ---------------------------------------------------------------


def test_win_emits_opportunity_won_with_the_deal_value(deal, ctx, emitted):
    opp = deal("negotiation")
    opp.win(ctx())
    assert emitted(opp) == [
        (OpportunityWon, {"customer_id": CID, "from_stage": "negotiation",
                          "amount": Decimal("12000.00"), "currency": "EUR"})
    ]
    assert (opp.status, opp.stage, opp.probability) == ("won", "won", 100)


@pytest.mark.parametrize("reason", LOSS_REASONS)
def test_lose_emits_opportunity_lost_with_a_listed_reason(deal, ctx, emitted, reason):
    opp = deal("proposal")
    opp.lose(ctx(), reason)
    assert emitted(opp) == [
        (OpportunityLost, {"customer_id": CID, "from_stage": "proposal", "loss_reason": reason})
    ]
    assert (opp.status, opp.stage, opp.probability, opp.loss_reason) == (
        "lost", "lost", 0, reason
    )


@pytest.mark.parametrize("reason", ["", "Price", "budget", "too expensive"])
def test_lose_refuses_a_reason_not_in_the_list(deal, ctx, refused, reason):
    opp = deal()
    with refused(InvalidValue, "loss_reason", opp):
        opp.lose(ctx(), reason)


def test_reopen_of_an_open_deal_is_refused(deal, ctx, refused):
    opp = deal()
    with refused(InvalidTransition, "status", opp):
        opp.reopen(ctx())


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_reopen_returns_to_the_last_open_stage(deal, ctx, emitted, outcome):
    opp = deal("proposal", outcome)
    opp.reopen(ctx())
    assert emitted(opp) == [
        (OpportunityReopened, {"customer_id": CID, "previous_outcome": outcome,
                               "stage": "proposal", "probability": 50})
    ]
    assert (opp.status, opp.stage, opp.probability, opp.loss_reason) == (
        "open", "proposal", 50, None
    )


def test_reopen_into_a_chosen_stage_then_changes_are_allowed_again(deal, ctx, emitted):
    opp = deal("negotiation", "lost")
    opp.reopen(ctx(), "qualification")
    opp.change_stage(ctx(), "needs_analysis")
    opp.change_owner(ctx(), "u3")
    assert emitted(opp) == [
        (OpportunityReopened, {"customer_id": CID, "previous_outcome": "lost",
                               "stage": "qualification", "probability": 10}),
        (OpportunityStageChanged, {"customer_id": CID, "from_stage": "qualification",
                                   "to_stage": "needs_analysis", "probability": 25}),
        (OpportunityOwnerChanged, {"customer_id": CID, "previous_owner_id": "u1",
                                   "owner_id": "u3"}),
    ]
    assert opp.version == 6


def test_reopen_into_an_unknown_stage_is_invalid(deal, ctx, refused):
    opp = deal("proposal", "won")
    with refused(InvalidValue, "stage", opp):
        opp.reopen(ctx(), "review")


def test_past_events_of_a_whole_deal_rebuild_its_state(event, given):
    opp = given(
        Opportunity,
        event(OpportunityOpened, OID, **opened(pipeline="renewal", stage="review",
                                               probability=40)),
        event(OpportunityAmountChanged, OID, customer_id=CID, previous_amount=Decimal("12000"),
              amount=Decimal("9000"), previous_currency="EUR", currency="USD"),
        event(OpportunityCloseDateChanged, OID, customer_id=CID, previous_expected_close=CLOSE,
              expected_close=date(2024, 12, 31)),
        event(OpportunityOwnerChanged, OID, customer_id=CID, previous_owner_id="u1",
              owner_id="u2"),
        event(OpportunityStageChanged, OID, customer_id=CID, from_stage="review",
              to_stage="offer", probability=70),
        event(OpportunityLost, OID, customer_id=CID, from_stage="offer", loss_reason="timing"),
        event(OpportunityReopened, OID, customer_id=CID, previous_outcome="lost",
              stage="offer", probability=70),
        event(OpportunityWon, OID, customer_id=CID, from_stage="offer",
              amount=Decimal("9000"), currency="USD"),
    )
    assert (opp.version, opp.status, opp.stage, opp.probability) == (8, "won", "won", 100)
    assert (opp.amount, opp.currency, opp.expected_close, opp.owner_id) == (
        Decimal("9000"), "USD", date(2024, 12, 31), "u2"
    )
    assert (opp.pipeline, opp.last_open_stage, opp.loss_reason) == ("renewal", "offer", None)
