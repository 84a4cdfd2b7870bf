"""The stored form of an event: a JSON document, personal fields sealed per subject.

Stored state (UTF-8 JSON, keys sorted)::

    {"format": 1, "type": "CustomerRegistered", "version": 1,
     "event_id": ..., "occurred_at": ..., "recorded_at": ...,
     "actor": {"id": ..., "role": ...}, "reason": ...,
     "correlation_id": ..., "causation_id": ..., "command_id": ...,
     "subject_id": ...,                 # whose key seals the personal fields
     "data": {...},                     # every field that is not personal, in clear
     "sealed": {"alg": "AES-256-GCM", "kid": ..., "nonce": ..., "ciphertext": ...}}

The stored topic is the event's stable type name, never a Python path, so code can
move without rewriting history. ``sealed`` binds its ciphertext to the event (subject,
aggregate id, version, type) as associated data, so it cannot be moved to another event.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import typing
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID, SafeUUID

import orjson
from eventsourcing.persistence import Mapper, StoredEvent
from pydantic import TypeAdapter
from typing_extensions import TypedDict

from events.base import Actor, CrmEvent, EventMeta, event_type
from events.keys import KeyRing

FORMAT = 1
_META_ADAPTER: TypeAdapter[EventMeta] = TypeAdapter(EventMeta)


class EventDecodeError(ValueError):
    """A stored event could not be decoded."""


@lru_cache(maxsize=None)
def _field_adapters(cls: type[CrmEvent]) -> dict[str, TypeAdapter[Any]]:
    hints = typing.get_type_hints(cls)
    skip = {"originator_id", "originator_version", "timestamp", "meta"}
    return {
        f.name: TypeAdapter(hints[f.name])
        for f in dataclasses.fields(cls)
        if f.name not in skip
    }


def dump_fields(cls: type[CrmEvent], values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready form of event fields (Decimal as string, times as ISO 8601)."""
    names, adapter = _fields_adapter(cls)
    if len(values) == len(names) and all(n in values for n in names):
        # All of them (an event's payload): one serializer call for the whole event.
        out: dict[str, Any] = adapter.dump_python(values, mode="json")
        return out
    adapters = _field_adapters(cls)
    return {k: adapters[k].dump_python(v, mode="json") for k, v in values.items()}


@lru_cache(maxsize=None)
def _fields_adapter(cls: type[CrmEvent]) -> tuple[tuple[str, ...], TypeAdapter[Any]]:
    """One validator for all of an event type's fields (one call per event, not one
    per field: decoding is the hot path of every projection)."""
    hints = typing.get_type_hints(cls)
    names = tuple(_field_adapters(cls))
    shape = TypedDict(f"{cls.__name__}Fields", {n: hints[n] for n in names})  # type: ignore[misc]
    return names, TypeAdapter(shape)


def load_fields(cls: type[CrmEvent], values: dict[str, Any]) -> dict[str, Any]:
    """Typed values of event fields from their JSON form (absent fields are None)."""
    names, adapter = _fields_adapter(cls)
    out: dict[str, Any] = adapter.validate_python({n: values.get(n) for n in names})
    return out


_UNKNOWN_SAFETY = SafeUUID.unknown


def _uuid(text: str) -> UUID:
    """A UUID from its canonical 36-character form, without ``UUID.__init__``'s
    general parsing (several per decoded event)."""
    if len(text) != 36:
        return UUID(text)
    u = object.__new__(UUID)
    object.__setattr__(u, "int", int(text.replace("-", ""), 16))
    object.__setattr__(u, "is_safe", _UNKNOWN_SAFETY)
    return u


