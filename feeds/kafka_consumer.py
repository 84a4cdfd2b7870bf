"""The reference consumer of the Kafka feed: at-least-once in, each event once out.

The publisher delivers at least once: a record may arrive twice (a batch sent again
after a broker stall or a publisher crash, or a deliberate `crm kafka republish`).
Every envelope carries the event id as ``id``; this consumer hands each id on once.

Seen ids are kept in SQLite (a file with ``state``, else in memory), bounded to the
last ``window`` ids. Why a window is enough: duplicates from the publisher are re-sends
of an unacknowledged batch (at most one batch, 5,000 events by default, plus what the
producer had in flight), and duplicates from this consumer's own restart are the
records after its last committed offset (one poll). Both arrive within a few thousand
records of the original, so the default window of 200,000 ids is a wide margin. A
republish from far back replays older events on purpose: a consumer rebuilding from it
should start with a fresh state. Ids are stored, and their transaction committed,
before the offsets are committed to Kafka, so a crash in between only re-reads records
whose ids are already known.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SeenIds:
    """The last ``window`` event ids handed on, in SQLite."""

    def __init__(self, path: Path | None = None, window: int = 200_000):
        if window < 1:
            raise ValueError("the window must be at least 1")
        self.window = window
        self.db = sqlite3.connect(str(path) if path is not None else ":memory:")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                        " event_id TEXT NOT NULL UNIQUE)")
        self.db.commit()

    def first_time(self, event_id: str) -> bool:
        """True (and remembered) if ``event_id`` was not seen within the window."""
        cur = self.db.execute("INSERT OR IGNORE INTO seen (event_id) VALUES (?)", (event_id,))
        return cur.rowcount == 1

    def commit(self) -> None:
        row = self.db.execute("SELECT max(seq) FROM seen").fetchone()
        if row and row[0] is not None:
            self.db.execute("DELETE FROM seen WHERE seq <= ?", (int(row[0]) - self.window,))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


@dataclass
class ConsumeSummary:
    received: int = 0
    handed_on: int = 0
    duplicates: int = 0
    invalid: int = 0


def consume(bootstrap_servers: str, topics: Iterable[str], group_id: str,
            handle: Callable[[dict[str, Any]], None], *, seen: SeenIds,
            idle_seconds: float | None = None, max_events: int | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> ConsumeSummary:
    """Read ``topics`` as consumer group ``group_id`` and call ``handle`` once per event id.

    Stops after ``idle_seconds`` without records, after ``max_events`` handed on, or
    when ``should_stop()`` says so. Offsets are committed after each poll's records
    were handled and their ids stored.
    """
    import time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers.split(","),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"crm-consumer-{group_id}",
    )
    summary = ConsumeSummary()
    last_record = time.monotonic()
    try:
        while not should_stop():
            polled = consumer.poll(timeout_ms=500, max_records=2000)
            if not polled:
                if not consumer.assignment():
                    last_record = time.monotonic()  # still joining the group: not idle
                elif idle_seconds is not None and time.monotonic() - last_record >= idle_seconds:
                    break
                continue
            last_record = time.monotonic()
            for records in polled.values():
                for record in records:
                    summary.received += 1
                    try:
                        envelope = json.loads(record.value)
                        event_id = str(envelope["id"])
                    except (ValueError, KeyError, TypeError):
                        summary.invalid += 1
                        continue
                    if not seen.first_time(event_id):
                        summary.duplicates += 1
                        continue
                    handle(envelope)
                    summary.handed_on += 1
            seen.commit()
            consumer.commit()
            if max_events is not None and summary.handed_on >= max_events:
                break
    finally:
        consumer.close()
    return summary
