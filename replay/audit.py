"""The tamper-evident log: signed checkpoints of the hash chain, and its verification.

Every stored event has a chain link (``crm_event_chain``, written in the append's
transaction; see ``events/chain.py``). A checkpoint is an Ed25519 signature over the
chain head at some position: rewriting anything before it, even with every later link
recomputed, no longer matches the signed link. Checkpoints are numbered, and every
link records the newest checkpoint when it was written, so a deleted checkpoint is
seen too. A heads file (JSON lines, one signed checkpoint each) kept outside the
database carries the same checkpoints where a database superuser cannot reach them.
``verify_chain`` recomputes every link from the stored events and reports what does
not match, with its position.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import tuple_row

from events.chain import GENESIS, LINK_VERSION, LinkMeta, checkpoint_message, link_hash, meta_of
from replay.signing import key_id

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
EVENTS_TABLE = "crm_events"
CHAIN_TABLE = "crm_event_chain"
CHECKPOINTS_TABLE = "crm_chain_checkpoints"
HEADS_FORMAT = "crm-chain-head/1"
FETCH = 10_000


def create_tables(connect: Connect) -> None:
    """The checkpoints table (the event store makes it too; either may come first)."""
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
        conn.execute(f"ALTER TABLE {CHECKPOINTS_TABLE} ADD COLUMN IF NOT EXISTS seq bigint UNIQUE")


@dataclass(frozen=True)
class Checkpoint:
    notification_id: int
    hash: bytes
    signed_at: str
    key_id: str
    signature: bytes
    #: its number (1, 2, 3 ...); None: signed before checkpoints were numbered
    seq: int | None = None

    def as_line(self) -> bytes:
        """Its line in a heads file."""
        return json.dumps({
            "format": HEADS_FORMAT, "seq": self.seq, "position": self.notification_id,
            "hash": self.hash.hex(), "signed_at": self.signed_at, "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def chain_head(connect: Connect) -> tuple[int, bytes] | None:
    """The last link of the chain: (position, hash)."""
    with connect() as conn:
        row = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT notification_id, hash FROM {CHAIN_TABLE} ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
    return (int(row[0]), bytes(row[1])) if row else None


_COLUMNS = "notification_id, hash, signed_at, key_id, signature, seq"


def _checkpoint(r: Any) -> Checkpoint:
    return Checkpoint(int(r[0]), bytes(r[1]), r[2], r[3], bytes(r[4]), None if r[5] is None else int(r[5]))


def write_checkpoint(connect: Connect, key: Ed25519PrivateKey, *, now: datetime | None = None,
                     heads_file: Path | None = None) -> Checkpoint | None:
    """Sign the chain head (unless it is signed already); None on an empty log. The new
    checkpoint is numbered one after the last; with ``heads_file`` it is appended
    there too (after it committed)."""
    with connect() as conn, conn.transaction():
        cur = conn.cursor(row_factory=tuple_row)
        # One signer at a time (every serving process signs): numbers stay gap-free.
        cur.execute(f"LOCK TABLE {CHECKPOINTS_TABLE} IN SHARE ROW EXCLUSIVE MODE")
        head = cur.execute(
            f"SELECT notification_id, hash FROM {CHAIN_TABLE} ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
        if head is None:
            return None
        last = cur.execute(
            f"SELECT {_COLUMNS} FROM {CHECKPOINTS_TABLE} ORDER BY notification_id DESC, checkpoint_id DESC"
            " LIMIT 1").fetchone()
        if last is not None and int(last[0]) == int(head[0]):
            return _checkpoint(last)
        top = cur.execute(f"SELECT COALESCE(max(seq), 0) FROM {CHECKPOINTS_TABLE}").fetchone()
        seq = int(top[0]) + 1 if top else 1
        position, link = int(head[0]), bytes(head[1])
        signed_at = (now or datetime.now(UTC)).isoformat()
        signature = key.sign(checkpoint_message(position, link, signed_at, seq))
        cp = Checkpoint(position, link, signed_at, key_id(key.public_key()), signature, seq)
        cur.execute(
            f"INSERT INTO {CHECKPOINTS_TABLE} (notification_id, hash, signed_at, key_id, signature, seq)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (cp.notification_id, cp.hash, cp.signed_at, cp.key_id, cp.signature, cp.seq),
        )
    if heads_file is not None:
        append_head(heads_file, cp)
    return cp


def append_head(path: Path, cp: Checkpoint) -> None:
    """Append one signed checkpoint to a heads file (written through to the disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, cp.as_line())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_heads(path: Path) -> list[Checkpoint]:
    """The checkpoints of a heads file; ValueError naming the line if one is unreadable
    (a line cut short by a crash while it was written is left out)."""
    out: list[Checkpoint] = []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if doc.get("format") != HEADS_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            out.append(Checkpoint(int(doc["position"]), bytes.fromhex(doc["hash"]), str(doc["signed_at"]),
                                  str(doc["key_id"]), base64.b64decode(doc["signature"]),
                                  None if doc.get("seq") is None else int(doc["seq"])))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            if i == len(lines) and not raw.endswith(b"\n"):
                continue  # the last line, unfinished
            raise ValueError(f"{path}, line {i}: {e}") from None
    return out