def _loads(data: bytes) -> Any:
    """A JSON document. orjson refuses a lone surrogate escape (``\\ud800``), which
    Python's encoder wrote for a lone surrogate in a text: such a document is read by
    the standard library, which keeps it (readers decide what to store instead)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _aad(subject_id: UUID, originator_id: UUID, version: int, type_name: str) -> bytes:
    return f"{subject_id}|{originator_id}|{version}|{type_name}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def seals_personal_data(event: CrmEvent) -> bool:
    """True if the event's stored form seals personal data with its subject's key."""
    return any(getattr(event, name) for name in event.personal_fields)


class EventCodec:
    """Turns CRM events into stored form and back (sealing personal data)."""

    def __init__(self, keys: KeyRing):
        self.keys = keys

    # -- writing ---------------------------------------------------------------
    def encode(self, event: CrmEvent) -> tuple[str, bytes]:
        """(topic, state bytes) of an event."""
        cls = type(event)
        payload = dump_fields(cls, event.payload())
        personal = {k: payload.pop(k) for k in cls.personal_fields}
        if not any(personal.values()):
            # Nothing personal in it (null, empty text or list): kept in clear, unsealed.
            payload.update(personal)
            personal = {}
        subject_id = event.subject_id()
        meta = event.meta
        doc: dict[str, Any] = {
            "format": FORMAT,
            "type": cls.type_name,
            "version": cls.class_version,
            "event_id": str(meta.event_id),
            "occurred_at": meta.occurred_at.isoformat(),
            "recorded_at": meta.recorded_at.isoformat(),
            "actor": {"id": meta.actor.id, "role": meta.actor.role},
            "reason": meta.reason,
            "correlation_id": meta.correlation_id,
            "causation_id": meta.causation_id,
            "command_id": str(meta.command_id),
            "subject_id": str(subject_id),
            "data": payload,
        }
        if personal:
            new = cls.creates and subject_id == event.originator_id
            key = self.keys.key_for(subject_id, create=True, new=new)
            assert key is not None  # create=True either returns a key or raises
            nonce = os.urandom(12)
            plaintext = json.dumps(personal, sort_keys=True, separators=(",", ":"))
            ciphertext = key.aead.encrypt(
                nonce,
                plaintext.encode(),
                _aad(subject_id, event.originator_id, event.originator_version, cls.type_name),
            )
            doc["sealed"] = {
                "alg": "AES-256-GCM",
                "kid": key.kid,
                "nonce": _b64(nonce),
                "ciphertext": _b64(ciphertext),
            }
        state = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return cls.type_name, state

    # -- reading ---------------------------------------------------------------
    def decode_document(self, originator_id: UUID, version: int, state: bytes) -> dict[str, Any]:
        """The stored document with its sealed part opened (or marked erased)."""
        return self._open(originator_id, version, self._parse(originator_id, version, state))

    @staticmethod
    def _parse(originator_id: UUID, version: int, state: bytes) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = _loads(state)
        except ValueError as e:
            raise EventDecodeError(f"event {originator_id}@{version}: not JSON: {e}") from e
        return doc

    def _open(self, originator_id: UUID, version: int, doc: dict[str, Any]) -> dict[str, Any]:
        sealed = doc.get("sealed")
        doc["personal"] = None
        doc["personal_data_erased"] = False
        if sealed is not None:
            subject_id = _uuid(doc["subject_id"])
            key = self.keys.key_for(subject_id, create=False)
            if key is None:
                doc["personal_data_erased"] = True
            else:
                plaintext = key.aead.decrypt(
                    base64.b64decode(sealed["nonce"]),
                    base64.b64decode(sealed["ciphertext"]),
                    _aad(subject_id, originator_id, version, doc["type"]),
                )
                doc["personal"] = _loads(plaintext)
        return doc

    def decode(self, originator_id: UUID, version: int, topic: str, state: bytes) -> CrmEvent:
        return self._build(originator_id, version, topic, self.decode_document(originator_id, version, state))

    def decode_many(
        self, stored: list[tuple[UUID, int, str, bytes]]
    ) -> list[CrmEvent | Exception]:
        """Decode a batch: the keys of all its subjects are fetched together. A stored
        event that cannot be decoded gives its exception in its place."""
        docs: list[dict[str, Any] | Exception] = []
        for originator_id, version, _, state in stored:
            try:
                docs.append(self._parse(originator_id, version, state))
            except EventDecodeError as e:
                docs.append(e)
        prefetch = getattr(self.keys, "prefetch", None)
        if prefetch is not None:
            prefetch({_uuid(d["subject_id"]) for d in docs if isinstance(d, dict) and d.get("sealed")})
        out: list[CrmEvent | Exception] = []
        for (originator_id, version, topic, _), doc in zip(stored, docs, strict=True):
            if isinstance(doc, Exception):
                out.append(doc)
                continue
            try:
                out.append(self._build(originator_id, version, topic, self._open(originator_id, version, doc)))
            except Exception as e:  # noqa: BLE001 -- handed back for the caller to park
                out.append(e)
        return out

    def _build(self, originator_id: UUID, version: int, topic: str, doc: dict[str, Any]) -> CrmEvent:
        cls = event_type(doc.get("type", topic))
        values: dict[str, Any] = dict(doc["data"])
        if doc["personal"] is not None:
            values.update(doc["personal"])
        for name in cls.personal_fields:
            values.setdefault(name, None)  # erased (or an older version without it)
        stored_version = int(doc.get("version", 1))
        while stored_version < cls.class_version:
            upcast = getattr(cls, f"upcast_v{stored_version}_v{stored_version + 1}")
            upcast(values)
            stored_version += 1
        fields = load_fields(cls, values)
        # Frozen dataclasses, filled without their __init__ (a call per field): this
        # runs for every event every projection reads.
        actor = object.__new__(Actor)
        object.__setattr__(actor, "__dict__", {"id": doc["actor"]["id"], "role": doc["actor"]["role"]})
        recorded_at = datetime.fromisoformat(doc["recorded_at"])
        meta = object.__new__(EventMeta)
        object.__setattr__(meta, "__dict__", {
            "event_id": _uuid(doc["event_id"]),
            "occurred_at": datetime.fromisoformat(doc["occurred_at"]),
            "recorded_at": recorded_at,
            "actor": actor,
            "correlation_id": doc["correlation_id"],
            "causation_id": doc["causation_id"],
            "command_id": _uuid(doc["command_id"]),
            "reason": doc.get("reason"),
        })
        event = object.__new__(cls)
        state_dict = {
            "originator_id": originator_id,
            "originator_version": version,
            "timestamp": recorded_at,
            "meta": meta,
            **fields,
        }
        object.__setattr__(event, "__dict__", state_dict)
        if doc["personal_data_erased"]:
            object.__setattr__(event, "personal_data_erased", True)
        return event


class CrmMapper(Mapper[UUID]):
    """eventsourcing's Mapper interface over the CRM codec."""

    def __init__(self, codec: EventCodec):
        self.codec = codec
        self.transcoder = None  # type: ignore[assignment]
        self.compressor = None
        self.cipher = None

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        topic, state = self.codec.encode(domain_event)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic,
            state=state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        originator_id = stored_event.originator_id
        if not isinstance(originator_id, UUID):
            originator_id = UUID(str(originator_id))
        return self.codec.decode(
            originator_id, stored_event.originator_version, stored_event.topic, stored_event.state
        )
