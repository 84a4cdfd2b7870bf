"""The demo data: deterministic, through the commands, covering every stage and state."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from aggregates import AGGREGATE_TYPES
from commands.clock import FixedClock
from crm.bootstrap import email_key
from crm.demo import DemoLoader

pytestmark = pytest.mark.postgres


def _load(system: Any, customers: int) -> int:
    clock = FixedClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    return DemoLoader(system.app, email_key(system.settings), clock, customers=customers).load()


def _records(db: psycopg.Connection[Any], system: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {t: [] for t in AGGREGATE_TYPES}
    rows = db.execute("SELECT DISTINCT originator_id FROM crm_events").fetchall()
    for (aggregate_id,) in rows:
        aggregate = system.app.load_any(aggregate_id)
        out[aggregate.type_name].append(aggregate)
    return out


def test_demo_covers_every_stage_and_state(system: Any, db: psycopg.Connection[Any]) -> None:
    sent = _load(system, customers=60)
    assert db.execute("SELECT count(*) FROM crm_events").fetchone()[0] == sent
    records = _records(db, system)
    assert len(records["customer"]) == 60
    opportunities = records["opportunity"]
    statuses = Counter(o.status for o in opportunities)
    assert statuses["won"] and statuses["lost"] and statuses["open"]
    open_stages = {(o.pipeline, o.stage) for o in opportunities if o.status == "open"}
    assert {s for p, s in open_stages if p == "default"} >= {"qualification", "needs_analysis", "proposal", "negotiation"}
    sr_states = {s.status for s in records["service_request"]}
    assert sr_states == {"open", "in_progress", "waiting_on_customer", "resolved", "closed", "reopened"}
    assert any(s.rating is not None for s in records["service_request"])
    assert {t.status for t in records["task"]} == {"open", "completed", "cancelled"}
    assert records["interaction"]
    assert any(c.purchases for c in records["customer"])


def test_demo_is_deterministic(make_system: Any, db: psycopg.Connection[Any]) -> None:
    first = make_system()
    _load(first, customers=15)
    ids_first = [r[0] for r in db.execute(
        "SELECT originator_id FROM crm_events ORDER BY notification_id").fetchall()]
    db.execute("TRUNCATE crm_events, crm_email_reservations, crm_idempotency, crm_subject_keys")
    second = make_system()
    _load(second, customers=15)
    ids_second = [r[0] for r in db.execute(
        "SELECT originator_id FROM crm_events ORDER BY notification_id").fetchall()]
    assert ids_first == ids_second and len(ids_first) > 100
