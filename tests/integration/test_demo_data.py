"""The demo data: deterministic, through the commands, covering every stage and state."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from aggregates import AGGREGATE_TYPES, Team, User
from aggregates.user import user_id
from commands.identity import check_password
from commands.clock import FixedClock
from crm.bootstrap import email_key
from crm.demo import DEMO_PASSWORD, DEMO_USERS, DemoLoader

pytestmark = pytest.mark.postgres


def _load(system: Any, customers: int) -> int:
    clock = FixedClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    return DemoLoader(system.app, email_key(system.settings), clock, customers=customers).load()


def _records(db: psycopg.Connection[Any], system: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {t: [] for t in AGGREGATE_TYPES}
    rows = db.execute("SELECT DISTINCT originator_id FROM crm_events").fetchall()
    for (aggregate_id,) in rows:
        try:
            aggregate = system.app.load_any(aggregate_id)
        except KeyError:  # users and teams: see test_demo_people
            continue
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


def test_demo_people_sign_in_and_own_the_records(system: Any, db: psycopg.Connection[Any]) -> None:
    _load(system, customers=10)
    records = _records(db, system)
    rep, rep2 = str(user_id("rep")), str(user_id("rep2"))
    owners = Counter(c.owner_id for c in records["customer"])
    assert set(owners) == {rep, rep2} and owners[rep] == owners[rep2] == 5
    assert {o.owner_id for o in records["opportunity"]} <= {rep, rep2}
    for username, role, team, _name in DEMO_USERS:
        user = check_password(system.app, username, DEMO_PASSWORD)
        assert user is not None and user.role == role, username
        assert (user.team_id is None) == (team is None)
    manager = system.app.load(User, user_id("manager"))
    north = system.app.load(Team, manager.team_id)
    assert north.name == "Team North" and north.manager_id == manager.id
    assert system.app.load(User, user_id("rep")).team_id == north.id
    assert system.app.load(User, user_id("rep2")).team_id != north.id
    assert check_password(system.app, "rep", "wrong-password") is None


def test_demo_is_deterministic(make_system: Any, db: psycopg.Connection[Any]) -> None:
    first = make_system()
    _load(first, customers=15)
    ids_first = [r[0] for r in db.execute(
        "SELECT originator_id FROM crm_events ORDER BY notification_id").fetchall()]
    db.execute("SET crm.log_maintenance = on")  # the log is append-only otherwise
    db.execute("TRUNCATE crm_events, crm_event_chain, crm_chain_checkpoints, crm_email_reservations,"
               " crm_idempotency, crm_subject_keys")
    second = make_system()
    _load(second, customers=15)
    ids_second = [r[0] for r in db.execute(
        "SELECT originator_id FROM crm_events ORDER BY notification_id").fetchall()]
    assert ids_first == ids_second and len(ids_first) > 100
