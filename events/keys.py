"""Per-customer data keys: personal data in events is sealed with its subject's key.

Destroying a subject's key makes every sealed field of that subject unreadable in the
event store, while the events themselves (ids, types, amounts, stages, dates) remain.
Keys are stored wrapped (AES-GCM) with a key-encryption key from the settings, so a
copy of the database alone does not reveal them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
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


class KeyRing(Protocol):
    def key_for(self, subject_id: UUID, *, create: bool) -> SubjectKey | None:
        """The subject's key; a new one if ``create`` and none exists yet.

        ``None`` when the key was destroyed (or never created and not ``create``).
        Raises ``SubjectKeyDestroyed`` when ``create`` and the key was destroyed.
        """
        ...

    def destroy(self, subject_id: UUID) -> bool:
        """Destroy the subject's key forever; True if there was one."""
        ...


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class KeyWrapper:
    """Wraps data keys with the key-encryption key, bound to their subject."""

    def __init__(self, kek: bytes):
        if len(kek) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(kek)

    def wrap(self, subject_id: UUID, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, key, subject_id.bytes)

    def unwrap(self, subject_id: UUID, wrapped: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:12], wrapped[12:], subject_id.bytes)


class _Cache:
    """A small thread-safe LRU of unwrapped keys."""

    def __init__(self, maxsize: int = 10_000):
        self._data: OrderedDict[UUID, SubjectKey] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def get(self, subject_id: UUID) -> SubjectKey | None:
        with self._lock:
            key = self._data.get(subject_id)
            if key is not None:
                self._data.move_to_end(subject_id)
            return key

    def put(self, subject_id: UUID, key: SubjectKey) -> None:
        with self._lock:
            self._data[subject_id] = key
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

    def key_for(self, subject_id: UUID, *, create: bool) -> SubjectKey | None:
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


class PostgresKeyRing:
    """Keys in their own PostgreSQL table, wrapped with the key-encryption key.

    ``connect`` is a context manager factory yielding a psycopg connection (the event
    store's pool). A destroyed key leaves a row with no key material, so a destroyed
    subject can never be given a fresh key by mistake.
    """

    TABLE = "crm_subject_keys"

    def __init__(self, connect: Any, wrapper: KeyWrapper):
        self._connect = connect
        self._wrapper = wrapper
        self._cache = _Cache()

    def create_table(self) -> None:
        with self._connect() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} ("
                " subject_id uuid PRIMARY KEY,"
                " wrapped_key bytea,"
                " created_at timestamptz NOT NULL DEFAULT now(),"
                " destroyed_at timestamptz)"
            )

    def key_for(self, subject_id: UUID, *, create: bool) -> SubjectKey | None:
        cached = self._cache.get(subject_id)
        if cached is not None:
            return cached
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT wrapped_key, destroyed_at FROM {self.TABLE} WHERE subject_id = %s",
                (subject_id,),
            ).fetchone()
            if row is None and create:
                wrapped = self._wrapper.wrap(subject_id, new_data_key())
                conn.execute(
                    f"INSERT INTO {self.TABLE} (subject_id, wrapped_key) VALUES (%s, %s)"
                    " ON CONFLICT (subject_id) DO NOTHING",
                    (subject_id, wrapped),
                )
                row = conn.execute(
                    f"SELECT wrapped_key, destroyed_at FROM {self.TABLE}"
                    " WHERE subject_id = %s",
                    (subject_id,),
                ).fetchone()
        if row is None:
            return None
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

    def destroy(self, subject_id: UUID) -> bool:
        self._cache.drop(subject_id)
        with self._connect() as conn:
            cur = conn.execute(
                f"INSERT INTO {self.TABLE} (subject_id, wrapped_key, destroyed_at)"
                " VALUES (%s, NULL, now())"
                " ON CONFLICT (subject_id) DO UPDATE"
                " SET wrapped_key = NULL, destroyed_at = COALESCE("
                f"  {self.TABLE}.destroyed_at, now())"
                f" RETURNING (xmax <> 0) AS existed",
                (subject_id,),
            )
            row = cur.fetchone()
        return bool(row and _col(row, "existed", 0))


def _col(row: Any, name: str, index: int) -> Any:
    return row[name] if isinstance(row, dict) else row[index]
