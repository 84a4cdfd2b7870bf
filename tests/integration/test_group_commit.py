"""Group commit on a real PostgreSQL: concurrent commands are appended together in one
transaction, each with its own checks and its own answer; the log stays gap-free and
chained, and a failing transaction stores nothing of any command."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import PersistenceError

from aggregates.errors import Duplicate
from commands import customer as cc
from commands.application import Principal, Request, WriteResult
from commands.errors import ConcurrencyConflict
from replay.audit import verify_chain

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")


def _register(system: Any, email: str | None = None, key: str | None = None) -> WriteResult:
    contacts = [{"kind": "email", "value": email or f"p{uuid.uuid4().hex}@example.org"}]
    result: WriteResult = system.commands.execute(
        cc.RegisterCustomer(kind="person", name="Person", contacts=contacts),
        Request(principal=REP, correlation_id="c", idempotency_key=key))
    return result


def _change(system: Any, target: UUID, version: int | None, industry: str,
            key: str | None = None) -> WriteResult:
    command: Any = (cc.ChangeCustomerDetails(industry=industry) if version is not None
                    else cc.TagCustomer(tag=industry))
    result: WriteResult = system.commands.execute(command, Request(
        principal=REP, correlation_id="c", target=target, expected_version=version,
        idempotency_key=key))
    return result


def _positions(db: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in db.execute("SELECT notification_id FROM crm_events ORDER BY 1").fetchall()]


def _assert_log_intact(system: Any, db: psycopg.Connection[Any]) -> None:
    positions = _positions(db)
    assert positions == list(range(1, len(positions) + 1))
    report = verify_chain(system.app.factory.datastore.get_connection, system.audit_key.public_key())
    assert report.ok and report.events == len(positions)


def _run_all(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads started together; each one's result or exception."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@contextmanager
def _held_events_lock(database_url: str) -> Iterator[None]:
    """The events table's write lock, held by another session until the block ends."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE crm_events IN EXCLUSIVE MODE")
        yield
        conn.rollback()


