"""The public contract of the Kafka feed: a stored JSON Schema for every event type and
version, equal to the one the event class generates (so changing a type without a new
``class_version`` fails here), and envelopes of every stored fixture valid against it,
with personal fields left out unless the topic carries personal data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from jsonschema import Draft202012Validator

import events.public
from events.base import all_event_types
from events.codec import EventCodec
from events.customer import CustomerTagged
from events.public import check_schemas, generate_schema, load_schema, schema_text, stored_schemas
from feeds.kafka import Envelopes, FeedConfig
from tests.unit.test_stored_fixtures import FixedKeyRing

STORED = Path(__file__).resolve().parents[1] / "fixtures" / "stored"


def test_every_event_type_has_its_current_schema_stored_unchanged() -> None:
    result = check_schemas()
    assert not result.missing, f"run `crm kafka schemas --write`: {result.missing}"
    assert not result.changed, (
        f"event types changed without a new class_version: {result.changed}; bump "
        "class_version (with an upcaster), then `crm kafka schemas --write`")
    kept = stored_schemas()
    for name, cls in all_event_types().items():
        for version in range(1, cls.class_version + 1):
            assert (name, version) in kept, f"the schema of {name} v{version} was removed"
    for schema in kept.values():
        Draft202012Validator.check_schema(schema)


def test_a_changed_event_type_without_a_new_version_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass(frozen=True)
    class Changed(CustomerTagged):  # same name and version, one field more
        weight: int = 0

    types = {**all_event_types(), "CustomerTagged": Changed}
    monkeypatch.setattr(events.public, "all_event_types", lambda: types)
    assert check_schemas().changed == ["CustomerTagged v1"]
    stored = load_schema("CustomerTagged", 1)
    assert stored is not None and schema_text(stored) != schema_text(generate_schema(Changed))


def _envelope(path: Path, *, personal: bool) -> dict[str, Any]:
    fixture = json.loads(path.read_text())
    state = fixture["state"]
    codec = EventCodec(FixedKeyRing({UUID(state["subject_id"]): bytes.fromhex(fixture["key_hex"])}))
    cls = all_event_types()[fixture["topic"]]
    topic = f"crm.{cls.aggregate_type}.v1"
    config = FeedConfig("unused:9092", personal_topics=frozenset({topic} if personal else ()))
    row = {"notification_id": 42, "originator_id": fixture["originator_id"],
           "originator_version": fixture["originator_version"], "topic": fixture["topic"],
           "state": json.dumps(state).encode()}
    messages, failed = Envelopes(config, codec).messages([row])
    assert not failed
    (message,) = messages
    assert message.topic == topic and message.key == fixture["originator_id"].encode()
    envelope: dict[str, Any] = json.loads(message.value)
    return envelope


@pytest.mark.parametrize("path", sorted(STORED.glob("*.json")), ids=lambda p: p.stem)
def test_the_envelope_of_every_stored_fixture_is_valid(path: Path) -> None:
    for personal in (False, True):
        envelope = _envelope(path, personal=personal)
        cls = all_event_types()[envelope["type"].removeprefix("crm.")]
        schema = load_schema(cls.type_name, envelope["dataversion"])
        assert schema is not None
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = list(validator.iter_errors(envelope))
        assert not errors, errors[0]
        assert envelope["logposition"] == 42
        assert envelope["id"] and envelope["correlationid"] == "corr-fixture"
        present = set(cls.personal_fields) & set(envelope["data"])
        if personal:
            assert present == set(cls.personal_fields)
            assert "reason" in envelope
        else:
            assert not present, "personal data on a public topic"
            assert "reason" not in envelope
