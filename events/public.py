"""The public contract: what downstream systems receive for each event.

An event leaves the CRM as a CloudEvents 1.0 envelope in structured JSON mode::

    {"specversion": "1.0", "id": <event id>, "source": ..., "type": "crm.CustomerRegistered",
     "subject": <aggregate id>, "time": <business time>, "datacontenttype": "application/json",
     "dataschema": <URI of the type's JSON Schema>, "dataversion": 1,
     "logposition": 1234, "aggregatetype": "customer", "aggregateversion": 3,
     "correlationid": ..., "causationid": ..., "customerid": ..., "recordedat": ...,
     "actorid": ..., "actorrole": ..., "personaldata": "omitted", "data": {...}}

``data`` holds the event's own fields in their JSON form. Personal fields (and the
free-text ``reason``) are left out unless the topic carries personal data; then they
are included, or ``null`` with ``personaldata: "erased"`` once the customer's key is
destroyed. The public contract is versioned per event type: ``dataversion`` is the
type's ``class_version``, and ``events/schemas/<type>.v<version>.json`` is the JSON
Schema of that version's envelope, generated from the event class and kept in the
repository. A test fails when a class changes without a new ``class_version``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from events.base import CrmEvent, all_event_types

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
_SKIP = {"originator_id", "originator_version", "timestamp", "meta"}
#: Values of the ``personaldata`` extension.
PERSONAL_NONE = "none"  # the type has no personal fields
PERSONAL_OMITTED = "omitted"  # left out: the topic does not carry personal data
PERSONAL_INCLUDED = "included"
PERSONAL_ERASED = "erased"  # the customer's key is destroyed: personal fields are null


def public_type(cls: type[CrmEvent]) -> str:
    """The CloudEvents ``type`` of an event class."""
    return f"crm.{cls.type_name}"


def schema_file(type_name: str, version: int) -> Path:
    return SCHEMAS_DIR / f"{type_name}.v{version}.json"


def _fields(cls: type[CrmEvent]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in _SKIP]


def generate_schema(cls: type[CrmEvent]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the envelope of ``cls``'s current version."""
    hints = typing.get_type_hints(cls)
    defs: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for name in _fields(cls):
        schema = TypeAdapter(hints[name]).json_schema(
            mode="serialization", ref_template="#/$defs/{model}"
        )
        defs.update(schema.pop("$defs", {}))
        schema.pop("title", None)
        if name in cls.personal_fields:
            schema = {**schema, "x-personal": True}
        properties[name] = schema
    required_data = [n for n in _fields(cls) if n not in cls.personal_fields]
    text = {"type": "string", "minLength": 1}
    nullable_text = {"type": ["string", "null"]}
    uuid = {"type": "string", "format": "uuid"}
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:crm-core:schema:{cls.type_name}:{cls.class_version}",
        "title": f"{cls.type_name} v{cls.class_version}",
        "description": f"The public envelope of a {cls.type_name} event, version "
                       f"{cls.class_version}, on the {cls.aggregate_type} topic.",
        "type": "object",
        "required": [
            "specversion", "id", "source", "type", "subject", "time", "datacontenttype",
            "dataschema", "dataversion", "logposition", "aggregatetype", "aggregateversion",
            "correlationid", "causationid", "customerid", "recordedat", "actorid",
            "actorrole", "personaldata", "data",
        ],
        "properties": {
            "specversion": {"const": SPEC_VERSION},
            "id": uuid,
            "source": text,
            "type": {"const": public_type(cls)},
            "subject": uuid,
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "dataschema": text,
            "dataversion": {"const": cls.class_version},
            "logposition": {"type": "integer", "minimum": 1},
            "aggregatetype": {"const": cls.aggregate_type},
            "aggregateversion": {"type": "integer", "minimum": 1},
            "correlationid": text,
            "causationid": text,
            "customerid": {"type": ["string", "null"], "format": "uuid"},
            "recordedat": {"type": "string", "format": "date-time"},
            "actorid": text,
            "actorrole": text,
            "reason": nullable_text,
            "personaldata": {"enum": [PERSONAL_NONE, PERSONAL_OMITTED, PERSONAL_INCLUDED,
                                      PERSONAL_ERASED]},
            "data": {
                "type": "object",
                "properties": properties,
                "required": required_data,
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }
    if defs:
        doc["$defs"] = dict(sorted(defs.items()))
    return doc


def schema_text(schema: dict[str, Any]) -> str:
    """The stored form of a schema (stable: sorted keys, two-space indent)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def fingerprint(schema: dict[str, Any]) -> str:
    return hashlib.sha256(schema_text(schema).encode()).hexdigest()[:16]


def stored_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    """Every schema kept in the repository, by (type name, version)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(SCHEMAS_DIR.glob("*.v*.json")):
        type_name, _, version = path.stem.rpartition(".v")
        out[(type_name, int(version))] = json.loads(path.read_text())
    return out


def load_schema(type_name: str, version: int) -> dict[str, Any] | None:
    path = schema_file(type_name, version)
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@dataclasses.dataclass(frozen=True)
class SchemaCheck:
    """How the stored schemas compare with the event classes."""

    missing: list[str]  # current versions without a stored schema
    changed: list[str]  # stored schema of a current version differs from the class


def check_schemas() -> SchemaCheck:
    missing, changed = [], []
    for name, cls in sorted(all_event_types().items()):
        stored = load_schema(name, cls.class_version)
        if stored is None:
            missing.append(f"{name} v{cls.class_version}")
        elif schema_text(stored) != schema_text(generate_schema(cls)):
            changed.append(f"{name} v{cls.class_version}")
    return SchemaCheck(missing, changed)


def write_schemas() -> list[str]:
    """Write the schema of every current version that has none yet; the files written.

    Never overwrites: a stored version is published, so a changed class needs a new
    ``class_version`` (and an upcaster), which gets a new file.
    """
    SCHEMAS_DIR.mkdir(exist_ok=True)
    written = []
    for name, cls in sorted(all_event_types().items()):
        path = schema_file(name, cls.class_version)
        if not path.exists():
            path.write_text(schema_text(generate_schema(cls)))
            written.append(path.name)
    return written


class EnvelopeWriter:
    """Builds the public envelope of stored events (see the module docstring)."""

    def __init__(self, *, source: str, schema_base_url: str):
        self.source = source
        self.schema_base_url = schema_base_url.rstrip("/")
        self._types = all_event_types()

    def dataschema(self, cls: type[CrmEvent]) -> str:
        return f"{self.schema_base_url}/{cls.type_name}/{cls.class_version}"

    def envelope(self, position: int, aggregate_id: str, aggregate_version: int,
                 doc: dict[str, Any], data: dict[str, Any], *, personal: bool,
                 erased: bool = False) -> dict[str, Any]:
        """The envelope of one event, from its stored document (``events.codec``) and
        its data in current-version JSON form, personal fields included or not."""
        cls = self._types[doc["type"]]
        if not cls.personal_fields:
            marker = PERSONAL_NONE
        elif not personal:
            marker = PERSONAL_OMITTED
            data = {k: v for k, v in data.items() if k not in cls.personal_fields}
        else:
            marker = PERSONAL_ERASED if erased else PERSONAL_INCLUDED
        if cls.aggregate_type == "customer":
            customer_id: Any = aggregate_id
        elif cls.subject_field is not None:
            customer_id = data.get(cls.subject_field)
        else:
            customer_id = None
        envelope = {
            "specversion": SPEC_VERSION,
            "id": doc["event_id"],
            "source": self.source,
            "type": public_type(cls),
            "subject": aggregate_id,
            "time": doc["occurred_at"],
            "datacontenttype": "application/json",
            "dataschema": self.dataschema(cls),
            "dataversion": cls.class_version,
            "logposition": position,
            "aggregatetype": cls.aggregate_type,
            "aggregateversion": aggregate_version,
            "correlationid": doc["correlation_id"],
            "causationid": doc["causation_id"],
            "customerid": customer_id,
            "recordedat": doc["recorded_at"],
            "actorid": doc["actor"]["id"],
            "actorrole": doc["actor"]["role"],
            "personaldata": marker,
            "data": data,
        }
        if personal:
            envelope["reason"] = doc.get("reason")
        return envelope
