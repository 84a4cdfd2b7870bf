"""Records rebuilt from their events as they were at any moment, in both time axes.

``as_of`` is business time: only events whose ``occurred_at`` is at or before it count,
so a back-dated correction changes what was true then. ``as_known_at`` is recording
time: only events recorded by then count (what the system knew then). Events that count
are applied in the order they were stored (their version), the order the rules saw.

Snapshots and bitemporal queries. A snapshot is the state after versions 1..v, all of
them applied. It serves a query only if every one of those events counts for it, so
each snapshot keeps the latest ``occurred_at`` and ``recorded_at`` among its events:
the snapshot used is the newest whose maxima are at or before ``as_of`` and
``as_known_at``. Both maxima only grow with v, so the snapshots that qualify are a
prefix and one indexed query finds the best. The events after it are filtered on the
chain table's time columns in SQL, never cut off by version, so a back-dated event
stored long after the snapshot still counts. The cost of the choice: a query about a
business time earlier than most of the history (or one that a far back-dated event
falls into) starts from an early snapshot, and SQL filters the rest of the history.

Snapshots hold personal data (names, contacts), so they are sealed with the data
subject's key like the events are: once the key is destroyed they cannot be opened
and the record is rebuilt from its (then anonymous) events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.rows import tuple_row

from aggregates import AGGREGATE_TYPES, AUDIT_TYPES, IDENTITY_TYPES
from aggregates.base import Aggregate
from events.base import CrmEvent, UnknownEventType, event_type
from events.codec import EventCodec
from events.values import ContactPoint, PurchaseLine
from replay.audit import CHAIN_TABLE, EVENTS_TABLE, Connect

RECORD_TYPES = {**AGGREGATE_TYPES, **AUDIT_TYPES, **IDENTITY_TYPES}
SNAPSHOTS_TABLE = "crm_snapshots"
SNAPSHOT_EVERY = 200
#: Called for each event applied: (event, state before, aggregate after).
Observer = Callable[[CrmEvent, dict[str, Any], Aggregate], None]


def create_tables(connect: Connect) -> None:
    with connect() as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SNAPSHOTS_TABLE} ("
            " aggregate_id uuid NOT NULL,"
            " version int NOT NULL,"
            " position bigint NOT NULL,"
            " max_occurred_at timestamptz NOT NULL,"
            " max_recorded_at timestamptz NOT NULL,"
            " subject_id uuid NOT NULL,"
            " sealed boolean NOT NULL,"
            " state bytea NOT NULL,"
            " mac bytea,"
            " PRIMARY KEY (aggregate_id, version))"
        )
        # Snapshots written before they carried a MAC are dropped: a cache, made again.
        conn.execute(f"ALTER TABLE {SNAPSHOTS_TABLE} ADD COLUMN IF NOT EXISTS mac bytea")
        conn.execute(f"DELETE FROM {SNAPSHOTS_TABLE} WHERE mac IS NULL")


# -- applying events without the write side's version check --------------------------
def apply_event(aggregate: Aggregate | None, event: CrmEvent) -> Aggregate | None:
    """Apply one event; versions may skip (events that do not count were left out).
    Events before the creating one leave the record absent (it did not exist yet)."""
    if aggregate is None:
        if not event.creates:
            return None
        cls = RECORD_TYPES[event.aggregate_type]
        aggregate = cls.__new__(cls)
        Aggregate.__init__(aggregate, event.originator_id)
    applier = aggregate._appliers.get(type(event))
    if applier is None:
        raise TypeError(f"{type(aggregate).__name__} cannot apply {type(event).__name__}")
    applier(aggregate, event)
    aggregate.version = event.originator_version
    occurred = event.meta.occurred_at
    if aggregate.created_on is None:
        aggregate.created_on = occurred
    if aggregate.modified_on is None or occurred > aggregate.modified_on:
        aggregate.modified_on = occurred
    return aggregate


def fields_of(aggregate: Aggregate | None) -> dict[str, Any]:
    """The record's fields with containers copied one level deep: a cheap 'before'
    (appliers replace or add entries, they never change an entry in place)."""
    if aggregate is None:
        return {}
    out: dict[str, Any] = {}
    for k, v in vars(aggregate).items():
        if k.startswith("_"):
            continue
        out[k] = dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
    return out


_UNCHANGED_META = frozenset({"id", "version", "created_on", "modified_on"})
_MISSING = object()


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Field by field: what differs, as {"field", "before", "after"}; entries of a map
    (contacts, purchases, consents, preferences) one by one as ``field.key``."""
    out: list[dict[str, Any]] = []
    for name in sorted(set(before) | set(after)):
        if name in _UNCHANGED_META:
            continue
        b, a = before.get(name, _MISSING), after.get(name, _MISSING)
        if b is a:
            continue
        if isinstance(b, dict) and isinstance(a, dict):
            if b == a:
                continue
            for key in sorted(set(b) | set(a), key=str):
                bb, aa = b.get(key), a.get(key)
                if bb != aa:
                    out.append({"field": f"{name}.{key}", "before": bb, "after": aa})
            continue
        b = None if b is _MISSING else b
        a = None if a is _MISSING else a
        if b != a:
            out.append({"field": name, "before": b, "after": a})
    return out


