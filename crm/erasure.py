"""The right to be forgotten: one customer's personal data erased from every store.

The order matters, and every step after the first is safe to run again:

1. the customer's personal values are read (in memory only) to search the stores that
   hold copies by value (DuckDB, Parquet);
2. ``CustomerPersonalDataErased`` is recorded on the customer (who, when, why; no
   personal data), through the command service like any command (Idempotency-Key);
   from then on the record refuses every change;
3. the customer is written to the erasure ledger, a file outside the database, so a
   restored backup can destroy the key again;
4. the customer's key is destroyed: their personal fields in stored events and
   snapshots can no longer be read;
5. after the key cache time (no process can still hold the key), the PostgreSQL copies
   are cleaned (read models, automation, parked events, reservations, idempotency
   fingerprints, snapshots) and the touched tables vacuumed;
6. the analytics file and the recorded Parquet exports are searched and cleaned;
7. the erasure event reaches Kafka through the publisher (the receipt says whether it
   was published within the wait, or is queued).

The receipt is kept in ``crm_erasures`` (a repeat with the same Idempotency-Key gets it
back). Nothing in it is personal data.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import psycopg
from psycopg.types.json import Jsonb

import projections
from aggregates.customer import Customer
from aggregates.errors import NotFound
from commands.application import CommandService, CrmApplication, Principal, Request
from commands.customer import EraseCustomerPersonalData
from analytics.erasure import erase_from_duckdb, erase_from_exports, needles_of
from analytics.store import AnalyticsConfig, AnalyticsProjection, NotLeader
from projections.erasure import (
    ERASURES_DDL,
    ERASURES_TABLE,
    Cleaned,
    erase_other_tables,
    erase_read_models,
    refresh_statistics,
    vacuum,
)

TABLE = ERASURES_TABLE


class ErasureLedger:
    """Erased customers, one JSON line each, in a file outside the database: the list a
    restored backup must destroy the keys of again. Appended before a key is destroyed."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def subjects(self) -> list[UUID]:
        if not self.path.exists():
            return []
        out: dict[UUID, None] = {}
        for line in self.path.read_text().splitlines():
            if line.strip():
                out[UUID(json.loads(line)["customer_id"])] = None
        return list(out)

    def record(self, customer_id: UUID, **details: Any) -> bool:
        """Append the customer unless listed; True if appended (flushed to disk)."""
        with self._lock:
            if customer_id in self.subjects():
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"customer_id": str(customer_id), **details}, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return True


@dataclass
class ErasureOutcome:
    receipt: dict[str, Any]
    replayed: bool


