"""The hash chain over the stored event log: each event's link commits to all before it.

A link is computed over the stored form (topic and state bytes as they sit in the
table, personal data still sealed), so destroying a customer's key later changes
nothing the chain covers. The same computation runs in SQL inside the append's
transaction (``commands.eventstore``) and in Python when verifying (``replay.audit``)
or checking an export offline; both must agree byte for byte::

    link = SHA-256(previous link
                   || notification id (int64, big-endian)
                   || originator id (16 bytes)
                   || originator version (int64, big-endian)
                   || len(topic) (int32, big-endian) || topic (UTF-8)
                   || len(state) (int32, big-endian) || state)

The first event's previous link is ``GENESIS`` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import re
import struct
from uuid import UUID

GENESIS = bytes(32)
_HEAD = struct.Struct(">q16sqi")
_LEN = struct.Struct(">i")
_SUBJECT = re.compile(rb'"subject_id":"([0-9a-f-]{36})"')


def link_hash(previous: bytes, notification_id: int, originator_id: UUID, version: int,
              topic: str, state: bytes) -> bytes:
    """The chain link of one stored event, given the link before it."""
    topic_bytes = topic.encode()
    h = hashlib.sha256(previous)
    h.update(_HEAD.pack(notification_id, originator_id.bytes, version, len(topic_bytes)))
    h.update(topic_bytes)
    h.update(_LEN.pack(len(state)))
    h.update(state)
    return h.digest()


def subject_of(state: bytes) -> UUID | None:
    """The data subject (customer) a stored event is about, read from its clear part."""
    m = _SUBJECT.search(state)
    return UUID(m.group(1).decode()) if m else None


def checkpoint_message(notification_id: int, link: bytes, signed_at: str) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers."""
    return f"crm-chain-checkpoint/1|{notification_id}|{link.hex()}|{signed_at}".encode()
