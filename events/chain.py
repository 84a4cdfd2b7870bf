"""The hash chain over the stored event log: each event's link commits to all before it.

A link is computed over the stored form (topic and state bytes as they sit in the
table, personal data still sealed), so destroying a customer's key later changes
nothing the chain covers. It is computed in Python, in the append's transaction
(``eventstore.recorder``), when verifying (``replay.audit``) and when checking an
export offline: one function, the same bytes.

Version 1 (links written before the chain covered its look-up columns)::

    link = SHA-256(previous link
                   || notification id (int64, big-endian)
                   || originator id (16 bytes)
                   || originator version (int64, big-endian)
                   || len(topic) (int32, big-endian) || topic (UTF-8)
                   || len(state) (int32, big-endian) || state)

Version 2 (every link written since) also covers the chain table's own columns that
timelines, as-of reads, the actor filter and erasure look events up by, and the
position of the newest signed checkpoint when the link was written::

    link = SHA-256(previous link || 0x02
                   || notification id || originator id || originator version
                   || len(topic) || topic || len(state) || state      (as version 1)
                   || subject id      (0x00, or 0x01 and 16 bytes)
                   || business time   (0x00, or 0x01 and int64 microseconds since 1970 UTC)
                   || recording time  (the same)
                   || actor id        (0x00, or 0x01, int32 length and UTF-8)
                   || newest checkpoint's position (int64; 0: none yet))

The first event's previous link is ``GENESIS`` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import re
import struct
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from uuid import UUID

import orjson

GENESIS = bytes(32)
#: the version every new link is written in
LINK_VERSION = 2
_HEAD = struct.Struct(">q16sqi")
_V2 = struct.Struct(">Bq")
_TAIL = struct.Struct(">16sqi")
_LEN = struct.Struct(">i")
_INT = struct.Struct(">q")
_SUBJECT = re.compile(rb'"subject_id":"([0-9a-f-]{36})"')
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_NONE = b"\x00"
_SOME = b"\x01"


class LinkMeta(NamedTuple):
    """The chain table's look-up columns of one event, and the newest checkpoint's
    position when its link was written (what a version-2 link covers beyond the event)."""

    subject_id: UUID | None
    occurred_at: datetime | None
    recorded_at: datetime | None
    actor_id: str | None
    checkpoint_at: int = 0


def link_hash(previous: bytes, notification_id: int, originator_id: UUID, version: int,
              topic: str, state: bytes, meta: LinkMeta | None = None) -> bytes:
    """The chain link of one stored event, given the link before it: version 1 without
    ``meta``, version 2 with it."""
    if meta is None:
        topic_bytes = topic.encode()
        h = hashlib.sha256(previous)
        h.update(_HEAD.pack(notification_id, originator_id.bytes, version, len(topic_bytes)))
        h.update(topic_bytes)
        h.update(_LEN.pack(len(state)))
        h.update(state)
        return h.digest()
    return link_from_body(previous, notification_id, link_body(originator_id, version, topic, state, meta),
                          meta.checkpoint_at)


def link_body(originator_id: UUID, version: int, topic: str, state: bytes, meta: LinkMeta) -> bytes:
    """What a version-2 link hashes between the position and the newest checkpoint's
    position: an append works this out before it takes the log's lock."""
    topic_bytes = topic.encode()
    if meta.actor_id is None:
        actor = _NONE
    else:
        actor_bytes = meta.actor_id.encode()
        actor = _SOME + _LEN.pack(len(actor_bytes)) + actor_bytes
    return b"".join((
        _TAIL.pack(originator_id.bytes, version, len(topic_bytes)), topic_bytes, _LEN.pack(len(state)), state,
        _SOME + meta.subject_id.bytes if meta.subject_id is not None else _NONE,
        _time_bytes(meta.occurred_at), _time_bytes(meta.recorded_at), actor))


def link_from_body(previous: bytes, notification_id: int, body: bytes, checkpoint_at: int) -> bytes:
    """A version-2 link from the link before it, the position, ``link_body`` and the
    newest checkpoint's position."""
    h = hashlib.sha256(previous)
    h.update(_V2.pack(2, notification_id))
    h.update(body)
    h.update(_INT.pack(checkpoint_at))
    return h.digest()


def _time_bytes(when: datetime | None) -> bytes:
    if when is None:
        return _NONE
    return _SOME + _INT.pack((when - _EPOCH) // _MICRO)


def subject_of(state: bytes) -> UUID | None:
    """The data subject (customer) a stored event is about, read from its clear part."""
    m = _SUBJECT.search(state)
    return UUID(m.group(1).decode()) if m else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def meta_of(state: bytes, checkpoint_at: int = 0) -> LinkMeta:
    """The look-up columns of a stored event, read from its clear part; None where its
    state does not say (an event stored by other means may not even be JSON)."""
    try:
        doc = orjson.loads(state)
        actor = doc.get("actor") or {}
        actor_id = actor.get("id")
        return LinkMeta(subject_of(state), _time(doc.get("occurred_at")), _time(doc.get("recorded_at")),
                        actor_id if isinstance(actor_id, str) else None, checkpoint_at)
    except (ValueError, AttributeError):
        return LinkMeta(None, None, None, None, checkpoint_at)


def checkpoint_message(notification_id: int, link: bytes, signed_at: str, seq: int | None = None) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers. Since version 2 a checkpoint
    carries its number (1, 2, 3 ... in the order they were signed), so a missing or
    re-ordered one is seen."""
    if seq is None:
        return f"crm-chain-checkpoint/1|{notification_id}|{link.hex()}|{signed_at}".encode()
    return f"crm-chain-checkpoint/2|{seq}|{notification_id}|{link.hex()}|{signed_at}".encode()