def heads_recorded(path: Path | None) -> bool:
    """Whether a heads file holds any checkpoint (then the chain has started)."""
    if path is None or not path.exists():
        return False
    try:
        return bool(read_heads(path))
    except (OSError, ValueError):
        return True  # unreadable, but not empty: never treat it as a fresh start


def checkpoints(connect: Connect) -> list[Checkpoint]:
    with connect() as conn:
        rows = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT {_COLUMNS} FROM {CHECKPOINTS_TABLE} ORDER BY notification_id, checkpoint_id"
        ).fetchall()
    return [_checkpoint(r) for r in rows]


def checkpoint_valid(cp: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(cp.signature, checkpoint_message(cp.notification_id, cp.hash, cp.signed_at, cp.seq))
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
    #: checkpoints read from heads files (kept outside the database)
    heads: int = 0
    #: the newest checkpoint's position (0: none): events after it are not signed yet
    signed_to: int = 0
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


class _Findings:
    def __init__(self, report: ChainReport, limit: int):
        self.report = report
        self.limit = limit
        self.items: list[Finding] = []

    def add(self, position: int, kind: str, detail: str) -> None:
        self.items.append(Finding(position, kind, detail))

    def finish(self) -> None:
        # First broken position first; one change is reported where it happened.
        ordered = sorted(self.items, key=lambda f: f.position)
        self.report.findings = ordered[: self.limit]
        self.report.truncated = len(ordered) > self.limit


def _all_checkpoints(stored: list[Checkpoint], heads: Iterable[Checkpoint],
                     found: _Findings) -> list[Checkpoint]:
    """The database's checkpoints and those only a heads file still has (each one a
    finding: it was deleted from the database)."""
    known = {cp.signature for cp in stored}
    extra: dict[bytes, Checkpoint] = {}
    for cp in heads:
        if cp.signature not in known and cp.signature not in extra:
            extra[cp.signature] = cp
            found.add(cp.notification_id, "checkpoint missing",
                      f"checkpoint {cp.seq or ''} signed at {cp.signed_at} is in the heads file"
                      " but no longer in the database")
    return sorted([*stored, *extra.values()], key=lambda c: (c.notification_id, c.seq or 0))


def _check_numbering(signed: list[Checkpoint], referenced_missing: set[int], found: _Findings) -> None:
    """Numbered checkpoints: 1, 2, 3 ... in the order of their positions."""
    numbered = sorted((cp for cp in signed if cp.seq is not None), key=lambda c: c.seq or 0)
    before_position, before_seq = 0, 0
    for cp in numbered:
        assert cp.seq is not None
        if cp.seq == before_seq:
            continue  # the same checkpoint twice (database and heads file)
        if cp.seq > before_seq + 1:
            lost = range(before_seq + 1, cp.seq)
            # A lost checkpoint whose position a link records was reported there.
            if not any(before_position < p < cp.notification_id for p in referenced_missing):
                found.add(before_position + 1, "checkpoint missing",
                          f"checkpoint{'s' if len(lost) > 1 else ''} {lost[0]}"
                          f"{'-' + str(lost[-1]) if len(lost) > 1 else ''}, signed between positions"
                          f" {before_position} and {cp.notification_id}, no longer stored")
        # (Positions, not signing times: processes on several machines sign, and their
        # clocks may differ a little.)
        if cp.notification_id <= before_position:
            found.add(cp.notification_id, "checkpoints out of order",
                      f"checkpoint {cp.seq} (signed at {cp.signed_at}) does not follow checkpoint"
                      f" {before_seq} at position {before_position}")
        before_position, before_seq = cp.notification_id, cp.seq


def verify_chain(connect: Connect, public_key: Ed25519PublicKey, *, max_findings: int = 100,
                 progress: Callable[[int], None] | None = None,
                 heads: Iterable[Checkpoint] = ()) -> ChainReport:
    """Recompute every link from the stored events and check every checkpoint.

    Finds a changed byte of an event or of the chain's own columns (the link at that
    position differs), a deleted event (a link with no event, or the next link
    broken), a reordered pair (both positions differ), an inserted event (an event
    with no link, or the next link broken), a chain rewritten before a signed
    checkpoint, and a checkpoint deleted or out of order. ``heads``: checkpoints kept
    outside the database (a heads file); each is checked as one stored there would be.
    """
    report = ChainReport()
    found = _Findings(report, max_findings)
    started = time.perf_counter()
    stored_checkpoints = checkpoints(connect)
    heads = list(heads)
    signed = _all_checkpoints(stored_checkpoints, heads, found)
    report.checkpoints, report.heads = len(stored_checkpoints), len(heads)
    report.signed_to = max((cp.notification_id for cp in signed), default=0)
    signed_positions = {cp.notification_id for cp in signed}
    pending = iter(signed)
    next_cp = next(pending, None)
    referenced_missing: set[int] = set()

    def check_checkpoints(position: int, link: bytes | None) -> None:
        # Every checkpoint at or before this position must sign the link found there.
        nonlocal next_cp
        while next_cp is not None and next_cp.notification_id <= position:
            cp = next_cp
            if not checkpoint_valid(cp, public_key):
                found.add(cp.notification_id, "bad checkpoint signature",
                          f"the checkpoint signed at {cp.signed_at} does not verify with this key")
            elif cp.notification_id != position or link is None:
                found.add(cp.notification_id, "checkpointed event missing",
                          f"the checkpoint signed at {cp.signed_at} names an event that is gone"
                          f" (the log now ends at {report.head})")
            elif cp.hash != link:
                found.add(cp.notification_id, "checkpoint mismatch",
                          f"the log up to this position differs from what was signed at {cp.signed_at}")
            next_cp = next(pending, None)

    unlinked_from: int | None = None
    unlinked = 0

    def end_unlinked() -> None:
        nonlocal unlinked_from, unlinked
        if unlinked_from is not None:
            found.add(unlinked_from, "event without link",
                      "an event that was never linked into the chain (inserted, or its link deleted)"
                      if unlinked == 1 else
                      f"{unlinked} events from here on were never linked into the chain"
                      " (inserted, or their links deleted)")
        unlinked_from, unlinked = None, 0

    previous = GENESIS
    version_seen = 1
    checkpoint_seen = 0
    with connect() as conn, conn.transaction():
        # One snapshot for both cursors: appends committing meanwhile are not half seen.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        events = _stream(conn, "crm_verify_events",
                         f"SELECT notification_id, originator_id, originator_version, topic, state"
                         f" FROM {EVENTS_TABLE} ORDER BY notification_id")
        links = _stream(conn, "crm_verify_links",
                        f"SELECT notification_id, hash, link_version, subject_id, occurred_at, recorded_at,"
                        f" actor_id, checkpoint_at FROM {CHAIN_TABLE} ORDER BY notification_id")
        event = next(events, None)
        link_row = next(links, None)
        while event is not None or link_row is not None:
            e_pos = event[0] if event is not None else None
            l_pos = link_row[0] if link_row is not None else None
            if e_pos is not None and (l_pos is None or e_pos < l_pos):
                assert event is not None
                state = bytes(event[4])
                computed = link_hash(previous, e_pos, _uuid(event[1]), event[2], event[3], state,
                                     meta_of(state, checkpoint_seen))
                if unlinked_from is None:
                    unlinked_from = e_pos
                unlinked += 1
                previous = computed
                position, found_link = e_pos, computed
                event = next(events, None)
                report.events += 1
            else:
                end_unlinked()
                if l_pos is not None and (e_pos is None or l_pos < e_pos):
                    assert link_row is not None
                    found.add(l_pos, "event missing", "the chain links an event that is no longer stored")
                    previous = bytes(link_row[1])
                    position, found_link = l_pos, previous
                    link_row = next(links, None)
                else:
                    assert event is not None and link_row is not None and e_pos is not None
                    stored = bytes(link_row[1])
                    version, meta = int(link_row[2]), _meta(link_row)
                    state = bytes(event[4])
                    if version >= LINK_VERSION:
                        computed = link_hash(previous, e_pos, _uuid(event[1]), event[2], event[3], state, meta)
                        _check_references(e_pos, meta, checkpoint_seen, signed_positions,
                                          referenced_missing, found)
                        checkpoint_seen = max(checkpoint_seen, meta.checkpoint_at)
                    else:
                        computed = link_hash(previous, e_pos, _uuid(event[1]), event[2], event[3], state)
                        if version_seen >= LINK_VERSION:
                            found.add(e_pos, "link version went back",
                                      f"a version-{version} link after version-{version_seen} links")
                    if computed != stored:
                        found.add(e_pos, "broken link", _broken(meta, meta_of(state, meta.checkpoint_at)))
                        # Go on from the stored link, so one change is one finding.
                    elif version < LINK_VERSION and meta != (derived := meta_of(state)):
                        # A version-1 link does not cover the look-up columns: they must be
                        # the event's own.
                        found.add(e_pos, "look-up columns changed", _columns_detail(meta, derived))
                    version_seen = max(version_seen, version)
                    previous = stored
                    position, found_link = e_pos, computed
                    event = next(events, None)
                    link_row = next(links, None)
                    report.events += 1
                    if progress is not None and report.events % 100_000 == 0:
                        progress(report.events)
            report.head, report.head_hash = position, previous
            check_checkpoints(position, found_link)
        end_unlinked()
    if next_cp is not None:
        # Checkpoints past the end: the log lost its tail (positions are gap-free, so
        # the first one lost is the one after the end).
        found.add(report.head + 1, "log truncated",
                  f"the log ends at {report.head}; a checkpoint signed at {next_cp.signed_at}"
                  f" covers position {next_cp.notification_id}")
        check_checkpoints(2**62, None)
    _check_numbering(signed, referenced_missing, found)
    found.finish()
    report.seconds = time.perf_counter() - started
    return report


