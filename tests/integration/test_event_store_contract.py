"""One contract for both event stores: the in-memory one the unit tests use and the
PostgreSQL one on the test database admit and refuse the same appends, rule by rule
(``eventstore.admission``), with the same errors, and a refused append leaves nothing of
itself behind (no event, reservation, Idempotency-Key answer or credential)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from aggregates import Task
from aggregates.base import CommandContext
from eventstore.admission import EmailTaken, IdempotencyKeyTaken
from commands.application import CrmApplication
from eventstore.recorder import IdempotencyRecord, WriteExtras
from events.base import Actor
from events.keys import SubjectKeyDestroyed

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEK = b"k" * 32


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def app(request: pytest.FixtureRequest) -> Iterator[CrmApplication]:
    env: dict[str, str] = request.getfixturevalue("pg_env") if request.param == "postgres" else {}
    application = CrmApplication(env, kek=KEK)
    yield application
    application.close()


def _ctx() -> CommandContext:
    return CommandContext(actor=Actor("u1", "sales_rep"), recorded_at=NOW, occurred_at=NOW,
                          correlation_id="corr", causation_id="cause", command_id=uuid.uuid4(),
                          new_id=uuid.uuid4, reason=None)


def _new_task() -> Task:
    return Task.create(_ctx(), task_id=uuid.uuid4(), title="call back", description="",
                       due_at=None, assignee_id="rep-1", customer_id=None,
                       related_type=None, related_id=None)


def _stored(app: CrmApplication, task: Task) -> list[StoredEvent]:
    return [app.mapper.to_stored_event(e) for e in task.collect_events()]


def _append(app: CrmApplication, events: list[StoredEvent], **extras: Any) -> list[int]:
    ids = app.recorder.insert_events(events, extras=WriteExtras(**extras))
    return list(ids or [])


def _head(app: CrmApplication) -> int:
    return app.recorder.max_notification_id() or 0


def _created(app: CrmApplication) -> Task:
    task = _new_task()
    _append(app, _stored(app, task))
    return task


def _reassigned(app: CrmApplication, task_id: UUID, *assignees: str) -> list[StoredEvent]:
    copy = app.load(Task, task_id)
    for assignee in assignees:
        copy.reassign(_ctx(), assignee)
    return _stored(app, copy)


def _idempotency(key: str, fingerprint: str = "fp-1") -> IdempotencyRecord:
    return IdempotencyRecord("rep-1", key, fingerprint, 201, {"id": "x"})


def _refused_leaves_nothing(app: CrmApplication, head: int, *, key: str, email: bytes,
                            owner: UUID | None) -> None:
    assert _head(app) == head
    assert app.recorder.idempotency_record("rep-1", key) is None  # type: ignore[attr-defined]
    assert app.recorder.email_owner(email) == owner  # type: ignore[attr-defined]


# -- rule 1: versions ------------------------------------------------------------------
def test_a_version_stored_already_is_refused(app: CrmApplication) -> None:
    task = _created(app)
    first, second = _reassigned(app, task.id, "rep-2"), _reassigned(app, task.id, "rep-3")
    assert _append(app, first) == [2]
    head = _head(app)
    with pytest.raises(IntegrityError, match=f"version 2 of {task.id} was stored by another writer"):
        _append(app, second, idempotency=_idempotency("k-1"), reserve_emails=[(b"e" * 32, task.id)])
    _refused_leaves_nothing(app, head, key="k-1", email=b"e" * 32, owner=None)
    assert [e.assignee_id for e in app.events.get(task.id)][1:] == ["rep-2"]  # type: ignore[attr-defined]


def test_a_version_claimed_twice_in_one_append_is_refused(app: CrmApplication) -> None:
    task = _created(app)
    [event] = _reassigned(app, task.id, "rep-2")
    with pytest.raises(IntegrityError, match=f"version 2 of {task.id}"):
        _append(app, [event, event])
    assert _head(app) == 1


# -- rule 2: follow-on -------------------------------------------------------------------
def test_an_append_must_follow_on_from_the_stored_versions(app: CrmApplication) -> None:
    task = _created(app)
    second, third = _reassigned(app, task.id, "rep-2", "rep-3")
    with pytest.raises(IntegrityError, match=f"version 2 of {task.id} is not stored"):
        _append(app, [third], idempotency=_idempotency("k-gap"))
    _refused_leaves_nothing(app, 1, key="k-gap", email=b"x" * 32, owner=None)
    # Together with the version before it (in the same append, or stored), it follows on.
    assert _append(app, [second, third]) == [2, 3]


def test_a_new_record_must_start_at_version_1(app: CrmApplication) -> None:
    task = _new_task()
    task.reassign(_ctx(), "rep-2")
    _, second = _stored(app, task)
    with pytest.raises(IntegrityError, match=f"version 1 of {task.id} is not stored"):
        _append(app, [second])
    assert _head(app) == 0


# -- rule 3: personal-data keys ----------------------------------------------------------
def test_an_append_sealing_with_a_destroyed_key_is_refused(app: CrmApplication) -> None:
    subject = uuid.uuid4()
    app.keys.key_for(subject, create=True, new=True)
    # The first append sealing for the subject stores its key.
    _append(app, _stored(app, _new_task()), sealed_subjects={subject})
    assert app.keys.destroy(subject)
    head = _head(app)
    with pytest.raises(SubjectKeyDestroyed):
        _append(app, _stored(app, _new_task()), sealed_subjects={subject},
                idempotency=_idempotency("k-erased"))
    _refused_leaves_nothing(app, head, key="k-erased", email=b"x" * 32, owner=None)
    # Appends sealing nothing for the subject go on.
    assert _append(app, _stored(app, _new_task()), sealed_subjects=set()) == [head + 1]


# -- rule 4: Idempotency-Keys ------------------------------------------------------------
def test_an_idempotency_key_is_answered_once_with_the_first_fingerprint(app: CrmApplication) -> None:
    first = _idempotency("k-1", "fingerprint-a")
    ids = _append(app, _stored(app, _new_task()), idempotency=first)
    stored = app.recorder.idempotency_record("rep-1", "k-1")  # type: ignore[attr-defined]
    assert stored is not None
    assert (stored.fingerprint, stored.status, stored.body) == ("fingerprint-a", 201, {"id": "x", "position": ids[-1]})
    with pytest.raises(IdempotencyKeyTaken):
        _append(app, _stored(app, _new_task()), idempotency=_idempotency("k-1", "fingerprint-b"))
    assert _head(app) == ids[-1]
    again = app.recorder.idempotency_record("rep-1", "k-1")  # type: ignore[attr-defined]
    assert again is not None and again.fingerprint == "fingerprint-a"
    # The same key of another principal is another key.
    other = IdempotencyRecord("rep-2", "k-1", "fingerprint-c", 200, {})
    assert _append(app, _stored(app, _new_task()), idempotency=other) == [ids[-1] + 1]


# -- rule 5: e-mail reservations ---------------------------------------------------------
def test_an_address_held_by_another_customer_is_refused(app: CrmApplication) -> None:
    ann, bob, email = uuid.uuid4(), uuid.uuid4(), b"a" * 32
    _append(app, _stored(app, _new_task()), reserve_emails=[(email, ann)])
    head = _head(app)
    with pytest.raises(EmailTaken) as taken:
        _append(app, _stored(app, _new_task()), reserve_emails=[(email, bob)],
                idempotency=_idempotency("k-dup"), passwords=[(bob, "hash")])
    assert taken.value.email_hmac == email
    _refused_leaves_nothing(app, head, key="k-dup", email=email, owner=ann)
    assert app.recorder.credential(bob) is None  # type: ignore[attr-defined]
    # The holder itself may reserve it again; a release by another customer releases nothing.
    _append(app, _stored(app, _new_task()), reserve_emails=[(email, ann)], release_emails=[(email, bob)])
    assert app.recorder.email_owner(email) == ann  # type: ignore[attr-defined]


def test_releases_come_before_reservations_in_one_append(app: CrmApplication) -> None:
    ann, bob, email = uuid.uuid4(), uuid.uuid4(), b"b" * 32
    _append(app, _stored(app, _new_task()), reserve_emails=[(email, ann)])
    _append(app, _stored(app, _new_task()), release_emails=[(email, ann)], reserve_emails=[(email, bob)])
    assert app.recorder.email_owner(email) == bob  # type: ignore[attr-defined]
    _append(app, _stored(app, _new_task()), release_emails=[(email, bob)])
    assert app.recorder.email_owner(email) is None  # type: ignore[attr-defined]
