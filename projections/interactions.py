"""The interaction timeline: one row per logged call, e-mail, meeting, note, SMS or
chat, newest first per customer (by when it happened, not when it was logged)."""

from __future__ import annotations

from events import interaction as ie
from projections.base import BatchView, From, Projection, Table

INTERACTIONS = Table(
    "interactions",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "customer_id": "uuid NOT NULL",
        "channel": "text NOT NULL",
        "direction": "text NOT NULL",
        "subject": "text",  # subject, body, participants: None once erased
        "body": "text",
        "participants": "text[]",
        "duration_minutes": "int",
        "opportunity_id": "uuid",
        "service_request_id": "uuid",
        "occurred_at": "timestamptz NOT NULL",
        "recorded_at": "timestamptz NOT NULL",
        "actor_id": "text NOT NULL",
    },
    key="id",
    indexes=("customer_id, occurred_at DESC",),
    subject="customer_id",
    sources={c: (From(ie.InteractionLogged, c),) for c in ("subject", "body", "participants")},
)


class InteractionTimeline(Projection):
    name = "interactions"
    version = 1
    tables = (INTERACTIONS,)


@InteractionTimeline.handles(ie.InteractionLogged)
def _logged(view: BatchView, e: ie.InteractionLogged) -> None:
    # The row is the event alone (interactions never change): applying it again writes
    # the same row, so nothing needs to be read first.
    view.put("interactions", {
        "id": e.originator_id,
        "version": e.originator_version,
        "customer_id": e.customer_id,
        "channel": e.channel,
        "direction": e.direction,
        "subject": e.subject,
        "body": e.body,
        "participants": list(e.participants) if e.participants is not None else None,
        "duration_minutes": e.duration_minutes,
        "opportunity_id": e.opportunity_id,
        "service_request_id": e.service_request_id,
        "occurred_at": e.meta.occurred_at,
        "recorded_at": e.meta.recorded_at,
        "actor_id": e.meta.actor.id,
    })