def _grouped(system: Any, database_url: str, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls so that all but the first wait behind it and form one group."""
    committer = system.app.recorder.committer
    results: list[Any] = [None] * len(calls)

    def work(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as e:
            results[i] = e

    with _held_events_lock(database_url):
        first = threading.Thread(target=work, args=(0,))
        first.start()
        deadline = time.monotonic() + 30
        while committer.groups == 0 and time.monotonic() < deadline:  # the first leads
            time.sleep(0.01)
        rest = [threading.Thread(target=work, args=(i,)) for i in range(1, len(calls))]
        for t in rest:
            t.start()
        while committer.queued() < len(rest) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert committer.queued() == len(rest)
    for t in [first, *rest]:
        t.join(60)
    assert committer.largest == len(rest)
    return results


@pytest.fixture
def grouping_system(make_system: Callable[..., Any]) -> Any:
    return make_system(db_pool_size=24)


def test_concurrent_writers_each_get_their_own_answer_and_each_success_is_stored_once(
        grouping_system: Any, db: psycopg.Connection[Any]) -> None:
    system = grouping_system
    shared = _register(system)
    # 8 threads on distinct new customers, 8 on one customer at the same version.
    calls: list[Callable[[], Any]] = [lambda: _register(system) for _ in range(8)]
    calls += [lambda i=i: _change(system, shared.id, 1, f"industry {i}") for i in range(8)]
    results = _run_all(calls)
    created = [r for r in results[:8] if isinstance(r, WriteResult)]
    assert len(created) == 8
    changes = results[8:]
    won = [r for r in changes if isinstance(r, WriteResult)]
    lost = [r for r in changes if isinstance(r, ConcurrencyConflict)]
    assert len(won) == 1 and len(lost) == 7, changes
    stored = db.execute("SELECT originator_id, count(*) FROM crm_events GROUP BY 1").fetchall()
    assert dict(stored) == {shared.id: 2, **{r.id: 1 for r in created}}
    # every position answered is the stored one
    for r in [*created, *won]:
        assert system.app.recorder.position_of(r.id, r.version) == r.position
    industry = system.app.load(type(system.app.load_any(shared.id)), shared.id)
    assert industry.version == 2
    _assert_log_intact(system, db)


def test_many_threads_and_many_rounds_keep_the_log_gap_free(
        grouping_system: Any, db: psycopg.Connection[Any]) -> None:
    system = grouping_system
    targets = [_register(system).id for _ in range(4)]
    outcomes: dict[str, int] = {"ok": 0, "conflict": 0}
    lock = threading.Lock()

    def writer(n: int) -> None:
        for round_ in range(15):
            target = targets[(n + round_) % len(targets)]
            current = system.app.load_any(target).version
            try:
                _change(system, target, current, f"i{n}-{round_}")
                kind = "ok"
            except ConcurrencyConflict:
                kind = "conflict"
            with lock:
                outcomes[kind] += 1

    _run_all([lambda n=n: writer(n) for n in range(12)])
    assert outcomes["ok"] + outcomes["conflict"] == 12 * 15
    stored = db.execute("SELECT count(*) FROM crm_events").fetchone()
    assert stored is not None and stored[0] == 4 + outcomes["ok"]
    versions = db.execute(
        "SELECT originator_id, array_agg(originator_version ORDER BY originator_version)"
        " FROM crm_events GROUP BY 1").fetchall()
    for _, vs in versions:
        assert vs == list(range(1, len(vs) + 1))
    _assert_log_intact(system, db)


def test_one_group_same_version_one_wins_and_the_others_go_on(
        grouping_system: Any, db: psycopg.Connection[Any], database_url: str) -> None:
    system = grouping_system
    shared = _register(system)
    taken = f"taken{uuid.uuid4().hex}@example.org"
    again = f"again{uuid.uuid4().hex}@example.org"
    calls: list[Callable[[], Any]] = [
        lambda: _register(system),  # leads alone, behind the held lock
        lambda: _change(system, shared.id, 1, "first"),
        lambda: _register(system),
        lambda: _change(system, shared.id, 1, "second"),
        lambda: _register(system, email=taken),
        lambda: _register(system, email=taken),  # same address later in the same group
        lambda: _register(system, email=again, key="k-1"),
        lambda: _register(system, email=again, key="k-1"),  # same Idempotency-Key: the first's answer
    ]
    results = _grouped(system, database_url, calls)
    # (the queue's order among the waiting threads is not their start order)
    assert isinstance(results[0], WriteResult) and isinstance(results[2], WriteResult)
    changes = sorted([results[1], results[3]], key=lambda r: isinstance(r, ConcurrencyConflict))
    assert isinstance(changes[0], WriteResult) and changes[0].version == 2
    assert isinstance(changes[1], ConcurrencyConflict)
    winner = "first" if changes[0] is results[1] else "second"
    same_address = sorted([results[4], results[5]], key=lambda r: isinstance(r, Duplicate))
    assert isinstance(same_address[0], WriteResult) and isinstance(same_address[1], Duplicate)
    same_key = sorted([results[6], results[7]], key=lambda r: r.replayed)
    assert not same_key[0].replayed and same_key[1].replayed
    assert same_key[1].id == same_key[0].id and same_key[1].position == same_key[0].position
    events = db.execute("SELECT count(*) FROM crm_events").fetchone()
    assert events is not None and events[0] == 1 + 5  # shared + five stored commands
    stored = db.execute("SELECT count(*) FROM crm_email_reservations").fetchone()
    assert stored is not None and stored[0] == 1 + 4
    assert db.execute("SELECT count(*) FROM crm_idempotency").fetchone() == (1,)
    loaded = system.app.load_any(shared.id)
    assert loaded.version == 2 and loaded.industry == winner  # type: ignore[attr-defined]
    _assert_log_intact(system, db)


def test_a_failing_group_transaction_stores_nothing_of_the_failing_command(
        grouping_system: Any, db: psycopg.Connection[Any], database_url: str) -> None:
    system = grouping_system
    # A real error inside the transaction, after the events are inserted: the
    # Idempotency-Key "boom" cannot be stored.
    db.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.key = 'boom' THEN RAISE EXCEPTION 'injected failure'; END IF;"
        " RETURN NEW; END $$")
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON crm_idempotency"
               " FOR EACH ROW EXECUTE FUNCTION boom()")
    try:
        calls: list[Callable[[], Any]] = [lambda: _register(system)]
        calls += [lambda: _register(system, key="fine-1"), lambda: _register(system, key="boom"),
                  lambda: _register(system, key="fine-2"), lambda: _register(system)]
        results = _grouped(system, database_url, calls)
    finally:
        db.execute("DROP TRIGGER boom ON crm_idempotency")
        db.execute("DROP FUNCTION boom()")
    assert isinstance(results[2], PersistenceError) and "injected failure" in str(results[2])
    assert all(isinstance(r, WriteResult) for i, r in enumerate(results) if i != 2), results
    assert db.execute("SELECT count(*) FROM crm_events").fetchone() == (4,)
    assert db.execute("SELECT count(*) FROM crm_email_reservations").fetchone() == (4,)
    assert db.execute("SELECT count(*) FROM crm_subject_keys").fetchone() == (4,)
    assert db.execute("SELECT key FROM crm_idempotency ORDER BY 1").fetchall() == [
        ("fine-1",), ("fine-2",)]
    _register(system)  # writes go on, right after the last stored position
    _assert_log_intact(system, db)


def test_when_every_transaction_fails_nothing_is_stored_and_writes_resume_without_a_gap(
        grouping_system: Any, db: psycopg.Connection[Any], database_url: str) -> None:
    system = grouping_system
    _register(system)
    db.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'injected failure'; END $$")
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON crm_event_chain"
               " FOR EACH ROW EXECUTE FUNCTION boom()")
    try:
        results = _grouped(system, database_url, [lambda: _register(system) for _ in range(5)])
    finally:
        db.execute("DROP TRIGGER boom ON crm_event_chain")
        db.execute("DROP FUNCTION boom()")
    assert all(isinstance(r, PersistenceError) for r in results), results
    assert db.execute("SELECT count(*) FROM crm_events").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM crm_email_reservations").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM crm_subject_keys").fetchone() == (1,)
    _register(system)
    assert _positions(db) == [1, 2]
    _assert_log_intact(system, db)
