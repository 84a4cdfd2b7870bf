"""The aggregate root all CRM aggregates share.

Decisions happen in plain public methods that check the rules and raise a
``DomainError``; only then do they call ``_trigger``. State changes live in methods
marked ``@applies(EventType)``: they only assign, because they re-run on every replay
(they never check, read the clock or create ids).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from aggregates.errors import no_record
from events.base import Actor, CrmEvent, EventMeta

A = TypeVar("A", bound="Aggregate")
E = TypeVar("E", bound=CrmEvent)


@dataclass(frozen=True)
class CommandContext:
    """What a decision needs from outside: who, when, why, and how to make ids.

    Built by the command layer from the request; the domain never reads a clock or
    makes a random id itself.
    """

    actor: Actor
    recorded_at: datetime
    occurred_at: datetime
    correlation_id: str
    causation_id: str
    command_id: UUID
    new_id: Callable[[], UUID]
    reason: str | None = None

    def meta(self) -> EventMeta:
        return EventMeta(
            event_id=self.new_id(),
            occurred_at=self.occurred_at,
            recorded_at=self.recorded_at,
            actor=self.actor,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            command_id=self.command_id,
            reason=self.reason,
        )


def applies(event_cls: type[CrmEvent]) -> Callable[[Callable[[A, Any], None]], Callable[[A, Any], None]]:
    """Mark a method as the state change for one event type."""

    def mark(method: Callable[[A, Any], None]) -> Callable[[A, Any], None]:
        method.__applies__ = event_cls  # type: ignore[attr-defined]
        return method

    return mark


class Aggregate:
    """An event-sourced record: state rebuilt by applying its events in order."""

    type_name: ClassVar[str] = ""
    _appliers: ClassVar[dict[type[CrmEvent], Callable[[Any, Any], None]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers: dict[type[CrmEvent], Callable[[Any, Any], None]] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                event_cls = getattr(value, "__applies__", None)
                if event_cls is not None:
                    appliers[event_cls] = value
        cls._appliers = appliers

    def __init__(self, aggregate_id: UUID):
        self.id = aggregate_id
        self.version = 0
        self.created_on: datetime | None = None
        self.modified_on: datetime | None = None
        self._pending_events: list[CrmEvent] = []

    # -- deciding --------------------------------------------------------------
    def _trigger(self, event_cls: type[E], ctx: CommandContext, **fields: Any) -> E:
        meta = ctx.meta()
        event = event_cls(  # type: ignore[call-arg]
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=meta.recorded_at,
            meta=meta,
            **fields,
        )
        self.apply(event)
        self._pending_events.append(event)
        return event

    @property
    def pending_events(self) -> list[CrmEvent]:
        return list(self._pending_events)

    def collect_events(self) -> list[CrmEvent]:
        """Hand over the new events for saving (eventsourcing's protocol)."""
        events, self._pending_events = self._pending_events, []
        return events

    # -- evolving --------------------------------------------------------------
    def apply(self, event: CrmEvent) -> None:
        if event.originator_id != self.id:
            raise ValueError(f"event of {event.originator_id} applied to {self.id}")
        if event.originator_version != self.version + 1:
            raise ValueError(
                f"event version {event.originator_version} after {self.version}"
            )
        applier = self._appliers.get(type(event))
        if applier is None:
            raise TypeError(f"{type(self).__name__} cannot apply {type(event).__name__}")
        applier(self, event)
        self.version = event.originator_version
        if self.created_on is None:
            self.created_on = event.meta.occurred_at
        if self.modified_on is None or event.meta.occurred_at > self.modified_on:
            self.modified_on = event.meta.occurred_at

    @classmethod
    def project(cls: type[A], aggregate: A | None, events: Iterable[Any]) -> A | None:
        """Rebuild from events (eventsourcing's projector function protocol)."""
        for event in events:
            if aggregate is None:
                if getattr(event, "aggregate_type", None) != cls.type_name or not event.creates:
                    raise no_record(cls.type_name, event.originator_id)
                aggregate = cls.__new__(cls)
                Aggregate.__init__(aggregate, event.originator_id)
            aggregate.apply(event)
        return aggregate

    def state(self) -> dict[str, Any]:
        """The record's fields, for comparison and for API responses."""
        return {
            k: copy.deepcopy(v)
            for k, v in vars(self).items()
            if not k.startswith("_")
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Aggregate) and type(self) is type(other) and self.state() == other.state()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id}, version={self.version})"