@dataclass
class Eraser:
    """Runs erasures for the HTTP route and the command line."""

    app: CrmApplication
    commands: CommandService
    conninfo: str
    ledger: ErasureLedger
    key_cache_seconds: float
    analytics_config: AnalyticsConfig | None = None
    #: the analytics projection of this process (its open file is cleaned in place)
    analytics: AnalyticsProjection | None = None
    kafka_topic: str | None = None
    kafka_wait_seconds: float = 10.0
    vacuum_full: bool = True

    def create_tables(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(ERASURES_DDL)

    # -- one erasure -------------------------------------------------------------------
    def erase(self, customer_id: UUID, principal: Principal, *, reason: str,
              request_reference: str | None = None, correlation_id: str,
              idempotency_key: str | None = None) -> ErasureOutcome:
        """Record the erasure (once), then clean every store; the receipt."""
        needles = self._personal_values(customer_id)
        result = self.commands.execute(
            EraseCustomerPersonalData(reason=reason, request_reference=request_reference),
            Request(principal=principal, correlation_id=correlation_id, target=customer_id,
                    idempotency_key=idempotency_key))
        if result.replayed:
            stored = self.receipt(customer_id)
            if stored is not None and stored.get("status") == "completed":
                return ErasureOutcome(stored, replayed=True)
        event = self._erasure_event(customer_id)
        receipt = self.complete(customer_id, needles, event=event)
        return ErasureOutcome(receipt, replayed=result.replayed)

    def complete(self, customer_id: UUID, needles: list[str], *,
                 event: dict[str, Any] | None) -> dict[str, Any]:
        """Steps 3-7 (see the module): safe to run any number of times."""
        started = datetime.now(UTC)
        ledger_added = self.ledger.record(
            customer_id, ledger_recorded_at=started.isoformat(),
            position=(event or {}).get("position"), actor=(event or {}).get("actor"))
        was_present = self.app.keys.destroy(customer_id)
        destroyed_at = self._wait_out_key_caches(customer_id)
        cleaned: list[Cleaned] = [*erase_read_models(self.conninfo, projections.ALL, customer_id),
                                  *erase_other_tables(self.conninfo, customer_id,
                                                      erasure_version=(event or {}).get("version"))]
        touched = {c.table for c in cleaned if c.rows}
        touched |= {c.table for c in cleaned if c.table.endswith(".customers")}  # the runner's own update
        touched.add("crm_subject_keys")  # the old row version still holds the wrapped key
        vacuumed = vacuum(self.conninfo, touched, full=self.vacuum_full)
        # Every other read table with personal columns: its statistics may sample them.
        analysed = refresh_statistics(
            self.conninfo, {c.table for c in cleaned if "." in c.table} - touched, full=self.vacuum_full,
            values=needles)
        receipt: dict[str, Any] = {
            "customer_id": str(customer_id),
            "status": "completed",
            "event": event,
            "key": {"destroyed": True, "destroyed_now": was_present,
                    "destroyed_at": destroyed_at.isoformat() if destroyed_at else None},
            "ledger": {"path": str(self.ledger.path), "appended": ledger_added},
            "stores": [c.as_dict() for c in cleaned],
            "vacuumed": {"tables": vacuumed, "full": self.vacuum_full, "statistics": analysed},
            "analytics": self._erase_analytics(needles),
            "parquet_exports": erase_from_exports(
                self.analytics_config.exports_ledger if self.analytics_config else None, needles),
            "values_searched": len(needles),
            "kafka": self._kafka_status((event or {}).get("position")),
            "started_at": started.isoformat(),
            "completed_at": datetime.now(UTC).isoformat(),
        }
        self._store_receipt(customer_id, event, receipt)
        return receipt

    def receipt(self, customer_id: UUID) -> dict[str, Any] | None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(f"SELECT receipt FROM {TABLE} WHERE customer_id = %s",
                               (customer_id,)).fetchone()
        return row[0] if row and row[0] is not None else None

    def reapply_ledger(self) -> list[dict[str, Any]]:
        """Destroy again the key of every customer in the ledger and clean the tables
        (after a restore: the backup may predate some erasures); the receipts."""
        return [self.complete(subject, [], event=self._erasure_event(subject))
                for subject in self.ledger.subjects()]

    # -- the steps -----------------------------------------------------------------------
    def _personal_values(self, customer_id: UUID) -> list[str]:
        customer = self.app.load(Customer, customer_id)  # NotFound: an unknown id
        values: list[str | None] = [customer.name]
        for c in customer.contacts.values():
            values += [c.value, c.person_name]
        return needles_of(values)

    def _erasure_event(self, customer_id: UUID) -> dict[str, Any] | None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT notification_id, originator_version, state FROM crm_events"
                " WHERE originator_id = %s AND topic = 'CustomerPersonalDataErased'"
                " ORDER BY originator_version LIMIT 1", (customer_id,)).fetchone()
        if row is None:
            return None
        doc = json.loads(bytes(row[2]))
        return {"type": "CustomerPersonalDataErased", "id": doc.get("event_id"), "position": row[0],
                "version": row[1], "recorded_at": doc.get("recorded_at"), "actor": doc.get("actor"),
                "reason": doc.get("reason"),
                "request_reference": (doc.get("data") or {}).get("request_reference")}

    def _wait_out_key_caches(self, customer_id: UUID) -> datetime | None:
        """Wait until no process can still hold the key in its cache; when destroyed."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT destroyed_at, now() FROM crm_subject_keys WHERE subject_id = %s",
                (customer_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        remaining = self.key_cache_seconds - (row[1] - row[0]).total_seconds()
        if remaining > 0:
            time.sleep(remaining + 0.05)
        destroyed_at: datetime = row[0]
        return destroyed_at

    def _erase_analytics(self, needles: list[str]) -> dict[str, Any]:
        config = self.analytics_config
        if config is None:
            return {"store": "duckdb", "action": "not configured"}
        owner = self.analytics
        if owner is not None and owner.is_open:
            # A connection of its own to the file this process owns; a write conflict
            # with a batch being applied is tried again.
            for attempt in range(5):
                cursor = owner.cursor()
                try:
                    return erase_from_duckdb(cursor, config.path, needles)
                except duckdb.Error:
                    if attempt == 4:
                        raise
                    time.sleep(0.5)
                finally:
                    cursor.close()
        if not config.path.exists():
            return {"store": "duckdb", "file": str(config.path), "action": "no file"}
        projection = AnalyticsProjection(config)
        try:
            db = projection.open()
        except NotLeader:
            return {"store": "duckdb", "file": str(config.path), "action": "pending",
                    "detail": "another process owns the analytics file: its personal values "
                              "could not be searched from here"}
        try:
            return erase_from_duckdb(db, config.path, needles)
        finally:
            projection.close()

    def _kafka_status(self, position: int | None) -> dict[str, Any]:
        if self.kafka_topic is None:
            return {"status": "not configured"}
        deadline = time.monotonic() + self.kafka_wait_seconds
        published = 0
        while True:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                row = conn.execute("SELECT to_regclass('crm_kafka_tracking') IS NOT NULL").fetchone()
                if row and row[0]:
                    got = conn.execute("SELECT max(position) FROM crm_kafka_tracking").fetchone()
                    published = int(got[0]) if got and got[0] is not None else 0
            if position is not None and published >= position:
                return {"status": "published", "topic": self.kafka_topic, "position": position,
                        "publisher_position": published}
            if time.monotonic() >= deadline:
                return {"status": "queued", "topic": self.kafka_topic, "position": position,
                        "publisher_position": published}
            time.sleep(0.2)

    def _store_receipt(self, customer_id: UUID, event: dict[str, Any] | None,
                       receipt: dict[str, Any]) -> None:
        actor = (event or {}).get("actor") or {}
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (customer_id, position, requested_by, requested_role,"
                " requested_at, completed_at, receipt) VALUES (%s, %s, %s, %s, %s, now(), %s)"
                " ON CONFLICT (customer_id) DO UPDATE SET completed_at = now(),"
                f" receipt = CASE WHEN {TABLE}.receipt IS NULL THEN EXCLUDED.receipt"
                f" ELSE {TABLE}.receipt END",
                (customer_id, (event or {}).get("position"), actor.get("id", "restore"),
                 actor.get("role", "restore"), (event or {}).get("recorded_at") or datetime.now(UTC),
                 Jsonb(receipt)))


__all__ = ["ERASURES_DDL", "Eraser", "ErasureLedger", "ErasureOutcome", "NotFound"]
