"""The hash chain on a real PostgreSQL: written with every append, and every kind of
tampering found by `crm audit verify` with its position."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from commands import customer as cc
from commands.application import Principal, Request
from crm.cli import app as cli
from events.chain import GENESIS, link_hash
from replay.audit import checkpoints, verify_chain, write_checkpoint

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


def test_links_are_written_with_the_events_and_match_a_recomputation(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    rows = db.execute(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state,"
        " c.hash, c.subject_id, c.actor_id FROM crm_events e"
        " JOIN crm_event_chain c USING (notification_id) ORDER BY notification_id"
    ).fetchall()
    assert len(rows) == 9
    previous = GENESIS
    for nid, oid, version, topic, state, stored, subject, actor in rows:
        previous = link_hash(previous, nid, oid, version, topic, bytes(state))
        assert bytes(stored) == previous
        assert actor == "rep-1"
        assert subject == oid  # customer events are about the customer itself
    report = _verify(system)
    assert report.ok and report.events == 9 and report.head == rows[-1][0]


def test_a_clean_log_passes_with_checkpoints_and_the_cli_exit_status(system: Any, make_system: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(system)
    first = write_checkpoint(_connect(system), system.audit_key)
    _fill(system, 1)
    second = write_checkpoint(_connect(system), system.audit_key)
    assert first is not None and second is not None and second.notification_id == 12
    assert write_checkpoint(_connect(system), system.audit_key) == second  # head already signed
    assert len(checkpoints(_connect(system))) == 2
    assert _verify(system).ok

    _cli_env(system, monkeypatch)
    out = CliRunner().invoke(cli, ["audit", "verify"])
    assert out.exit_code == 0, out.output
    assert "12 events" in out.output and "intact" in out.output


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


def _first(system: Any) -> tuple[int, str]:
    report = _verify(system)
    assert not report.ok
    return report.findings[0].position, report.findings[0].kind


def test_a_changed_byte_is_found_at_its_position(system: Any, db: psycopg.Connection[Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(system)
    # One byte of the clear part of event 5 (its industry) changes.
    db.execute("UPDATE crm_events SET state = overlay(state placing 'X'::bytea"
               " from position('industry 1'::bytea in state) for 1) WHERE notification_id = 6")
    assert _first(system) == (6, "broken link")
    assert len(_verify(system).findings) == 1  # the links after it still hold

    _cli_env(system, monkeypatch)
    out = CliRunner().invoke(cli, ["audit", "verify"])
    assert out.exit_code == 1
    assert "FIRST BROKEN AT POSITION 6" in out.output


def test_a_changed_byte_in_sealed_personal_data_is_found(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    state = bytes(db.execute("SELECT state FROM crm_events WHERE notification_id = 4").fetchone()[0])
    i = state.index(b'"ciphertext":"') + 20
    changed = state[:i] + bytes([state[i] ^ 1]) + state[i + 1:]
    db.execute("UPDATE crm_events SET state = %s WHERE notification_id = 4", (changed,))
    assert _first(system) == (4, "broken link")


def test_a_deleted_event_is_found(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    db.execute("DELETE FROM crm_events WHERE notification_id = 5")
    assert _first(system) == (5, "event missing")
    # Deleting its link too leaves the next link broken.
    db.execute("DELETE FROM crm_event_chain WHERE notification_id = 5")
    assert _first(system) == (6, "broken link")


def test_a_deleted_last_event_is_found_by_the_checkpoint(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    write_checkpoint(_connect(system), system.audit_key)
    db.execute("DELETE FROM crm_events WHERE notification_id = 9")
    db.execute("DELETE FROM crm_event_chain WHERE notification_id = 9")
    assert _first(system) == (9, "checkpointed event missing")


def test_a_reordered_pair_is_found(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    db.execute("UPDATE crm_events SET notification_id = -1 WHERE notification_id = 3")
    db.execute("UPDATE crm_events SET notification_id = 3 WHERE notification_id = 7")
    db.execute("UPDATE crm_events SET notification_id = 7 WHERE notification_id = -1")
    report = _verify(system)
    assert [(f.position, f.kind) for f in report.findings] == [(3, "broken link"), (7, "broken link")]


def _forge(db: psycopg.Connection[Any], position: int, copy_of: int) -> None:
    db.execute(
        "INSERT INTO crm_events (notification_id, originator_id, originator_version, topic, state)"
        " SELECT %s, gen_random_uuid(), 1, topic, state FROM crm_events WHERE notification_id = %s",
        (position, copy_of),
    )


def test_an_inserted_event_is_found(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    db.execute("SELECT setval('crm_events_notification_id_seq', 20)")  # a gap: 10..20
    _fill(system, 1)
    _forge(db, 15, 1)
    assert _first(system) == (15, "event without link")


def test_an_inserted_event_with_forged_links_is_found_by_the_checkpoint(
        system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    _fill(system, 1)
    # A gap in the log (appends never leave one; a log may have one from earlier times):
    # the last customer's events move to positions 21-23 and are linked there.
    db.execute("DELETE FROM crm_event_chain WHERE notification_id > 9")
    db.execute("UPDATE crm_events SET notification_id = notification_id + 11 WHERE notification_id > 9")
    assert system.app.recorder.link_backlog() == 3
    assert _verify(system).ok
    write_checkpoint(_connect(system), system.audit_key)
    _forge(db, 15, 1)
    # The forger relinks every event from there on; only the signed head can tell.
    rows = db.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM crm_events"
        " ORDER BY notification_id").fetchall()
    previous = GENESIS
    db.execute("DELETE FROM crm_event_chain")
    for nid, oid, version, topic, state in rows:
        previous = link_hash(previous, nid, oid, version, topic, bytes(state))
        db.execute("INSERT INTO crm_event_chain (notification_id, hash) VALUES (%s, %s)", (nid, previous))
    assert _first(system) == (23, "checkpoint mismatch")


def test_a_forged_checkpoint_signature_is_found(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    write_checkpoint(_connect(system), system.audit_key)
    db.execute("UPDATE crm_chain_checkpoints SET signed_at = signed_at || ' '")
    assert _first(system) == (9, "bad checkpoint signature")


def test_events_stored_without_links_are_linked_by_the_backlog(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    db.execute("DELETE FROM crm_event_chain WHERE notification_id > 4")
    assert _first(system) == (5, "event without link")
    assert system.app.recorder.link_backlog(batch=2) == 5
    assert _verify(system).ok
    _fill(system, 1)  # appends go on linking after the backlog
    assert _verify(system).ok


def test_an_append_links_a_backlog_before_its_own_events(system: Any, db: psycopg.Connection[Any]) -> None:
    _fill(system)
    db.execute("DELETE FROM crm_event_chain WHERE notification_id > 2")
    _fill(system, 1)
    assert _verify(system).ok
    assert db.execute("SELECT count(*) FROM crm_event_chain").fetchone()[0] == 12


def test_a_serving_process_signs_the_head_at_intervals(make_system: Any) -> None:
    system = make_system(audit_checkpoint_seconds=0.05)
    _fill(system, 1)
    system.start_checkpoints()
    deadline = time.monotonic() + 10
    while not checkpoints(_connect(system)):
        assert time.monotonic() < deadline, "no checkpoint was signed"
        time.sleep(0.05)
    assert checkpoints(_connect(system))[-1].notification_id == 3
    assert _verify(system).ok


def test_erasing_a_customer_breaks_no_link(system: Any) -> None:
    _fill(system, 2)
    write_checkpoint(_connect(system), system.audit_key)
    first = system.app.recorder.select_notifications(start=1, limit=1)[0].originator_id
    assert system.app.keys.destroy(first)
    assert _verify(system).ok
