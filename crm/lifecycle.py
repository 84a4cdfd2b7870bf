"""Process life of `crm serve`: one server per data directory, and a stop that is bounded.

``DataDirLock`` holds an exclusive ``flock`` on ``<data dir>/crm.lock`` for the life of the
process (the kernel releases it when the process ends, however it ends, so a killed
server never leaves a stale lock). ``Watchdog`` ends the process with ``os._exit`` when a
stop takes longer than its bound, whatever the database or a thread is doing.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("crm")

LOCK_FILE = "crm.lock"


class AlreadyRunning(RuntimeError):
    """Another process holds the data directory's lock."""


class DataDirLock:
    """An exclusive lock on the data directory, held until the process ends."""

    def __init__(self, data_dir: Path):
        self.path = data_dir.resolve() / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another `crm serve` (pid {holder}) is running on the data directory "
                f"{self.path.parent} (it holds {self.path}); stop it first, or use another "
                "CRM_DATA_DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


class Watchdog:
    """Exits the process ``seconds`` after it is armed, unless it has exited by then."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._armed = threading.Event()
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._armed.is_set()

    def arm(self, why: str) -> None:
        """Start the countdown (again: no effect).

        Called from signal handlers, which run in the main thread between any two of its
        bytecodes -- possibly while it holds the log's lock or this one -- so it neither
        logs nor waits for a lock here: the countdown's thread says why it is stopping."""
        if not self._lock.acquire(blocking=False):
            return  # being armed just now
        try:
            if self._armed.is_set():
                return
            self._armed.set()
        finally:
            self._lock.release()
        threading.Thread(target=self._countdown, args=(why,), name="crm-stop-watchdog", daemon=True).start()

    def _countdown(self, why: str) -> None:
        log.info("stopping", reason=why, within_seconds=self.seconds)
        time.sleep(self.seconds)
        log.error("stop took too long: exiting now", seconds=self.seconds)
        for handler in list(_last_words):
            try:
                handler()
            except Exception:  # noqa: BLE001, S110 -- exiting regardless
                pass
        os._exit(1)


#: Quick clean-ups to try before the watchdog ends the process (each must not block).
_last_words: list[Any] = []


def on_forced_exit(handler: Any) -> None:
    _last_words.append(handler)


def interrupt_on_signals(watchdog: Watchdog) -> None:
    """SIGTERM and SIGINT outside the HTTP server's own handling (start-up, demo loading,
    closing): arm the watchdog and interrupt the main thread."""

    def handler(signum: int, frame: Any) -> None:
        watchdog.arm(signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
