"""The tamper-evident log: signed checkpoints of the hash chain, and its verification.

Every stored event has a chain link (``crm_event_chain``, written in the append's
transaction; see ``events/chain.py``). A checkpoint is an Ed25519 signature over the
chain head at some position: rewriting anything before it, even with every later link
recomputed, no longer matches the signed link. ``verify_chain`` recomputes every link
from the stored events and reports what does not match, with its position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import tuple_row

from events.chain import GENESIS, checkpoint_message, link_hash
from replay.signing import key_id

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
EVENTS_TABLE = "crm_events"
CHAIN_TABLE = "crm_event_chain"
CHECKPOINTS_TABLE = "crm_chain_checkpoints"
FETCH = 10_000


def create_tables(connect: Connect) -> None:
    """The checkpoints table (the chain's own table belongs to the event store)."""
    with connect() as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} ("
            " checkpoint_id bigserial PRIMARY KEY,"
            " notification_id bigint NOT NULL,"
            " hash bytea NOT NULL,"
            " signed_at text NOT NULL,"
            " key_id text NOT NULL,"
            " signature bytea NOT NULL)"
        )


@dataclass(frozen=True)
class Checkpoint:
    notification_id: int
    hash: bytes
    signed_at: str
    key_id: str
    signature: bytes


def chain_head(connect: Connect) -> tuple[int, bytes] | None:
    """The last link of the chain: (position, hash)."""
    with connect() as conn:
        row = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT notification_id, hash FROM {CHAIN_TABLE} ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
    return (int(row[0]), bytes(row[1])) if row else None


def write_checkpoint(connect: Connect, key: Ed25519PrivateKey, *, now: datetime | None = None) -> Checkpoint | None:
    """Sign the chain head (unless it is signed already); None on an empty log."""
    head = chain_head(connect)
    if head is None:
        return None
    latest = checkpoints(connect)
    if latest and latest[-1].notification_id == head[0]:
        return latest[-1]
    signed_at = (now or datetime.now(UTC)).isoformat()
    signature = key.sign(checkpoint_message(head[0], head[1], signed_at))
    cp = Checkpoint(head[0], head[1], signed_at, key_id(key.public_key()), signature)
    with connect() as conn:
        conn.execute(
            f"INSERT INTO {CHECKPOINTS_TABLE} (notification_id, hash, signed_at, key_id, signature)"
            " VALUES (%s, %s, %s, %s, %s)",
            (cp.notification_id, cp.hash, cp.signed_at, cp.key_id, cp.signature),
        )
    return cp


def checkpoints(connect: Connect) -> list[Checkpoint]:
    with connect() as conn:
        rows = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT notification_id, hash, signed_at, key_id, signature FROM {CHECKPOINTS_TABLE}"
            " ORDER BY notification_id, checkpoint_id"
        ).fetchall()
    return [Checkpoint(int(r[0]), bytes(r[1]), r[2], r[3], bytes(r[4])) for r in rows]


def checkpoint_valid(cp: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(cp.signature, checkpoint_message(cp.notification_id, cp.hash, cp.signed_at))
    except InvalidSignature:
        return False
    return cp.key_id == key_id(public_key)


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the log, at a log position."""

    position: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.kind}: {self.detail}"


@dataclass
class ChainReport:
    events: int = 0
    head: int = 0
    head_hash: bytes = GENESIS
    checkpoints: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _stream(conn: psycopg.Connection[Any], name: str, query: str) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name=name, row_factory=tuple_row) as cur:
        cur.itersize = FETCH
        cur.execute(query)
        yield from cur


def verify_chain(connect: Connect, public_key: Ed25519PublicKey, *, max_findings: int = 100,
                 progress: Callable[[int], None] | None = None) -> ChainReport:
    """Recompute every link from the stored events and check every checkpoint.

    Finds a changed byte (the link at that position differs), a deleted event (a link
    with no event, or the next link broken), a reordered pair (both positions differ),
    an inserted event (an event with no link, or the next link broken), and a chain
    rewritten before a signed checkpoint.
    """
    report = ChainReport()
    started = time.perf_counter()
    signed = checkpoints(connect)
    report.checkpoints = len(signed)
    pending = iter(signed)
    next_cp = next(pending, None)

    def add(position: int, kind: str, detail: str) -> None:
        if len(report.findings) < max_findings:
            report.findings.append(Finding(position, kind, detail))
        else:
            report.truncated = True

    def check_checkpoints(position: int, link: bytes | None) -> None:
        # Every checkpoint at or before this position must sign the link found there.
        nonlocal next_cp
        while next_cp is not None and next_cp.notification_id <= position:
            cp = next_cp
            if not checkpoint_valid(cp, public_key):
                add(cp.notification_id, "bad checkpoint signature",
                    f"the checkpoint signed at {cp.signed_at} does not verify with this key")
            elif cp.notification_id != position or link is None:
                add(cp.notification_id, "checkpointed event missing",
                    f"the checkpoint signed at {cp.signed_at} names an event that is gone")
            elif cp.hash != link:
                add(cp.notification_id, "checkpoint mismatch",
                    f"the log before this position differs from what was signed at {cp.signed_at}")
            next_cp = next(pending, None)

    previous = GENESIS
    with connect() as conn, conn.transaction():
        # One snapshot for both cursors: appends committing meanwhile are not half seen.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        events = _stream(conn, "crm_verify_events",
                         f"SELECT notification_id, originator_id, originator_version, topic, state"
                         f" FROM {EVENTS_TABLE} ORDER BY notification_id")
        links = _stream(conn, "crm_verify_links",
                        f"SELECT notification_id, hash FROM {CHAIN_TABLE} ORDER BY notification_id")
        event = next(events, None)
        link_row = next(links, None)
        while event is not None or link_row is not None:
            e_pos = event[0] if event is not None else None
            l_pos = link_row[0] if link_row is not None else None
            if e_pos is not None and (l_pos is None or e_pos < l_pos):
                assert event is not None
                computed = link_hash(previous, e_pos, _uuid(event[1]), event[2], event[3], bytes(event[4]))
                add(e_pos, "event without link",
                    "an event that was never linked into the chain (inserted, or not yet linked)")
                previous = computed
                position, found = e_pos, computed
                event = next(events, None)
                report.events += 1
            elif l_pos is not None and (e_pos is None or l_pos < e_pos):
                assert link_row is not None
                add(l_pos, "event missing", "the chain links an event that is no longer stored")
                previous = bytes(link_row[1])
                position, found = l_pos, previous
                link_row = next(links, None)
            else:
                assert event is not None and link_row is not None and e_pos is not None
                stored = bytes(link_row[1])
                computed = link_hash(previous, e_pos, _uuid(event[1]), event[2], event[3], bytes(event[4]))
                if computed != stored:
                    add(e_pos, "broken link", "the stored event, or the one before it, was changed, "
                        "removed, reordered or inserted")
                    # Go on from the stored link, so one change is one finding.
                previous = stored
                position, found = e_pos, computed
                event = next(events, None)
                link_row = next(links, None)
                report.events += 1
                if progress is not None and report.events % 100_000 == 0:
                    progress(report.events)
            check_checkpoints(position, found)
            report.head, report.head_hash = position, previous
    if next_cp is not None:
        check_checkpoints(2**62, None)
    report.seconds = time.perf_counter() - started
    return report


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
