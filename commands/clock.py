"""Clocks and id sources, injected so tests control time and ids."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime):
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)


def random_ids() -> UUID:
    return uuid.uuid4()


class SequentialIds:
    """Deterministic ids (for demo data and tests): uuid5 of a namespace and a counter."""

    def __init__(self, namespace: str):
        self._ns = uuid.uuid5(uuid.NAMESPACE_URL, namespace)
        self._n = 0
        self._lock = threading.Lock()

    def __call__(self) -> UUID:
        with self._lock:
            self._n += 1
            return uuid.uuid5(self._ns, str(self._n))