# -- the stored form of a snapshot ------------------------------------------------------
_VALUE_TYPES: dict[str, type[Any]] = {"ContactPoint": ContactPoint, "PurchaseLine": PurchaseLine}


def _enc(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Decimal):
        return {"$d": str(v)}
    if isinstance(v, datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, date):
        return {"$date": v.isoformat()}
    if isinstance(v, UUID):
        return {"$u": str(v)}
    if isinstance(v, dict):
        return {"$map": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"$t": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if dataclasses.is_dataclass(v) and type(v).__name__ in _VALUE_TYPES:
        return {"$v": type(v).__name__,
                "f": {f.name: _enc(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    raise TypeError(f"cannot snapshot a {type(v).__name__}")


def _dec(d: dict[str, Any]) -> Any:
    """``json.loads`` object hook: tagged values back to Python, innermost first."""
    if len(d) == 1:
        (tag, v), = d.items()
        if tag == "$d":
            return Decimal(v)
        if tag == "$dt":
            return datetime.fromisoformat(v)
        if tag == "$date":
            return date.fromisoformat(v)
        if tag == "$u":
            return UUID(v)
        if tag == "$map":
            return {_hashable(k): x for k, x in v}
        if tag == "$t":
            return tuple(v)
    elif "$v" in d:
        return _VALUE_TYPES[d["$v"]](**d["f"])
    return d


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _subject(aggregate: Aggregate) -> UUID:
    customer = getattr(aggregate, "customer_id", None)
    return customer if isinstance(customer, UUID) else aggregate.id


def _aad(aggregate_id: UUID, version: int) -> bytes:
    return f"snapshot|{aggregate_id}|{version}".encode()


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def snapshot_mac(key: bytes, aggregate_id: UUID, version: int, position: int, max_occurred: datetime,
                 max_recorded: datetime, subject: UUID, sealed: bool, state: bytes) -> bytes:
    """HMAC-SHA256 over every column of a snapshot row: the times that pick the snapshot
    for an as-of read, the subject erasure finds it by, and the state. A row changed or
    written outside the CRM does not verify and is not used (the record is rebuilt from
    its events, which the chain covers)."""
    text = "|".join((str(aggregate_id), str(version), str(position), _utc(max_occurred),
                     _utc(max_recorded), str(subject), "1" if sealed else "0",
                     hashlib.sha256(state).hexdigest()))
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass
class _Running:
    aggregate: Aggregate | None
    version: int
    max_occurred: datetime | None
    max_recorded: datetime | None


class Replayer:
    """Rebuilds records from the event store, with snapshots for long histories."""

    def __init__(self, connect: Connect, codec: EventCodec, *, snapshot_every: int = SNAPSHOT_EVERY,
                 snapshots: bool = True):
        self.connect = connect
        self.codec = codec
        self.snapshot_every = snapshot_every
        self.snapshots = snapshots
        self._mac_key = codec.keys.derived_key(b"crm snapshots")

    # -- snapshots -------------------------------------------------------------------
    def _seal(self, aggregate: Aggregate) -> tuple[bool, bytes]:
        doc = json.dumps({"type": aggregate.type_name,
                          "state": {k: _enc(v) for k, v in vars(aggregate).items()
                                    if not k.startswith("_")}},
                         separators=(",", ":")).encode()
        key = self.codec.keys.key_for(_subject(aggregate), create=False)
        if key is None:  # no personal data was ever sealed for it (or it was erased)
            return False, doc
        nonce = os.urandom(12)
        return True, nonce + AESGCM(key.key).encrypt(nonce, doc, _aad(aggregate.id, aggregate.version))

    def _open(self, aggregate_id: UUID, version: int, subject: UUID, sealed: bool,
              state: bytes) -> Aggregate | None:
        if sealed:
            key = self.codec.keys.key_for(subject, create=False)
            if key is None:  # erased since: rebuild from the events
                return None
            try:
                state = AESGCM(key.key).decrypt(state[:12], state[12:], _aad(aggregate_id, version))
            except InvalidTag:
                return None
        doc = json.loads(state, object_hook=_dec)
        cls = RECORD_TYPES[doc["type"]]
        aggregate = cls.__new__(cls)
        Aggregate.__init__(aggregate, aggregate_id)
        for k, v in doc["state"].items():
            setattr(aggregate, k, v)
        return aggregate

    def _best_snapshot(self, aggregate_id: UUID, *, as_of: datetime | None, as_known_at: datetime | None,
                       max_version: int | None) -> _Running | None:
        if not self.snapshots:
            return None
        where = ["aggregate_id = %s"]
        params: list[Any] = [aggregate_id]
        if as_of is not None:
            where.append("max_occurred_at <= %s")
            params.append(as_of)
        if as_known_at is not None:
            where.append("max_recorded_at <= %s")
            params.append(as_known_at)
        if max_version is not None:
            where.append("version <= %s")
            params.append(max_version)
        with self.connect() as conn:
            rows = conn.cursor(row_factory=tuple_row).execute(
                f"SELECT version, position, max_occurred_at, max_recorded_at, subject_id, sealed, state, mac"
                f" FROM {SNAPSHOTS_TABLE}"
                f" WHERE {' AND '.join(where)} ORDER BY version DESC LIMIT 1", params).fetchall()
        for version, position, max_occ, max_rec, subject, sealed, state, mac in rows:
            expected = snapshot_mac(self._mac_key, aggregate_id, version, position, max_occ, max_rec,
                                    subject, sealed, bytes(state))
            if mac is None or not hmac.compare_digest(bytes(mac), expected):
                return None  # not one the CRM wrote as it is: rebuild from the events
            # Unopenable (the customer's key was destroyed): rebuild from the events.
            aggregate = self._open(aggregate_id, version, subject, sealed, bytes(state))
            if aggregate is not None:
                return _Running(aggregate, version, max_occ, max_rec)
        return None

    def refresh_snapshots(self, aggregate_id: UUID) -> int:
        """Snapshot the record every ``snapshot_every`` versions up to now; how many new."""
        if not self.snapshots:
            return 0
        with self.connect() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            last = cur.execute(
                f"SELECT COALESCE(max(version), 0) FROM {SNAPSHOTS_TABLE} WHERE aggregate_id = %s",
                (aggregate_id,), prepare=True).fetchone()
            head = cur.execute(
                f"SELECT COALESCE(max(originator_version), 0) FROM {EVENTS_TABLE} WHERE originator_id = %s",
                (aggregate_id,), prepare=True).fetchone()
        assert last is not None and head is not None
        if head[0] - last[0] < self.snapshot_every:
            return 0
        running = self._best_snapshot(aggregate_id, as_of=None, as_known_at=None, max_version=None) \
            or _Running(None, 0, None, None)
        made: list[tuple[Any, ...]] = []

        def keep(position: int) -> None:
            agg = running.aggregate
            if agg is not None and agg.version % self.snapshot_every == 0 and agg.version > last[0]:
                assert running.max_occurred is not None and running.max_recorded is not None
                sealed, state = self._seal(agg)
                subject = _subject(agg)
                made.append((aggregate_id, agg.version, position, running.max_occurred,
                             running.max_recorded, subject, sealed, state,
                             snapshot_mac(self._mac_key, aggregate_id, agg.version, position,
                                          running.max_occurred, running.max_recorded, subject, sealed, state)))

        self._replay(aggregate_id, running, as_of=None, as_known_at=None, max_version=None, after_each=keep)
        if made:
            with self.connect() as conn:
                conn.cursor().executemany(
                    f"INSERT INTO {SNAPSHOTS_TABLE} (aggregate_id, version, position, max_occurred_at,"
                    " max_recorded_at, subject_id, sealed, state, mac) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING", made)
        return len(made)

    # -- rebuilding ------------------------------------------------------------------
    def _replay(self, aggregate_id: UUID, running: _Running, *, as_of: datetime | None,
                as_known_at: datetime | None, max_version: int | None,
                observe: Observer | None = None, after_each: Callable[[int], None] | None = None,
                observe_from: datetime | None = None, observe_versions: set[int] | None = None) -> None:
        where = ["e.originator_id = %s", "e.originator_version > %s"]
        params: list[Any] = [aggregate_id, running.version]
        if as_of is not None:
            where.append("c.occurred_at <= %s")
            params.append(as_of)
        if as_known_at is not None:
            where.append("c.recorded_at <= %s")
            params.append(as_known_at)
        if max_version is not None:
            where.append("e.originator_version <= %s")
            params.append(max_version)
        with self.connect() as conn:
            rows = conn.cursor(row_factory=tuple_row).execute(
                f"SELECT e.notification_id, e.originator_version, e.topic, e.state"
                f" FROM {EVENTS_TABLE} e JOIN {CHAIN_TABLE} c USING (notification_id)"
                f" WHERE {' AND '.join(where)} ORDER BY e.originator_version", params).fetchall()
        decoded = self.codec.decode_many([(aggregate_id, r[1], r[2], bytes(r[3])) for r in rows])
        for row, event in zip(rows, decoded, strict=True):
            if isinstance(event, Exception):
                raise event
            watched = (observe is not None
                       and (observe_from is None or event.meta.occurred_at > observe_from)
                       and (observe_versions is None or event.originator_version in observe_versions))
            before = fields_of(running.aggregate) if watched else {}
            running.aggregate = apply_event(running.aggregate, event)
            running.version = event.originator_version
            occurred, recorded = event.meta.occurred_at, event.meta.recorded_at
            if running.max_occurred is None or occurred > running.max_occurred:
                running.max_occurred = occurred
            if running.max_recorded is None or recorded > running.max_recorded:
                running.max_recorded = recorded
            if watched and observe is not None and running.aggregate is not None:
                observe(event, before, running.aggregate)
            if after_each is not None:
                after_each(row[0])

    def state(self, aggregate_id: UUID, *, as_of: datetime | None = None,
              as_known_at: datetime | None = None, max_version: int | None = None,
              observe: Observer | None = None, observe_after: datetime | None = None) -> Aggregate | None:
        """The record as it was (None: it did not exist then, or never did).

        ``observe`` sees every event applied whose business time is after
        ``observe_after``; the snapshot used then holds only events at or before it.
        """
        self.refresh_snapshots(aggregate_id)
        if observe is not None and observe_after is None:
            running = _Running(None, 0, None, None)
        else:
            snapshot_as_of = observe_after if observe is not None else as_of
            running = self._best_snapshot(aggregate_id, as_of=snapshot_as_of, as_known_at=as_known_at,
                                          max_version=max_version) or _Running(None, 0, None, None)
        self._replay(aggregate_id, running, as_of=as_of, as_known_at=as_known_at,
                     max_version=max_version, observe=observe, observe_from=observe_after)
        return running.aggregate

    def changes_at(self, aggregate_id: UUID, versions: set[int]) -> dict[int, list[dict[str, Any]]]:
        """The field-level change each of these versions made, as stored (log order)."""
        found: dict[int, list[dict[str, Any]]] = {}

        def observe(event: CrmEvent, before: dict[str, Any], after: Aggregate) -> None:
            found[event.originator_version] = field_changes(before, fields_of(after))

        self.refresh_snapshots(aggregate_id)
        running = self._best_snapshot(aggregate_id, as_of=None, as_known_at=None,
                                      max_version=min(versions) - 1) or _Running(None, 0, None, None)
        self._replay(aggregate_id, running, as_of=None, as_known_at=None, max_version=max(versions),
                     observe=observe, observe_versions=versions)
        return found

    def kind_of(self, aggregate_id: UUID) -> str | None:
        """The aggregate type of a record (from its first event); None if it has none."""
        with self.connect() as conn:
            row = conn.cursor(row_factory=tuple_row).execute(
                f"SELECT topic FROM {EVENTS_TABLE} WHERE originator_id = %s"
                " ORDER BY originator_version LIMIT 1", (aggregate_id,), prepare=True).fetchone()
        if row is None:
            return None
        try:
            return event_type(row[0]).aggregate_type
        except UnknownEventType:
            return None


def history(replayer: Replayer, aggregate_id: UUID, *, start: datetime | None, end: datetime | None,
            as_known_at: datetime | None = None) -> tuple[Aggregate | None, Aggregate | None,
                                                          list[tuple[CrmEvent, list[dict[str, Any]]]]]:
    """The record at ``start`` and at ``end`` (business time), and each event between them
    (``start`` < occurred_at <= ``end``) with the change it made, in stored order."""
    before = replayer.state(aggregate_id, as_of=start, as_known_at=as_known_at) if start is not None else None
    seen: list[tuple[CrmEvent, list[dict[str, Any]]]] = []

    def observe(event: CrmEvent, prior: dict[str, Any], after: Aggregate) -> None:
        seen.append((event, field_changes(prior, fields_of(after))))

    after = replayer.state(aggregate_id, as_of=end, as_known_at=as_known_at, observe=observe,
                           observe_after=start)
    return before, after, seen


def positions(replayer: Replayer, aggregate_id: UUID) -> dict[int, int]:
    """Log position of each of the record's events, by version."""
    with replayer.connect() as conn:
        rows = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT originator_version, notification_id FROM {EVENTS_TABLE} WHERE originator_id = %s",
            (aggregate_id,)).fetchall()
    return {int(v): int(p) for v, p in rows}
