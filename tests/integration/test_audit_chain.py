"""The hash chain on a real PostgreSQL: written with every append, signed at intervals
and by count, kept append-only by the database, and linked at start-up only where it
never reached. Every kind of tampering: tests/integration/test_tamper_matrix.py."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from commands import customer as cc
from commands.application import Principal, Request
from crm.cli import app as cli
from events.chain import GENESIS, LinkMeta, checkpoint_message, link_hash, meta_of
from replay.audit import checkpoints, read_heads, verify_chain, write_checkpoint
from replay.signing import key_id

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")


def _fill(system: Any, customers: int = 3) -> None:
    for i in range(customers):
        result = system.commands.execute(
            cc.RegisterCustomer(kind="person", name=f"Person {i}",
                                contacts=[{"kind": "email", "value": f"p{uuid.uuid4().hex}@example.org"}]),
            Request(principal=REP, correlation_id="c"),
        )
        system.commands.execute(
            cc.TagCustomer(tag="vip"), Request(principal=REP, correlation_id="c", target=result.id))
        system.commands.execute(
            cc.ChangeCustomerDetails(industry=f"industry {i}"),
            Request(principal=REP, correlation_id="c", target=result.id, expected_version=2))


def _connect(system: Any) -> Any:
    return system.app.factory.datastore.get_connection


def _verify(system: Any) -> Any:
    return verify_chain(_connect(system), system.audit_key.public_key())


def _first(system: Any) -> tuple[int, str]:
    report = _verify(system)
    assert not report.ok
    return report.findings[0].position, report.findings[0].kind


def _maintenance(db: psycopg.Connection[Any]) -> None:
    """What the table owner (or a superuser) does to change the log anyway."""
    db.execute("SET crm.log_maintenance = on")


def test_links_are_written_with_the_events_and_match_a_recomputation(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    write_checkpoint(_connect(system), system.audit_key)
    _fill(system, 1)
    rows = db.execute(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state,"
        " c.hash, c.subject_id, c.occurred_at, c.recorded_at, c.actor_id, c.checkpoint_at, c.link_version"
        " FROM crm_events e JOIN crm_event_chain c USING (notification_id) ORDER BY notification_id"
    ).fetchall()
    assert len(rows) == 12
    previous = GENESIS
    for nid, oid, version, topic, state, stored, subject, occurred, recorded, actor, at, link_version in rows:
        doc = json.loads(bytes(state))
        meta = LinkMeta(subject, occurred, recorded, actor, at)
        assert meta == meta_of(bytes(state), at)  # the columns are the event's own
        assert occurred.isoformat() == doc["occurred_at"] and recorded.isoformat() == doc["recorded_at"]
        previous = link_hash(previous, nid, oid, version, topic, bytes(state), meta)
        assert bytes(stored) == previous and link_version == 2
        assert actor == "rep-1"
        assert subject == oid  # customer events are about the customer itself
        assert at == (0 if nid <= 9 else 9)  # the newest checkpoint when it was written
    report = _verify(system)
    assert report.ok and report.events == 12 and report.head == 12 and report.signed_to == 9


def test_a_clean_log_passes_with_checkpoints_and_the_cli_exit_status(system: Any, make_system: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(system)
    first = write_checkpoint(_connect(system), system.audit_key)
    _fill(system, 1)
    second = write_checkpoint(_connect(system), system.audit_key)
    assert first is not None and second is not None and second.notification_id == 12
    assert (first.seq, second.seq) == (1, 2)
    assert write_checkpoint(_connect(system), system.audit_key) == second  # head already signed
    assert len(checkpoints(_connect(system))) == 2
    assert _verify(system).ok

    _cli_env(system, monkeypatch)
    out = CliRunner().invoke(cli, ["audit", "verify"])
    assert out.exit_code == 0, out.output
    assert "12 events" in out.output and "2 checkpoints" in out.output and "intact" in out.output


def _cli_env(system: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = system.settings
    monkeypatch.setenv("CRM_DATABASE_URL", system.database_url)
    monkeypatch.setenv("CRM_MASTER_KEY", s.master_key.get_secret_value())
    monkeypatch.setenv("CRM_JWT_SECRET", s.jwt_secret.get_secret_value())
    monkeypatch.setenv("CRM_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("CRM_LOG_LEVEL", "error")
    # In process, the command must not point the test session's logging at the runner's
    # own (soon closed) output streams.
    monkeypatch.setattr("crm.logging.configure", lambda *args, **kwargs: None)


def test_the_log_its_chain_and_its_checkpoints_refuse_update_delete_and_truncate(
        system: Any, db: psycopg.Connection[Any], database_url: str) -> None:
    _fill(system, 1)
    write_checkpoint(_connect(system), system.audit_key)
    for statement in ("UPDATE crm_events SET state = state WHERE notification_id = 1",
                      "DELETE FROM crm_events WHERE notification_id = 3",
                      "TRUNCATE crm_events",
                      "UPDATE crm_event_chain SET actor_id = 'mallory' WHERE notification_id = 2",
                      "DELETE FROM crm_event_chain",
                      "TRUNCATE crm_event_chain",
                      "UPDATE crm_chain_checkpoints SET signed_at = 'x'",
                      "DELETE FROM crm_chain_checkpoints",
                      "TRUNCATE crm_chain_checkpoints CASCADE"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            db.execute(statement)
    # Even a statement that matches no row: the trigger is per statement.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM crm_events WHERE notification_id < 0")
    # An application role that does not own the tables cannot switch it off with the setting.
    role = f"crm_app_{uuid.uuid4().hex[:8]}"
    db.execute(f'CREATE ROLE "{role}"')
    try:
        db.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON crm_events, crm_event_chain,'
                   f' crm_chain_checkpoints TO "{role}"')
        with psycopg.connect(database_url, autocommit=True) as app:
            app.execute(f'SET ROLE "{role}"')
            app.execute("SET crm.log_maintenance = on")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                app.execute("UPDATE crm_event_chain SET actor_id = 'mallory' WHERE notification_id = 2")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                app.execute("DELETE FROM crm_events WHERE notification_id = 3")
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')
    assert db.execute("SELECT count(*) FROM crm_events").fetchone()[0] == 3
    assert db.execute("SELECT actor_id FROM crm_event_chain WHERE notification_id = 2").fetchone()[0] == "rep-1"
    assert _verify(system).ok
    # Appends go on as before.
    _fill(system, 1)
    assert _verify(system).ok


def test_a_log_from_before_the_chain_is_linked_at_start_up(make_system: Any, db: psycopg.Connection[Any]) -> None:
    system = make_system()
    _fill(system)
    _maintenance(db)
    db.execute("TRUNCATE crm_event_chain")  # as a log stored before the chain existed
    assert _first(system) == (1, "event without link")
    restarted = make_system()  # start-up links the backlog
    assert db.execute("SELECT count(*) FROM crm_event_chain WHERE link_version = 2").fetchone()[0] == 9
    assert _verify(restarted).ok
    _fill(restarted, 1)  # appends go on linking after it
    assert _verify(restarted).ok


def test_a_gap_after_the_chain_started_is_never_linked(make_system: Any, db: psycopg.Connection[Any]) -> None:
    system = make_system()
    _fill(system)
    _maintenance(db)
    db.execute("DELETE FROM crm_event_chain WHERE notification_id > 4")
    assert system.app.recorder.link_backlog() == 0
    make_system()  # nor at start-up
    _fill(system, 1)  # nor by an append: it links its own events only
    assert db.execute("SELECT array_agg(notification_id ORDER BY notification_id) FROM crm_event_chain"
                      ).fetchone()[0] == [1, 2, 3, 4, 10, 11, 12]
    report = _verify(system)
    assert [(f.position, f.kind) for f in report.findings] == [(5, "event without link"), (10, "broken link")]
    assert "5 events" in report.findings[0].detail


def test_a_started_chain_in_the_heads_file_stops_relinking_an_emptied_one(
        make_system: Any, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    heads = tmp_path / "heads.jsonl"
    system = make_system(audit_heads_file=heads)
    _fill(system)
    write_checkpoint(_connect(system), system.audit_key, heads_file=heads)
    _maintenance(db)
    db.execute("TRUNCATE crm_event_chain, crm_chain_checkpoints")
    make_system(audit_heads_file=heads)
    assert db.execute("SELECT count(*) FROM crm_event_chain").fetchone()[0] == 0
    make_system()  # a process not told of the heads file links what it finds ...
    report = verify_chain(_connect(system), system.audit_key.public_key(), heads=read_heads(heads))
    # ... and the heads file still finds the log was not the one signed.
    assert not report.ok and (9, "checkpoint missing") in [(f.position, f.kind) for f in report.findings]


def test_an_older_installations_chain_still_verifies_and_goes_on(system: Any, db: psycopg.Connection[Any]) -> None:
    """Version-1 links (no look-up columns covered) and unnumbered checkpoints, as an
    installation from before version 2 stored them, verify; new links follow as version 2."""
    _fill(system)
    rows = db.execute("SELECT notification_id, originator_id, originator_version, topic, state"
                      " FROM crm_events ORDER BY notification_id").fetchall()
    _maintenance(db)
    db.execute("TRUNCATE crm_event_chain")
    previous = GENESIS
    for nid, oid, version, topic, state in rows:
        previous = link_hash(previous, nid, oid, version, topic, bytes(state))
        meta = meta_of(bytes(state))
        db.execute("INSERT INTO crm_event_chain (notification_id, subject_id, occurred_at, recorded_at,"
                   " actor_id, hash, link_version, checkpoint_at) VALUES (%s, %s, %s, %s, %s, %s, 1, 0)",
                   (nid, meta.subject_id, meta.occurred_at, meta.recorded_at, meta.actor_id, previous))
    signed_at = "2026-01-01T00:00:00+00:00"
    key = system.audit_key
    db.execute("INSERT INTO crm_chain_checkpoints (notification_id, hash, signed_at, key_id, signature)"
               " VALUES (9, %s, %s, %s, %s)",
               (previous, signed_at, key_id(key.public_key()), key.sign(checkpoint_message(9, previous, signed_at))))
    assert _verify(system).ok
    _fill(system, 1)
    cp = write_checkpoint(_connect(system), key)
    assert cp is not None and cp.seq == 1 and cp.notification_id == 12
    assert db.execute("SELECT array_agg(link_version ORDER BY notification_id) FROM crm_event_chain"
                      ).fetchone()[0] == [1] * 9 + [2] * 3
    assert _verify(system).ok
    # A version-1 link does not cover its columns; they are checked against the event's own.
    db.execute("UPDATE crm_event_chain SET actor_id = 'mallory' WHERE notification_id = 5")
    assert _first(system) == (5, "look-up columns changed")


def test_a_serving_process_signs_the_head_at_intervals(make_system: Any, tmp_path: Path) -> None:
    heads = tmp_path / "shipped" / "heads.jsonl"
    system = make_system(audit_checkpoint_seconds=0.05, audit_checkpoint_events=0, audit_heads_file=heads)
    _fill(system, 1)
    system.start_checkpoints()
    deadline = time.monotonic() + 10
    while not checkpoints(_connect(system)):
        assert time.monotonic() < deadline, "no checkpoint was signed"
        time.sleep(0.05)
    assert checkpoints(_connect(system))[-1].notification_id == 3
    assert read_heads(heads) == checkpoints(_connect(system))
    assert _verify(system).ok


def test_a_serving_process_signs_the_head_by_count(make_system: Any, tmp_path: Path, database_url: str) -> None:
    heads = tmp_path / "heads.jsonl"
    system = make_system(audit_checkpoint_seconds=3600, audit_checkpoint_events=6, audit_heads_file=heads)
    system.start_checkpoints()
    _fill(system, 1)
    time.sleep(0.3)
    assert checkpoints(_connect(system)) == []  # 3 events: not yet
    _fill(system, 1)  # 6
    deadline = time.monotonic() + 10
    while not checkpoints(_connect(system)):
        assert time.monotonic() < deadline, "no checkpoint after 6 events"
        time.sleep(0.05)
    assert checkpoints(_connect(system))[-1].notification_id == 6
    _fill(system, 1)
    system.close()  # signs the head as it leaves
    signed = checkpoints(lambda: psycopg.connect(database_url))
    assert [(c.seq, c.notification_id) for c in signed] == [(1, 6), (2, 9)]
    assert read_heads(heads) == signed


def test_erasing_a_customer_breaks_no_link(system: Any) -> None:
    _fill(system, 2)
    write_checkpoint(_connect(system), system.audit_key)
    first = system.app.recorder.select_notifications(start=1, limit=1)[0].originator_id
    assert system.app.keys.destroy(first)
    assert _verify(system).ok
