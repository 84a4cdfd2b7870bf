"""A customer's timeline: every event about the customer, across its own record and
every related one (opportunities, interactions, service requests, tasks, purchases,
audit exports), in log order, with who, when (both times), why, and what changed.

Related records name their customer in every event (``customer_id``, the data subject
whose key seals their personal data); the chain table keeps that subject beside each
event's link, indexed, so a timeline is one index range, not a scan of the log.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from psycopg.rows import tuple_row

from events import customer as ce
from events import service_request as se
from events import task as te
from events.base import CrmEvent, all_event_types
from events.codec import dump_fields
from replay.audit import CHAIN_TABLE, EVENTS_TABLE
from replay.state import RECORD_TYPES, Replayer

MAX_PAGE = 1000


def personal_fields(type_name: str) -> tuple[str, ...]:
    """The personal fields of an event type (masked for roles that may not read them)."""
    return all_event_types()[type_name].personal_fields


#: Personal event fields a record (its aggregate's state) keeps under another name; the
#: others it keeps under their own.
RECORD_FIELD: dict[tuple[type[CrmEvent], str], str] = {
    (ce.ContactAdded, "contact"): "contacts",
    # its keys are the customer's personal details: the name
    (ce.CustomerDetailsChanged, "personal_changes"): "name",
    (se.ServiceRequestCommented, "body"): "comments",
    (se.SatisfactionRated, "comment"): "rating_comment",
    (te.TaskCommented, "body"): "comments",
}


def personal_state(aggregate_type: str) -> tuple[str, ...]:
    """The fields of a record that hold personal data (masked for roles that may not read
    them): every personal field of the aggregate's event types, under the record's name."""
    names = [RECORD_FIELD.get((cls, name), name)
             for cls in all_event_types().values() if cls.aggregate_type == aggregate_type
             for name in cls.personal_fields]
    return tuple(dict.fromkeys(names))


def known_type(type_name: str) -> bool:
    return type_name in all_event_types()


#: Types whose values are JSON as they are.
PLAIN = frozenset({str, int, float, bool, type(None)})


def jsonable(value: Any) -> Any:
    """A JSON value of a field value (ids, amounts and times as text, enums by value)."""
    if type(value) in PLAIN:  # most values of most rows: nothing to do
        return value
    convert = _BY_TYPE.get(type(value))  # the exact types of read-model rows, by one look-up
    if convert is not None:
        return convert(value)
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return _dict(value)
    if isinstance(value, list | tuple | set):
        return _list(value)
    return value


def _dict(value: dict[Any, Any]) -> dict[str, Any]:
    return {k if type(k) is str else str(k): v if type(v) in PLAIN else jsonable(v) for k, v in value.items()}


def _list(value: list[Any] | tuple[Any, ...] | set[Any]) -> list[Any]:
    return [v if type(v) in PLAIN else jsonable(v) for v in value]


_BY_TYPE: dict[type, Any] = {
    UUID: str, Decimal: str, datetime: datetime.isoformat, date: date.isoformat,
    dict: _dict, list: _list, tuple: _list, set: _list,
}


def event_entry(event: CrmEvent, position: int, changes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One event as the timeline, history and exports show it."""
    meta = event.meta
    return {
        "position": position,
        "event_id": str(meta.event_id),
        "type": event.type_name,
        "class_version": event.class_version,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": str(event.originator_id),
        "aggregate_version": event.originator_version,
        "occurred_at": meta.occurred_at.isoformat(),
        "recorded_at": meta.recorded_at.isoformat(),
        "actor_id": meta.actor.id,
        "actor_role": meta.actor.role,
        "reason": meta.reason,
        "correlation_id": meta.correlation_id,
        "causation_id": meta.causation_id,
        "command_id": str(meta.command_id),
        "personal_data_erased": event.personal_data_erased,
        "data": dump_fields(type(event), event.payload()),
        "changes": None if changes is None else [
            {"field": c["field"], "before": jsonable(c["before"]), "after": jsonable(c["after"])}
            for c in changes
        ],
    }


@dataclass(frozen=True)
class TimelineQuery:
    after: int = 0  # log position: the page starts after it
    limit: int = 100
    occurred_from: datetime | None = None  # business time, inclusive
    occurred_to: datetime | None = None  # business time, exclusive
    types: tuple[str, ...] = ()
    actor: str | None = None
    before: int | None = None  # log position: the page ends before it
    newest_first: bool = False  # newest first (page back with ``before``)


@dataclass
class TimelinePage:
    items: list[dict[str, Any]]
    next_after: int | None
    #: newest first: the position to pass as ``before`` for the next (older) page
    next_before: int | None = None


def subject_rows(replayer: Replayer, customer_id: UUID, q: TimelineQuery, *,
                 recorded_to: datetime | None = None) -> list[tuple[int, UUID, int, str, bytes]]:
    """(position, aggregate id, version, topic, state) of the customer's events matching."""
    where = ["c.subject_id = %s", "c.notification_id > %s"]
    params: list[Any] = [customer_id, q.after]
    if q.before is not None:
        where.append("c.notification_id < %s")
        params.append(q.before)
    if q.occurred_from is not None:
        where.append("c.occurred_at >= %s")
        params.append(q.occurred_from)
    if q.occurred_to is not None:
        where.append("c.occurred_at < %s")
        params.append(q.occurred_to)
    if recorded_to is not None:
        where.append("c.recorded_at <= %s")
        params.append(recorded_to)
    if q.types:
        where.append("e.topic = ANY(%s)")
        params.append(list(q.types))
    if q.actor is not None:
        where.append("c.actor_id = %s")
        params.append(q.actor)
    params.append(q.limit + 1)
    with replayer.connect() as conn:
        rows = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT c.notification_id, e.originator_id, e.originator_version, e.topic, e.state"
            f" FROM {CHAIN_TABLE} c JOIN {EVENTS_TABLE} e USING (notification_id)"
            f" WHERE {' AND '.join(where)} ORDER BY c.notification_id{' DESC' if q.newest_first else ''}"
            " LIMIT %s", params).fetchall()
    return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def timeline(replayer: Replayer, customer_id: UUID, q: TimelineQuery) -> TimelinePage:
    """One page of the customer's timeline, oldest first (or newest first)."""
    rows = subject_rows(replayer, customer_id, q)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    last = rows[-1][0] if more and rows else None
    if q.newest_first:
        return TimelinePage(entries(replayer, rows), None, last)
    return TimelinePage(entries(replayer, rows), last)


def entries(replayer: Replayer, rows: list[tuple[int, UUID, int, str, bytes]]) -> list[dict[str, Any]]:
    """Timeline entries of these stored events, each with the change it made."""
    decoded = replayer.codec.decode_many([(r[1], r[2], r[3], r[4]) for r in rows])
    wanted: dict[UUID, set[int]] = defaultdict(set)
    for r, event in zip(rows, decoded, strict=True):
        if isinstance(event, CrmEvent) and event.aggregate_type in RECORD_TYPES:
            wanted[r[1]].add(r[2])
    changes: dict[UUID, dict[int, list[dict[str, Any]]]] = {
        aggregate_id: replayer.changes_at(aggregate_id, versions) for aggregate_id, versions in wanted.items()
    }
    out = []
    for r, event in zip(rows, decoded, strict=True):
        if isinstance(event, Exception):
            raise event
        out.append(event_entry(event, r[0], changes.get(r[1], {}).get(r[2])))
    return out
