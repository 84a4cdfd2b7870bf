"""The command path's record cache on a real PostgreSQL: two systems on one database
stand for two processes, each with its own cache. A record cached by one and changed
by the other is never written over: the append finds its version taken, and the
command is decided again on the record rebuilt from the log."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import psycopg
import pytest
from pydantic import BaseModel

from aggregates import Customer
from aggregates.errors import InvalidTransition
from commands import Forbidden
from commands import customer as cc
from commands.application import Principal, Request, WriteResult
from commands.errors import ConcurrencyConflict

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")


def _register(system: Any) -> WriteResult:
    result: WriteResult = system.commands.execute(
        cc.RegisterCustomer(kind="company", name="Cached Ltd",
                            contacts=[cc.ContactIn(kind="email", value=f"c{uuid.uuid4().hex}@example.org")]),
        Request(principal=REP, correlation_id="c"))
    return result


def _details(system: Any, target: UUID, version: int | None, **changes: Any) -> WriteResult:
    result: WriteResult = system.commands.execute(
        cc.ChangeCustomerDetails(**changes),
        Request(principal=REP, correlation_id="c", target=target, expected_version=version))
    return result


def _tag(system: Any, target: UUID, tag: str) -> WriteResult:
    result: WriteResult = system.commands.execute(
        cc.TagCustomer(tag=tag), Request(principal=REP, correlation_id="c", target=target))
    return result


def _versions(db: psycopg.Connection[Any], target: UUID) -> list[int]:
    return [r[0] for r in db.execute(
        "SELECT originator_version FROM crm_events WHERE originator_id = %s ORDER BY 1",
        (target,)).fetchall()]


def test_the_next_command_on_a_record_takes_it_from_the_cache(system: Any) -> None:
    created = _register(system)
    cache = system.commands.cache
    hits = cache.hits
    _details(system, created.id, created.version, industry="retail")
    _tag(system, created.id, "vip")
    assert cache.hits == hits + 2
    record = system.app.load(type(cache.take(created.id)), created.id)
    assert record.industry == "retail" and "vip" in record.tags and record.version == 3


def test_a_record_changed_by_another_process_is_not_written_over(
        make_system: Any, db: psycopg.Connection[Any]) -> None:
    one, other = make_system(), make_system()
    created = _register(one)
    _tag(one, created.id, "first")  # cached by `one` at version 2
    _tag(other, created.id, "second")  # version 3, unseen by `one`'s cache
    # No If-Match: decided again on the fresh record and stored after version 3.
    third = _tag(one, created.id, "third")
    assert third.version == 4 and _versions(db, created.id) == [1, 2, 3, 4]
    tags = one.app.load(type(one.commands.cache.take(created.id)), created.id).tags
    assert {"first", "second", "third"} <= set(tags)


def test_if_match_is_compared_with_the_log_not_with_a_cached_copy(
        make_system: Any, db: psycopg.Connection[Any]) -> None:
    one, other = make_system(), make_system()
    created = _register(one)
    _tag(one, created.id, "first")  # `one` caches version 2
    changed = _details(other, created.id, 2, industry="energy")  # version 3
    # The caller read version 3 (from the read model): `one`'s cached copy is behind,
    # yet the change is accepted as based on the current record.
    done = _details(one, created.id, changed.version, industry="mining")
    assert done.version == 4
    # A caller that based its change on version 2 gets the conflict, with the truth.
    with pytest.raises(ConcurrencyConflict) as conflict:
        _details(one, created.id, 2, industry="farming")
    assert conflict.value.current_version == 4
    assert _versions(db, created.id) == [1, 2, 3, 4]


def test_a_refusal_based_on_a_stale_copy_is_decided_again(make_system: Any) -> None:
    one, other = make_system(), make_system()
    created = _register(one)
    _tag(one, created.id, "first")  # cached by `one`, owned by rep-1
    other.commands.execute(cc.ReassignCustomerOwner(owner_id="rep-2"), Request(
        principal=REP, correlation_id="c", target=created.id, expected_version=2))

    def only_rep_2s(record: Any, created: bool) -> None:
        if record.owner_id != "rep-2":
            raise Forbidden("not yours")

    # rep-2 may change it now; `one`'s copy still says rep-1, and would refuse.
    done = one.commands.execute(cc.TagCustomer(tag="second"), Request(
        principal=Principal("rep-2", "sales_rep"), correlation_id="c", target=created.id,
        guard=only_rep_2s))
    assert done.version == 4


def test_an_append_that_does_not_follow_on_from_the_log_is_refused(
        system: Any, db: psycopg.Connection[Any]) -> None:
    created = _register(system)
    _tag(system, created.id, "first")  # cached at version 2
    # The log loses the record's later events (e.g. restored from an earlier backup).
    db.execute("SET crm.log_maintenance = on")  # the log is append-only otherwise
    db.execute("DELETE FROM crm_event_chain WHERE notification_id IN"
               " (SELECT notification_id FROM crm_events WHERE originator_id = %s"
               "  AND originator_version = 2)", (created.id,))
    db.execute("DELETE FROM crm_events WHERE originator_id = %s AND originator_version = 2",
               (created.id,))
    # The cached copy at version 2 would append version 3 after a gap: refused, and
    # the command is decided again on the record as the log has it.
    again = _tag(system, created.id, "second")
    assert again.version == 2 and _versions(db, created.id) == [1, 2]


def test_a_failed_command_leaves_nothing_half_changed_in_the_cache(system: Any) -> None:
    created = _register(system)
    _tag(system, created.id, "first")
    with pytest.raises(ConcurrencyConflict):
        _details(system, created.id, 1, industry="retail")  # stale If-Match
    after = _tag(system, created.id, "second")
    assert after.version == 3
    record = system.app.load(type(system.commands.cache.take(created.id)), created.id)
    assert record.industry is None


def test_with_no_cache_every_command_rebuilds_its_records(make_system: Any) -> None:
    system = make_system(command_cache_size=0)
    assert system.commands.cache is None
    created = _register(system)
    assert _details(system, created.id, 1, industry="retail").version == 2
    assert _tag(system, created.id, "vip").version == 3


class _Probe(BaseModel):
    """A command whose handler reads the target and then fails as told."""

    fail_with: str


def _probing(system: Any, target: UUID, failures: dict[bool, Exception]) -> list[bool]:
    """Install the probe's handler; the list it returns says, per decision, whether the
    record came from the cache. ``failures[cached]`` is raised after the read."""
    decisions: list[bool] = []

    def handler(command: _Probe, uow: Any, ctx: Any) -> Any:
        uow.get(Customer, target)
        decisions.append(bool(uow.cached))
        raise failures[bool(uow.cached)]

    # this system's own map: the command map is shared by every system of the process
    system.commands.handlers = {**system.commands.handlers, _Probe: handler}
    return decisions


def test_only_a_rules_refusal_on_a_cached_record_is_decided_again(system: Any) -> None:
    created = _register(system)
    _tag(system, created.id, "first")  # cached
    decisions = _probing(system, created.id, {True: InvalidTransition("stale"), False: Forbidden("fresh")})
    with pytest.raises(Forbidden, match="fresh"):
        system.commands.execute(_Probe(fail_with="rule"), Request(
            principal=REP, correlation_id="c", target=created.id))
    assert decisions == [True, False]


def test_a_fault_on_a_cached_record_is_raised_at_once(system: Any) -> None:
    created = _register(system)
    _tag(system, created.id, "first")  # cached
    decisions = _probing(system, created.id, {True: KeyError("fault"), False: Forbidden("fresh")})
    with pytest.raises(KeyError, match="fault"):
        system.commands.execute(_Probe(fail_with="fault"), Request(
            principal=REP, correlation_id="c", target=created.id))
    assert decisions == [True]
