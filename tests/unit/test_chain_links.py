"""The chain's link formats, byte for byte as events/chain.py documents them: version 1
(what stored chains hold) must never change; version 2 covers the look-up columns."""

from __future__ import annotations

import hashlib
import struct
import uuid
from datetime import UTC, datetime, timedelta, timezone

from events.chain import GENESIS, LinkMeta, link_hash, meta_of, subject_of

OID = uuid.UUID("8c3c889a-ac44-41bf-a15c-79267e82683e")
SUBJECT = uuid.UUID("0a506123-2df7-469e-b7ed-4406195d7704")
STATE = (b'{"actor":{"id":"rep-1","role":"sales_rep"},"data":{"tag":"vip"},'
         b'"occurred_at":"2026-12-04T16:36:04.383266+00:00","recorded_at":"2026-12-04T17:36:04.383266+01:00",'
         b'"subject_id":"0a506123-2df7-469e-b7ed-4406195d7704","type":"CustomerTagged"}')


def _v1(previous: bytes) -> hashlib._Hash:
    h = hashlib.sha256(previous)
    h.update(struct.pack(">q16sqi", 7, OID.bytes, 2, len(b"CustomerTagged")) + b"CustomerTagged")
    h.update(struct.pack(">i", len(STATE)) + STATE)
    return h


def test_version_1_links_are_what_stored_chains_hold() -> None:
    assert link_hash(GENESIS, 7, OID, 2, "CustomerTagged", STATE) == _v1(GENESIS).digest()


def test_version_2_links_cover_the_look_up_columns_and_the_newest_checkpoint() -> None:
    meta = meta_of(STATE, 5)
    when = datetime(2026, 12, 4, 16, 36, 4, 383266, tzinfo=UTC)
    assert meta == LinkMeta(SUBJECT, when, when, "rep-1", 5)
    micros = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    h = hashlib.sha256(GENESIS)
    h.update(b"\x02" + struct.pack(">q16sqi", 7, OID.bytes, 2, len(b"CustomerTagged")) + b"CustomerTagged")
    h.update(struct.pack(">i", len(STATE)) + STATE)
    h.update(b"\x01" + SUBJECT.bytes + (b"\x01" + struct.pack(">q", micros)) * 2)
    h.update(b"\x01" + struct.pack(">i", 5) + b"rep-1" + struct.pack(">q", 5))
    assert link_hash(GENESIS, 7, OID, 2, "CustomerTagged", STATE, meta) == h.digest()
    # Each covered column changes the link; the same instant in another zone does not.
    same = meta._replace(occurred_at=when.astimezone(timezone(timedelta(hours=-5))))
    assert link_hash(GENESIS, 7, OID, 2, "CustomerTagged", STATE, same) == h.digest()
    for changed in (meta._replace(subject_id=OID), meta._replace(subject_id=None),
                    meta._replace(occurred_at=when + timedelta(microseconds=1)),
                    meta._replace(recorded_at=None), meta._replace(actor_id="mallory"),
                    meta._replace(actor_id=None), meta._replace(checkpoint_at=0)):
        assert link_hash(GENESIS, 7, OID, 2, "CustomerTagged", STATE, changed) != h.digest(), changed
    assert link_hash(GENESIS, 7, OID, 2, "CustomerTagged", STATE, meta) != _v1(GENESIS).digest()


def test_look_up_columns_of_an_event_that_does_not_say() -> None:
    empty = LinkMeta(None, None, None, None, 0)
    for state in (b"not json", b"[1]", b'{"actor":"x"}', b'{"occurred_at":"yesterday"}'):
        assert meta_of(state) == empty
    naive = meta_of(b'{"occurred_at":"2026-01-01T00:00:00"}')
    assert naive.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert subject_of(b'{"subject_id":"nope","x":{"subject_id":"' + str(OID).encode() + b'"}}') == OID
