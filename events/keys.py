"""Per-customer data keys: personal data in events is sealed with its subject's key.

Destroying a subject's key makes every sealed field of that subject unreadable in the
event store, while the events themselves (ids, types, amounts, stages, dates) remain.
Keys are stored wrapped (AES-GCM) with a key-encryption key from the settings, so a
copy of the database alone does not reveal them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SubjectKeyDestroyed(Exception):
    """The data subject's key was destroyed (erasure); nothing new can be sealed."""

    def __init__(self, subject_id: UUID):
        super().__init__(f"the personal-data key of {subject_id} was destroyed")
        self.subject_id = subject_id


@dataclass(frozen=True)
class SubjectKey:
    kid: str
    key: bytes

    @cached_property
    def aead(self) -> AESGCM:
        """The key's cipher, made once (decoding a batch opens many events per key)."""
        return AESGCM(self.key)


class KeyRing(Protocol):
    def key_for(self, subject_id: UUID, *, create: bool, new: bool = False) -> SubjectKey | None:
        """The subject's key; a new one if ``create`` and none exists yet (``new``: the
        subject is created by the event being sealed, so it cannot have a key yet).

        ``None`` when the key was destroyed (or never created and not ``create``).
        Raises ``SubjectKeyDestroyed`` when ``create`` and the key was destroyed.
        """
        ...

    def destroy(self, subject_id: UUID) -> bool:
        """Destroy the subject's key forever; True if there was one."""
        ...

    def derived_key(self, label: bytes) -> bytes:
        """A key for one purpose (e.g. authenticating cached snapshots), stable for as
        long as the master key is."""
        ...


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class KeyWrapper:
    """Wraps data keys with the key-encryption key, bound to their subject."""

    def __init__(self, kek: bytes):
        if len(kek) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(kek)
        self._derive = hmac.new(kek, b"crm derived keys", hashlib.sha256).digest()

    def derived_key(self, label: bytes) -> bytes:
        """A 32-byte key for one purpose, derived from the key-encryption key."""
        return hmac.new(self._derive, label, hashlib.sha256).digest()

    def wrap(self, subject_id: UUID, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, key, subject_id.bytes)

    def unwrap(self, subject_id: UUID, wrapped: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:12], wrapped[12:], subject_id.bytes)


