"""Interaction: when one is logged, then InteractionLogged (or a refusal)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest

from aggregates.errors import InvalidValue
from aggregates.interaction import Interaction
from events.interaction import InteractionLogged

IID = UUID("00000000-0000-4000-8000-0000000000b1")
CID = UUID("00000000-0000-4000-8000-00000000c001")
OID = UUID("00000000-0000-4000-8000-0000000000a1")
SRID = UUID("00000000-0000-4000-8000-0000000000d1")
CALLED_AT = datetime(2024, 4, 29, 16, 45, tzinfo=UTC)


def log_args(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "interaction_id": IID,
        "customer_id": CID,
        "channel": "call",
        "direction": "outbound",
        "subject": "Pricing follow-up",
        "body": "Discussed volume discount.",
        "participants": ["u1", "ada@example.com"],
    }
    args.update(overrides)
    return args


def test_log_emits_interaction_logged(ctx, emitted):
    it = Interaction.log(
        ctx(occurred_at=CALLED_AT),
        **log_args(subject="  Pricing follow-up ", duration_minutes=25, opportunity_id=OID,
                   service_request_id=SRID),
    )
    assert emitted(it) == [
        (
            InteractionLogged,
            {
                "customer_id": CID,
                "channel": "call",
                "direction": "outbound",
                "subject": "Pricing follow-up",
                "body": "Discussed volume discount.",
                "participants": ("u1", "ada@example.com"),
                "duration_minutes": 25,
                "opportunity_id": OID,
                "service_request_id": SRID,
            },
        )
    ]
    assert (it.id, it.version, it.occurred_at, it.participants) == (
        IID, 1, CALLED_AT, ["u1", "ada@example.com"]
    )


def test_logged_interaction_is_sealed_with_the_customers_key(ctx):
    it = Interaction.log(ctx(), **log_args())
    [e] = it.collect_events()
    assert e.subject_id() == CID
    assert e.meta.occurred_at == e.meta.recorded_at


@pytest.mark.parametrize(
    ("channel", "direction", "duration"),
    [
        ("call", "inbound", 5),
        ("meeting", "internal", 60),
        ("email", "inbound", None),
        ("note", "internal", None),
        ("sms", "outbound", None),
        ("chat", "inbound", None),
    ],
)
def test_log_accepts_each_channel(ctx, channel, direction, duration):
    it = Interaction.log(ctx(), **log_args(channel=channel, direction=direction,
                                            duration_minutes=duration))
    [e] = it.collect_events()
    assert (e.channel, e.direction, e.duration_minutes) == (channel, direction, duration)


@pytest.mark.parametrize(
    ("subject", "body"), [("", "Only a body"), ("Only a subject", "   ")]
)
def test_log_needs_only_a_subject_or_a_body(ctx, subject, body):
    it = Interaction.log(ctx(), **log_args(subject=subject, body=body))
    [e] = it.collect_events()
    assert (e.subject, e.body) == (subject.strip(), body)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"channel": "fax"}, "channel"),
        ({"direction": "sideways"}, "direction"),
        ({"channel": "note", "direction": "outbound"}, "direction"),
        ({"channel": "note", "direction": "inbound"}, "direction"),
        ({"subject": "  ", "body": " \n "}, "subject"),
        ({"channel": "email", "direction": "inbound", "duration_minutes": 5},
         "duration_minutes"),
        ({"channel": "note", "direction": "internal", "duration_minutes": 0},
         "duration_minutes"),
    ],
)
def test_log_refuses(ctx, refused, overrides, field):
    with refused(InvalidValue, field):
        Interaction.log(ctx(), **log_args(**overrides))


def test_past_interaction_with_erased_personal_fields_rebuilds(event, given):
    it = given(
        Interaction,
        event(InteractionLogged, IID, customer_id=CID, channel="email", direction="inbound",
              subject=None, body=None, participants=None, duration_minutes=None,
              opportunity_id=None, service_request_id=None),
    )
    assert (it.subject, it.body, it.participants, it.channel) == (None, None, None, "email")
