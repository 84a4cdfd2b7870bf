"""The ``personal_fields`` mark on the event types is the one declaration of personal data.

Every sample event (``tests/fixtures/make_stored_fixtures.py``) is built with each text in
its personal fields replaced by a marker, and followed to every place it can reach: the
read models' handlers (every column the marker lands in must be one of its table's
``personal`` columns), the API's lists and records (a role without personal-data access
never sees the marker), the public Kafka envelope (never holds it) and what DuckDB reads
(the stored document's clear part, which never holds it). A new personal field fails here
until every one of those places handles it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import projections
from commands import AGGREGATE_TYPES, Aggregate
from commands.application import Principal
from events.base import CrmEvent
from events.codec import EventCodec
from analytics import store as analytics_store
from projections.base import BatchView, Projection, Row, Table
from feeds.kafka import Envelopes, FeedConfig
from api.auth import PERSONAL_DATA_ROLES, ROLES
from api.encoding import KEPT_KEYS
from readapi.queries import RECORDS
from readapi.records import PERSONAL_STATE, record_view
from tests.fixtures.make_stored_fixtures import SAMPLES, DerivedKeyRing, build, stored_form

MARK = "zqpersonalzq"
MASKED_ROLE = next(r for r in sorted(ROLES) if r not in PERSONAL_DATA_ROLES)
READING_ROLE = "admin" if "admin" in PERSONAL_DATA_ROLES else sorted(PERSONAL_DATA_ROLES)[0]


def _marked(value: Any) -> Any:
    """The value with every text replaced by the marker; keys that describe an item
    rather than the person (``KEPT_KEYS``: a contact's kind, a comment's id) kept."""
    if isinstance(value, str):
        return MARK
    if isinstance(value, list | tuple):
        return type(value)(_marked(v) for v in value)
    if isinstance(value, dict):
        return {k: v if k in KEPT_KEYS else _marked(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _marked(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.name not in KEPT_KEYS})
    return value


def _sample(cls: type[CrmEvent], *, marked: bool, version: int | None = None) -> CrmEvent:
    for sample_cls, originator_id, sample_version, fields in SAMPLES:
        if sample_cls is cls:
            if marked:
                fields = {**fields, **{n: _marked(fields[n]) for n in cls.personal_fields}}
            return build(cls, originator_id, version or sample_version, fields)
    raise LookupError(f"no sample of {cls.type_name} in tests/fixtures/make_stored_fixtures.py")


PERSONAL_TYPES = sorted({cls for cls, *_ in SAMPLES if cls.personal_fields}, key=lambda c: c.type_name)
CREATING = [cls for cls, *_ in SAMPLES if cls.creates]


def _history(cls: type[CrmEvent]) -> list[CrmEvent]:
    """Every record created (the marked event's own record from the marked event), then
    the marked event if it changes a record."""
    out = [_sample(c, marked=c is cls) for c in dict.fromkeys(CREATING)]
    if not cls.creates:
        out.append(_sample(cls, marked=True, version=100))
    return out


def _rows(projection: type[Projection], history: list[CrmEvent]) -> dict[str, list[Row]]:
    view = BatchView(projection, lambda table, keys: [])
    for event in history:
        for on in projection.handlers_for(event.type_name):
            view.begin_event()
            on.handler(view, event)
    return {t.name: [r for r in view.rows[t.name].values() if r is not None] + view.appended[t.name]
            for t in projection.tables}


def _holds_mark(value: Any) -> bool:
    return MARK in json.dumps(value, default=str).lower()


def test_every_personal_field_of_every_sample_carries_text() -> None:
    for cls in PERSONAL_TYPES:
        for name in cls.personal_fields:
            original = getattr(_sample(cls, marked=False), name)
            assert _holds_mark(_marked(original)), (
                f"{cls.type_name}.{name}: the sample holds no text to follow; give it one")


@pytest.mark.parametrize("cls", PERSONAL_TYPES, ids=lambda c: c.type_name)
def test_read_model_columns_filled_from_a_personal_field_are_personal(cls: type[CrmEvent]) -> None:
    history = _history(cls)
    for projection in projections.ALL:
        for table_name, rows in _rows(projection, history).items():
            table = projection.table(table_name)
            reached = {c for row in rows for c, v in row.items() if _holds_mark(v)}
            assert reached <= set(table.personal), (
                f"{cls.type_name} fills {projection.name}.{table_name} columns "
                f"{sorted(reached - set(table.personal))} from a personal field: declare them "
                f"with Table.sources (From({cls.__name__}, ...))")


def _table_of(view: str) -> Table:
    for projection in projections.ALL:
        for table in projection.tables:
            if table.name == view:
                return table
    raise LookupError(view)


@pytest.mark.parametrize("cls", PERSONAL_TYPES, ids=lambda c: c.type_name)
def test_the_api_masks_exactly_the_personal_columns(cls: type[CrmEvent]) -> None:
    history = _history(cls)
    rows_by_table: dict[str, list[Row]] = {}
    for projection in projections.ALL:
        rows_by_table.update(_rows(projection, history))
    masked = Principal("u-masked", MASKED_ROLE)
    reading = Principal("u-reading", READING_ROLE)
    for _path, spec, _type in RECORDS:
        table = _table_of(spec.view)
        assert set(spec.personal) == set(table.personal) - set(spec.hidden), spec.name
        for row in rows_by_table[table.name]:
            shown = spec.row(row, masked)
            assert not _holds_mark(shown), f"{spec.name} shows {cls.type_name}'s personal data to {MASKED_ROLE}"
            changed = {c for c, v in spec.row(row, reading).items() if shown.get(c) != v}
            assert changed <= set(spec.personal), spec.name
    # the record view (GET /{collection}/{id}) of the event's own record
    if not any(t == cls.aggregate_type for *_, t in RECORDS):
        return
    aggregate_cls = AGGREGATE_TYPES[cls.aggregate_type]
    event = _sample(cls, marked=True)
    own = [event] if cls.creates else [
        next(e for e in history if e.creates and e.originator_id == event.originator_id),
        _sample(cls, marked=True, version=2)]
    aggregate: Aggregate | None = aggregate_cls.project(None, own)
    assert aggregate is not None
    assert set(PERSONAL_STATE[cls.aggregate_type]) <= set(aggregate.state()), "a masked name is no record field"
    assert _holds_mark(record_view(aggregate, reading)), f"{cls.type_name}: the record does not show it"
    assert not _holds_mark(record_view(aggregate, masked)), (
        f"GET {cls.aggregate_type} shows {cls.type_name}'s personal data to {MASKED_ROLE}: "
        f"name the record field in replay.timeline.RECORD_FIELD")


@pytest.mark.parametrize("cls", PERSONAL_TYPES, ids=lambda c: c.type_name)
def test_public_kafka_envelopes_leave_personal_fields_out(cls: type[CrmEvent]) -> None:
    event = _sample(cls, marked=True)
    doc = stored_form(event)["state"]
    envelopes = Envelopes(FeedConfig("localhost:9092"), EventCodec(DerivedKeyRing()))
    # built in Python from the stored document's clear part (the common path) ...
    envelope = envelopes.writer.envelope(1, str(event.originator_id), event.originator_version,
                                         doc, doc["data"], personal=False)
    assert not _holds_mark(envelope) and envelope["personaldata"] == "omitted"
    # ... from the decoded event (older versions, upcast) ...
    full = json.loads(json.dumps(event.payload(), default=str))
    envelope = envelopes.writer.envelope(1, str(event.originator_id), event.originator_version,
                                         doc, full, personal=False)
    assert not _holds_mark(envelope)
    # ... and by PostgreSQL, which drops the fields the type table names
    types = {t["type"]: t for t in json.loads(envelopes._type_table())}
    assert types[cls.type_name]["personal"] == list(cls.personal_fields)
    assert not types[cls.type_name]["personal_topic"]


@pytest.mark.parametrize("cls", PERSONAL_TYPES, ids=lambda c: c.type_name)
def test_duckdb_reads_nothing_personal(cls: type[CrmEvent]) -> None:
    doc = stored_form(_sample(cls, marked=True))["state"]
    # DuckDB stages the document's clear part only (``data``, the payload column) ...
    structure = json.loads(analytics_store._DOC_STRUCTURE)
    assert "sealed" not in structure and set(structure) <= set(doc) - {"sealed"}
    assert not _holds_mark({k: doc[k] for k in structure if k in doc})
    assert not set(cls.personal_fields) & set(doc["data"])
