"""Shared pieces of the unit tests: a fixed clock, deterministic ids, past events.

The tests read "given these past events, when this command, then these new events
(or this error)":

    customer = given(Customer, event(CustomerRegistered, CID, **fields), ...)
    customer.tag(ctx(), "vip")
    assert emitted(customer) == [(CustomerTagged, {"tag": "vip"})]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import pytest

from aggregates.base import Aggregate, CommandContext
from aggregates.errors import DomainError
from commands.clock import SequentialIds
from events.base import Actor, CrmEvent

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ACTOR = Actor("u1", "sales_rep")
CORRELATION_ID = "corr-1"
CAUSATION_ID = "cause-1"

A = TypeVar("A", bound=Aggregate)
E = TypeVar("E", bound=CrmEvent)


@pytest.fixture
def ids() -> SequentialIds:
    """The id source every context of one test shares (deterministic)."""
    return SequentialIds("test")


@pytest.fixture
def ctx(ids: SequentialIds) -> Callable[..., CommandContext]:
    """ctx(reason=None, *, occurred_at=None, actor=ACTOR, new_id=None) -> CommandContext."""

    def make(
        reason: str | None = None,
        *,
        occurred_at: datetime | None = None,
        actor: Actor = ACTOR,
        new_id: Callable[[], UUID] | None = None,
    ) -> CommandContext:
        return CommandContext(
            actor=actor,
            recorded_at=NOW,
            occurred_at=occurred_at or NOW,
            correlation_id=CORRELATION_ID,
            causation_id=CAUSATION_ID,
            command_id=ids(),
            new_id=new_id or ids,
            reason=reason,
        )

    return make


@pytest.fixture
def event(ctx: Callable[..., CommandContext]) -> Callable[..., Any]:
    """event(cls, aggregate_id, **fields): a past event, as if read from the store.

    Versions are numbered 1, 2, 3... per aggregate id in the order events are made
    (pass ``version=`` to choose one).
    """
    versions: dict[UUID, int] = {}

    def make(cls: type[E], aggregate_id: UUID, *, version: int | None = None, **fields: Any) -> E:
        if version is None:
            version = versions.get(aggregate_id, 0) + 1
        versions[aggregate_id] = version
        meta = ctx().meta()
        return cls(  # type: ignore[call-arg]
            originator_id=aggregate_id,
            originator_version=version,
            timestamp=meta.recorded_at,
            meta=meta,
            **fields,
        )

    return make


@pytest.fixture
def given() -> Callable[..., Any]:
    """given(cls, *events): the aggregate rebuilt from past events, nothing pending."""

    def rebuild(cls: type[A], *events: CrmEvent) -> A:
        aggregate = cls.project(None, events)
        assert aggregate is not None
        assert aggregate.pending_events == []
        return aggregate

    return rebuild


@pytest.fixture
def emitted() -> Callable[[Aggregate], list[tuple[type[CrmEvent], dict[str, Any]]]]:
    """emitted(aggregate): the new events as (type, payload), handed over once."""

    def collect(aggregate: Aggregate) -> list[tuple[type[CrmEvent], dict[str, Any]]]:
        return [(type(e), e.payload()) for e in aggregate.collect_events()]

    return collect


@pytest.fixture
def refused() -> Callable[..., Any]:
    """with refused(ErrorClass, "field", aggregate): ... -- the command is refused.

    Checks the exact error class, its ``.field`` and that the aggregate (if given)
    has no new events afterwards.
    """

    @contextmanager
    def check(
        error_cls: type[DomainError], field: str | None, aggregate: Aggregate | None = None
    ) -> Iterator[pytest.ExceptionInfo[DomainError]]:
        before = aggregate.state() if aggregate is not None else None
        with pytest.raises(error_cls) as info:
            yield info
        assert type(info.value) is error_cls
        assert info.value.field == field
        if aggregate is not None:
            assert aggregate.pending_events == []
            assert aggregate.state() == before

    return check
