"""Garbage-collector settings for catching up a long log.

A catch-up allocates millions of short-lived objects (decoded events, row dicts) while
it keeps many long-lived ones (remembered rows, subject keys). With CPython's default
thresholds the cyclic collector then runs so often over the growing heap that it took
about 45 % of the runner's CPU on a 300,000-event catch-up (measured: 134 against 74
µs of Python CPU per event). Nothing a runner makes is cyclic garbage that needs the
collector (reference counting frees it), so while any catch-up runs in the process the
collector runs far less often; the previous thresholds come back when the last ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: allocations before a young collection; young collections before a middle one;
#: middle ones before a full one
RELAXED = (100_000, 50, 100)

_lock = threading.Lock()
_users = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def relaxed_gc() -> Iterator[None]:
    """Collect garbage rarely for the duration (shared by concurrent users)."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(*RELAXED)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
