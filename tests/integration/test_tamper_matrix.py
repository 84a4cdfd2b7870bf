"""Every kind of tampering with the stored log, done as a database superuser would do it
(past the append-only trigger), found by `crm audit verify`: exit status 1 and the first
broken position named.

The log of each case: five customers, three events each (positions 1-15), checkpoints
signed at 9, 12 and 15 (in the database and in the heads file)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from commands import customer as cc
from commands.application import Principal, Request
from crm.cli import app as cli
from events.chain import LinkMeta, checkpoint_message, link_hash
from replay.state import Replayer
from tests.integration.test_audit_chain import _cli_env
from replay.timeline import TimelineQuery, timeline

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")


@dataclass
class Log:
    system: Any
    db: psycopg.Connection[Any]
    heads: Path
    make_system: Callable[..., Any]

    def customer(self, position: int) -> uuid.UUID:
        row = self.db.execute("SELECT originator_id FROM crm_events WHERE notification_id = %s",
                              (position,)).fetchone()
        assert row is not None
        return uuid.UUID(str(row[0]))


def _customer(system: Any, i: int) -> None:
    result = system.commands.execute(
        cc.RegisterCustomer(kind="person", name=f"Person {i}",
                            contacts=[{"kind": "email", "value": f"p{uuid.uuid4().hex}@example.org"}]),
        Request(principal=REP, correlation_id="c"))
    system.commands.execute(cc.TagCustomer(tag="vip"), Request(principal=REP, correlation_id="c", target=result.id))
    system.commands.execute(cc.ChangeCustomerDetails(industry=f"industry {i}"),
                            Request(principal=REP, correlation_id="c", target=result.id, expected_version=2))


def _sign(log: Log) -> None:
    from replay.audit import write_checkpoint

    write_checkpoint(log.system.app.factory.datastore.get_connection, log.system.audit_key,
                     heads_file=log.heads)


def _relink(db: psycopg.Connection[Any], after: int) -> None:
    """What a forger does after changing events: every link after ``after`` recomputed
    (version 2, the stored columns kept), so the chain holds together again."""
    row = db.execute("SELECT hash FROM crm_event_chain WHERE notification_id = %s", (after,)).fetchone()
    previous = bytes(row[0])
    rows = db.execute(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state, c.subject_id,"
        " c.occurred_at, c.recorded_at, c.actor_id, c.checkpoint_at FROM crm_events e"
        " JOIN crm_event_chain c USING (notification_id) WHERE notification_id > %s ORDER BY 1",
        (after,)).fetchall()
    for nid, oid, version, topic, state, subject, occurred, recorded, actor, at in rows:
        previous = link_hash(previous, nid, oid, version, topic, bytes(state),
                             LinkMeta(subject, occurred, recorded, actor, at))
        db.execute("UPDATE crm_event_chain SET hash = %s WHERE notification_id = %s", (previous, nid))


def _flip(db: psycopg.Connection[Any], position: int, marker: bytes, offset: int = 0) -> None:
    state = bytes(db.execute("SELECT state FROM crm_events WHERE notification_id = %s", (position,)).fetchone()[0])
    i = state.index(marker) + len(marker) + offset
    db.execute("UPDATE crm_events SET state = %s WHERE notification_id = %s",
               (state[:i] + bytes([state[i] ^ 1]) + state[i + 1:], position))


# -- the cases: each tampers, and says where the first finding must be -----------------------
def flipped_byte_in_clear_data(log: Log) -> None:
    _flip(log.db, 6, b'"after":"industry ')


def flipped_byte_in_sealed_data(log: Log) -> None:
    _flip(log.db, 4, b'"ciphertext":"', 6)


def deleted_event(log: Log) -> None:
    log.db.execute("DELETE FROM crm_events WHERE notification_id = 5")


def deleted_event_and_its_link(log: Log) -> None:
    log.db.execute("DELETE FROM crm_events WHERE notification_id = 5")
    log.db.execute("DELETE FROM crm_event_chain WHERE notification_id = 5")


def deleted_last_event_and_its_link(log: Log) -> None:
    log.db.execute("DELETE FROM crm_events WHERE notification_id = 15")
    log.db.execute("DELETE FROM crm_event_chain WHERE notification_id = 15")


def swapped_payloads(log: Log) -> None:
    log.db.execute("UPDATE crm_events SET state = CASE notification_id WHEN 3 THEN"
                   " (SELECT state FROM crm_events WHERE notification_id = 7) ELSE"
                   " (SELECT state FROM crm_events WHERE notification_id = 3) END"
                   " WHERE notification_id IN (3, 7)")


def inserted_event(log: Log) -> None:
    log.db.execute("INSERT INTO crm_events (notification_id, originator_id, originator_version, topic, state)"
                   " SELECT 16, gen_random_uuid(), 1, topic, state FROM crm_events WHERE notification_id = 1")


def changed_chain_hash(log: Log) -> None:
    log.db.execute("UPDATE crm_event_chain SET hash = sha256(hash) WHERE notification_id = 5")


def chain_subject(log: Log) -> None:
    other = log.customer(1)
    before = [i["position"] for i in _timeline(log, other)]
    log.db.execute("UPDATE crm_event_chain SET subject_id = %s WHERE notification_id = 5", (other,))
    # What this does to what auditors read: customer 2's tag now shows in customer 1's timeline.
    assert [i["position"] for i in _timeline(log, other)] == [*before, 5]


def chain_actor(log: Log) -> None:
    # This one by switching the trigger off, as a superuser (or the tables' owner) can.
    log.db.execute("ALTER TABLE crm_event_chain DISABLE TRIGGER crm_append_only")
    log.db.execute("UPDATE crm_event_chain SET actor_id = 'mallory' WHERE notification_id = 5")
    log.db.execute("ALTER TABLE crm_event_chain ENABLE TRIGGER crm_append_only")
    found = timeline(Replayer(log.system.app.factory.datastore.get_connection, log.system.app.codec),
                     log.customer(5), TimelineQuery(actor="mallory")).items
    assert [i["position"] for i in found] == [5]


def chain_business_time(log: Log) -> None:
    log.db.execute("UPDATE crm_event_chain SET occurred_at = occurred_at - interval '400 days'"
                   " WHERE notification_id = 5")


def chain_recording_time(log: Log) -> None:
    log.db.execute("UPDATE crm_event_chain SET recorded_at = recorded_at + %s WHERE notification_id = 5",
                   (timedelta(days=3),))


def deleted_checkpoints(log: Log) -> None:
    log.db.execute("DELETE FROM crm_chain_checkpoints")


def deleted_middle_checkpoint(log: Log) -> None:
    log.db.execute("DELETE FROM crm_chain_checkpoints WHERE notification_id = 12")


def deleted_checkpoint_and_the_links_recording_it_rewritten(log: Log) -> None:
    log.db.execute("DELETE FROM crm_chain_checkpoints WHERE notification_id = 12")
    log.db.execute("UPDATE crm_event_chain SET checkpoint_at = 9 WHERE notification_id > 12")
    _relink(log.db, 12)  # found by the numbers: 1, 3 (and the checkpoint at 15 no longer matches)


def reordered_checkpoints(log: Log) -> None:
    # The first and the second checkpoint change places (each now names the other's position).
    log.db.execute("UPDATE crm_chain_checkpoints SET notification_id = 21 - notification_id"
                   " WHERE notification_id IN (9, 12)")


def rewrite_after_deleted_checkpoints(log: Log) -> None:
    log.db.execute("DELETE FROM crm_chain_checkpoints")
    _flip(log.db, 10, b'"kind":"')  # a value of the record at 10 changes ...
    log.db.execute("DELETE FROM crm_event_chain WHERE notification_id >= 10")  # ... and its links go
    restarted = log.make_system()  # a process starting finds a gap: never linked over
    assert restarted.app.recorder.link_backlog() == 0
    assert log.db.execute("SELECT max(notification_id) FROM crm_event_chain").fetchone()[0] == 9


def truncated_past_a_checkpoint(log: Log) -> None:
    log.db.execute("DELETE FROM crm_events WHERE notification_id >= 11")
    log.db.execute("DELETE FROM crm_event_chain WHERE notification_id >= 11")


def forged_checkpoint_signature(log: Log) -> None:
    log.db.execute("UPDATE crm_chain_checkpoints SET signed_at = signed_at || ' ' WHERE notification_id = 9")


def checkpoint_signed_by_another_key(log: Log) -> None:
    # A rewritten chain re-signed with a key of the forger's own.
    _flip(log.db, 14, b'"tag":"')
    _relink(log.db, 13)
    row = log.db.execute("SELECT hash, signed_at FROM crm_chain_checkpoints WHERE notification_id = 15").fetchone()
    link = bytes(log.db.execute("SELECT hash FROM crm_event_chain WHERE notification_id = 15").fetchone()[0])
    forged = Ed25519PrivateKey.generate().sign(checkpoint_message(15, link, row[1], 3))
    log.db.execute("UPDATE crm_chain_checkpoints SET hash = %s, signature = %s WHERE notification_id = 15",
                   (link, forged))


def tail_rewrite_caught_by_the_heads_file(log: Log) -> None:
    # The unsigned tail as the database shows it once the last checkpoint is gone: a
    # changed event with its links recomputed holds together in the database alone.
    _flip(log.db, 14, b'"tag":"')
    _relink(log.db, 13)
    log.db.execute("DELETE FROM crm_chain_checkpoints WHERE notification_id = 15")


def rewrite_from_genesis_caught_by_the_heads_file(log: Log) -> None:
    _flip(log.db, 5, b'"tag":"')
    log.db.execute("TRUNCATE crm_event_chain, crm_chain_checkpoints")
    log.make_system()  # a process not told of the heads file links the emptied chain anew


@dataclass(frozen=True)
class Case:
    tamper: Callable[[Log], None]
    position: int
    kind: str
    #: the database alone cannot tell (the heads file must be given)
    needs_heads: bool = False


CASES = {c.tamper.__name__: c for c in [
    Case(flipped_byte_in_clear_data, 6, "broken link"),
    Case(flipped_byte_in_sealed_data, 4, "broken link"),
    Case(deleted_event, 5, "event missing"),
    Case(deleted_event_and_its_link, 6, "broken link"),
    Case(deleted_last_event_and_its_link, 15, "log truncated"),
    Case(swapped_payloads, 3, "broken link"),
    Case(inserted_event, 16, "event without link"),
    Case(changed_chain_hash, 5, "broken link"),
    Case(chain_subject, 5, "broken link"),
    Case(chain_actor, 5, "broken link"),
    Case(chain_business_time, 5, "broken link"),
    Case(chain_recording_time, 5, "broken link"),
    Case(deleted_checkpoints, 9, "checkpoint missing"),
    Case(deleted_middle_checkpoint, 12, "checkpoint missing"),
    Case(deleted_checkpoint_and_the_links_recording_it_rewritten, 10, "checkpoint missing"),
    Case(reordered_checkpoints, 9, "bad checkpoint signature"),
    Case(rewrite_after_deleted_checkpoints, 10, "event without link"),
    Case(truncated_past_a_checkpoint, 11, "log truncated"),
    Case(forged_checkpoint_signature, 9, "bad checkpoint signature"),
    Case(checkpoint_signed_by_another_key, 15, "bad checkpoint signature"),
    Case(tail_rewrite_caught_by_the_heads_file, 15, "checkpoint missing", needs_heads=True),
    Case(rewrite_from_genesis_caught_by_the_heads_file, 9, "checkpoint missing", needs_heads=True),
]}


def _timeline(log: Log, customer: uuid.UUID) -> list[dict[str, Any]]:
    replayer = Replayer(log.system.app.factory.datastore.get_connection, log.system.app.codec)
    return timeline(replayer, customer, TimelineQuery()).items


def _verify(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(cli, ["audit", "verify", *args])
    return out.exit_code, out.output


@pytest.fixture
def log(make_system: Any, db: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Log:
    heads = tmp_path / "heads.jsonl"
    system = make_system()
    built = Log(system, db, heads, make_system)
    for i in range(3):
        _customer(system, i)
    _sign(built)
    _customer(system, 3)
    _sign(built)
    _customer(system, 4)
    _sign(built)
    _cli_env(system, monkeypatch)
    assert _verify("--heads", str(heads))[0] == 0
    # The attacker: a superuser session, past the append-only trigger.
    db.execute("SET crm.log_maintenance = on")
    return built


@pytest.mark.parametrize("name", list(CASES))
def test_tampering_is_found_at_its_first_position(log: Log, name: str) -> None:
    case = CASES[name]
    case.tamper(log)
    if case.needs_heads:
        # The database alone holds together: only the heads kept elsewhere can tell.
        status, output = _verify()
        assert status == 0, output
    status, output = _verify("--heads", str(log.heads)) if case.needs_heads else _verify()
    assert status == 1, output
    first = re.search(r"FIRST BROKEN AT POSITION (\d+): (.+)", output)
    assert first is not None, output
    assert (int(first.group(1)), first.group(2).strip()) == (case.position, case.kind), output
    if not case.needs_heads:  # the heads file finds it as well
        assert _verify("--heads", str(log.heads))[0] == 1


def test_the_matrix_holds_every_required_case() -> None:
    assert len(CASES) >= 15