class _Cache:
    """A small thread-safe LRU of unwrapped keys, each trusted for ``ttl`` seconds.

    The TTL bounds how long another process may still read a customer's personal data
    after their key was destroyed; sealing new data never relies on the cache (the
    event store checks the key in the events' own transaction).
    """

    def __init__(self, ttl: float, maxsize: int = 250_000):
        self._data: OrderedDict[UUID, tuple[float, SubjectKey]] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize
        self._ttl = ttl

    def get(self, subject_id: UUID) -> SubjectKey | None:
        with self._lock:
            entry = self._data.get(subject_id)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self._ttl:
                del self._data[subject_id]
                return None
            self._data.move_to_end(subject_id)
            return entry[1]

    def put(self, subject_id: UUID, key: SubjectKey) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._data[subject_id] = (time.monotonic(), key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def drop(self, subject_id: UUID) -> None:
        with self._lock:
            self._data.pop(subject_id, None)


class InMemoryKeyRing:
    """Keys in process memory: for unit tests only."""

    def __init__(self) -> None:
        self._keys: dict[UUID, SubjectKey] = {}
        self._destroyed: set[UUID] = set()
        self._lock = threading.Lock()
        self._secret = os.urandom(32)

    def derived_key(self, label: bytes) -> bytes:
        return hmac.new(self._secret, label, hashlib.sha256).digest()

    def key_for(self, subject_id: UUID, *, create: bool, new: bool = False) -> SubjectKey | None:
        with self._lock:
            if subject_id in self._destroyed:
                if create:
                    raise SubjectKeyDestroyed(subject_id)
                return None
            key = self._keys.get(subject_id)
            if key is None and create:
                key = SubjectKey(kid=subject_id.hex, key=new_data_key())
                self._keys[subject_id] = key
            return key

    def destroy(self, subject_id: UUID) -> bool:
        with self._lock:
            self._destroyed.add(subject_id)
            return self._keys.pop(subject_id, None) is not None

    def destroyed(self, subject_id: UUID) -> bool | None:
        """Whether the subject's key was destroyed (None: the subject has no key)."""
        with self._lock:
            if subject_id in self._destroyed:
                return True
            return False if subject_id in self._keys else None


class PostgresKeyRing:
    """Keys in their own PostgreSQL table, wrapped with the key-encryption key.

    ``connect`` is a context manager factory yielding an autocommit psycopg connection
    (the event store's pool). A destroyed key leaves a row with no key material, so a
    destroyed subject can never be given a fresh key by mistake. Destruction takes the
    events table's write lock, so it cannot slip between an append's key check and its
    commit (see ``CrmPostgresRecorder``).
    """

    TABLE = "crm_subject_keys"

    def __init__(self, connect: Any, wrapper: KeyWrapper, *, events_table: str = "crm_events",
                 cache_seconds: float = 5.0):
        self._connect = connect
        self._wrapper = wrapper
        self._events_table = events_table
        self._cache = _Cache(cache_seconds)
        # New keys wait here until the append that first uses them stores them, in the
        # events' own transaction: a refused command leaves no key behind.
        self._pending: dict[UUID, tuple[SubjectKey, bytes]] = {}
        self._pending_lock = threading.Lock()

    def derived_key(self, label: bytes) -> bytes:
        return self._wrapper.derived_key(label)

    def create_table(self) -> None:
        with self._connect() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} ("
                " subject_id uuid PRIMARY KEY,"
                " wrapped_key bytea,"
                " created_at timestamptz NOT NULL DEFAULT now(),"
                " destroyed_at timestamptz)"
            )

    def key_for(self, subject_id: UUID, *, create: bool, new: bool = False) -> SubjectKey | None:
        cached = self._cache.get(subject_id)
        if cached is not None:
            return cached
        with self._pending_lock:
            pending = self._pending.get(subject_id)
        if pending is not None:
            return pending[0]
        row = None
        if not new:  # a subject created by this very append has no key yet: don't look
            with self._connect() as conn:
                row = conn.execute(
                    f"SELECT wrapped_key FROM {self.TABLE} WHERE subject_id = %s",
                    (subject_id,),
                    prepare=True,
                ).fetchone()
        if row is None:
            if not create:
                return None
            key = SubjectKey(kid=subject_id.hex, key=new_data_key())
            with self._pending_lock:
                self._pending.setdefault(
                    subject_id, (key, self._wrapper.wrap(subject_id, key.key))
                )
                return self._pending[subject_id][0]
        wrapped_key = _col(row, "wrapped_key", 0)
        if wrapped_key is None:
            if create:
                raise SubjectKeyDestroyed(subject_id)
            return None
        key = SubjectKey(
            kid=subject_id.hex, key=self._wrapper.unwrap(subject_id, bytes(wrapped_key))
        )
        self._cache.put(subject_id, key)
        return key

    def prefetch(self, subjects: set[UUID]) -> None:
        """Load (into the cache) the keys of these subjects not cached yet, in one query."""
        wanted = [s for s in subjects if self._cache.get(s) is None]
        if not wanted:
            return
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT subject_id, wrapped_key FROM {self.TABLE} WHERE subject_id = ANY(%s)",
                (wanted,),
            ).fetchall()
        for row in rows:
            wrapped = _col(row, "wrapped_key", 1)
            if wrapped is not None:
                subject = _col(row, "subject_id", 0)
                self._cache.put(subject, SubjectKey(
                    kid=subject.hex, key=self._wrapper.unwrap(subject, bytes(wrapped))))

    def pending_subjects(self) -> set[UUID]:
        with self._pending_lock:
            return set(self._pending)

    def pending_rows(self, subjects: set[UUID]) -> list[tuple[UUID, bytes]]:
        """New keys of these subjects, wrapped, for the append's transaction to store."""
        with self._pending_lock:
            return [(s, self._pending[s][1]) for s in sorted(subjects) if s in self._pending]

    def settle(self, subjects: set[UUID], *, stored: bool) -> None:
        """After an append: its new keys are now stored (or, if it failed, forgotten)."""
        with self._pending_lock:
            for s in subjects:
                entry = self._pending.pop(s, None)
                if entry is not None and stored:
                    self._cache.put(s, entry[0])

    def destroy(self, subject_id: UUID) -> bool:
        self._cache.drop(subject_id)
        with self._connect() as conn, conn.transaction():
            conn.execute(f"LOCK TABLE {self._events_table} IN EXCLUSIVE MODE")
            row = conn.execute(
                f"SELECT wrapped_key FROM {self.TABLE} WHERE subject_id = %s FOR UPDATE",
                (subject_id,),
            ).fetchone()
            conn.execute(
                f"INSERT INTO {self.TABLE} (subject_id, wrapped_key, destroyed_at)"
                " VALUES (%s, NULL, now())"
                " ON CONFLICT (subject_id) DO UPDATE SET wrapped_key = NULL,"
                f" destroyed_at = COALESCE({self.TABLE}.destroyed_at, now())",
                (subject_id,),
            )
        self._cache.drop(subject_id)
        return row is not None and _col(row, "wrapped_key", 0) is not None


def _col(row: Any, name: str, index: int) -> Any:
    return row[name] if isinstance(row, dict) else row[index]