def _meta(row: tuple[Any, ...]) -> LinkMeta:
    subject = row[3]
    return LinkMeta(None if subject is None else _uuid(subject), row[4], row[5], row[6], int(row[7]))


def _check_references(position: int, meta: LinkMeta, seen: int, signed_positions: set[int],
                      missing: set[int], found: _Findings) -> None:
    """A link records the newest checkpoint when it was written: it must be stored, come
    before the link, and never be older than the one the link before recorded."""
    at = meta.checkpoint_at
    if at >= position or at < seen:
        found.add(position, "checkpoints out of order",
                  f"the link records a checkpoint at {at} after one at {seen} (written at {position})")
    elif at and at not in signed_positions and at not in missing:
        missing.add(at)
        found.add(at, "checkpoint missing",
                  f"the link at {position} was written after a checkpoint at this position was signed;"
                  " it is no longer stored")


def _columns_detail(meta: LinkMeta, derived: LinkMeta) -> str:
    names = {"subject_id": "subject", "occurred_at": "business time", "recorded_at": "recording time",
             "actor_id": "actor"}
    differ = [label for name, label in names.items() if getattr(meta, name) != getattr(derived, name)]
    return f"the chain's {', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from the stored event's"


def _broken(meta: LinkMeta, derived: LinkMeta) -> str:
    if meta != derived:
        return (_columns_detail(meta, derived) + " (an event moved to another customer, actor or time)")
    return "the stored event, or the one before it, was changed, removed, reordered or inserted"


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
