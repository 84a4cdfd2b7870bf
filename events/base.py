"""The base of every CRM event: metadata, personal-data declaration, type registry.

Stored events can never be rewritten, so everything an auditor, analyst, downstream
system or privacy officer will need travels in ``EventMeta`` on every event.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import DomainEvent


@dataclass(frozen=True)
class Actor:
    """Who caused an event: a user (or system principal) and the role they acted in."""

    id: str
    role: str


@dataclass(frozen=True)
class EventMeta:
    """Who, when and why of one event, plus the ids that link it to its cause."""

    event_id: UUID
    occurred_at: datetime  # business time: when it took effect (may be back-dated)
    recorded_at: datetime  # recording time: when the system learned of it
    actor: Actor
    correlation_id: str
    causation_id: str
    command_id: UUID
    reason: str | None = None


class CrmEvent(DomainEvent):
    """Base class of every CRM event.

    Subclasses declare ``type_name`` (the stable stored name, never a Python path),
    ``aggregate_type``, ``class_version`` and which fields hold personal data
    (``personal_fields``): those are sealed with the data subject's key when stored.
    """

    meta: EventMeta

    type_name: ClassVar[str] = ""
    aggregate_type: ClassVar[str] = ""
    class_version: ClassVar[int] = 1
    personal_fields: ClassVar[tuple[str, ...]] = ()
    #: name of the field holding the customer id the event is about, if not the
    #: originator itself; personal fields are sealed with that customer's key.
    subject_field: ClassVar[str | None] = None
    #: True for the event that creates an aggregate.
    creates: ClassVar[bool] = False
    #: Set on an instance read back after its subject's key was destroyed: its
    #: personal fields are then ``None``.
    personal_data_erased: ClassVar[bool] = False

    def subject_id(self) -> UUID:
        """The data subject whose key seals this event's personal fields."""
        if self.subject_field is not None:
            value = getattr(self, self.subject_field)
            if value is not None:
                return UUID(str(value))
        return self.originator_id

    def payload(self) -> dict[str, Any]:
        """The event's own fields (no ids, version, timestamp or metadata)."""
        skip = {"originator_id", "originator_version", "timestamp", "meta"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip
        }


class UnknownEventType(LookupError):
    """A stored event names a type this code does not know."""


_REGISTRY: dict[str, type[CrmEvent]] = {}


def register(cls: type[CrmEvent]) -> type[CrmEvent]:
    """Class decorator: make an event type resolvable from its stored name."""
    if not cls.type_name or not cls.aggregate_type:
        raise TypeError(f"{cls.__name__} needs type_name and aggregate_type")
    existing = _REGISTRY.get(cls.type_name)
    if existing is not None and existing is not cls:
        raise TypeError(f"event type name {cls.type_name!r} used twice")
    field_names = {f.name for f in dataclasses.fields(cls)}
    missing = [n for n in cls.personal_fields if n not in field_names]
    if missing:
        raise TypeError(f"{cls.__name__}: personal fields {missing} are not fields")
    _REGISTRY[cls.type_name] = cls
    return cls


def event_type(type_name: str) -> type[CrmEvent]:
    """Resolve a stored type name to its event class."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise UnknownEventType(type_name) from None


def all_event_types() -> dict[str, type[CrmEvent]]:
    """Every registered event type, by stored name."""
    return dict(_REGISTRY)
