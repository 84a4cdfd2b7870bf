"""Read models survive crashes: `crm projections run` killed with SIGKILL at random
moments (a standby process taking over each time) loses and doubles nothing, and a
runner following eight concurrent writers applies every event exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import projections
from projections.customers import CustomerList
from projections.operations import leadership_key, verify_detailed
from projections.runner import BatchRunner
from projections.store import ProjectionStore
from tests.integration.test_projection_ops import (
    ROOT,
    assert_purchases_counted_once,
    Writer,
    crm_command,
    crm_env,
    wait_until,
)

pytestmark = pytest.mark.postgres

KILLS = 24


@pytest.fixture
def crash_system(make_system: Callable[..., Any]) -> Any:
    """The CRM on a clean database (no events, no read side: see ``pg_env``)."""
    return make_system()


def store_of(system: Any) -> ProjectionStore:
    assert system.read is not None
    return system.read.store  # type: ignore[no-any-return]


class Runners:
    """`crm projections run customers` processes, each named by its PGAPPNAME."""

    def __init__(self, database_url: str, data_dir: Path):
        self.database_url = database_url
        self.data_dir = data_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, list[Path]] = {}

    def start(self, name: str) -> None:
        log = self.data_dir / f"{name}-{len(self.logs.get(name, []))}.log"
        self.logs.setdefault(name, []).append(log)
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                crm_command("projections", "run", "customers"), cwd=ROOT,
                env=crm_env(self.database_url, self.data_dir, PGAPPNAME=name,
                            CRM_LOG_LEVEL="info"),
                stdout=out, stderr=subprocess.STDOUT)

    def leader(self, schema: str) -> tuple[str, str] | None:
        """(process name, state of its runner connection) of the schema's leader."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT a.application_name, a.state FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295)"
                # advisory locks are the whole server's: only this database's, ours
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND a.application_name = ANY(%s)",
                (leadership_key(schema), list(self.procs)),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def started(self, name: str) -> bool:
        return b"projection runners started" in self.logs[name][-1].read_bytes()

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM to each process once it runs its runners; their exit codes."""
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + 30
        while not all(self.started(n) for n in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        return codes

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-2000:]
                         for logs in self.logs.values() for p in logs)


def test_runner_killed_at_random_moments_loses_and_doubles_nothing(
    crash_system: Any, database_url: str, tmp_path: Path
) -> None:
    system = crash_system
    store = store_of(system)
    schema = store.ensure_active(CustomerList)
    writer = Writer(system, "crash", 11)
    while writer.sent < 300:  # a backlog, so the first kills land in big batches
        writer.step()
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), name="writer", daemon=True)
    thread.start()

    runners = Runners(database_url, tmp_path)
    runners.start("crm-runner-a")
    runners.start("crm-runner-b")
    rng = random.Random(20261123)
    kills: list[tuple[str, str, int]] = []
    positions: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(kills) < KILLS:
            assert time.monotonic() < deadline, f"only {len(kills)} kills\n{runners.tail()}"
            leader = runners.leader(schema)
            if leader is None:  # between leaders (the standby polls once a second)
                time.sleep(0.05)
                continue
            # A random moment of the leader's life: usually in the middle of a batch.
            time.sleep(rng.uniform(0.05, 0.6))
            leader = runners.leader(schema)
            if leader is None:
                continue
            name, state = leader
            runners.kill(name)
            kills.append((name, state, store.position(schema)))
            positions.append(store.position(schema))
            runners.start(name)
        stop.set()
        thread.join(30)
        assert not writer.errors, writer.errors
        wait_until(lambda: store.position(schema) == store.head(), 90,
                   "the runners to catch up after the last kill")
    finally:
        stop.set()
        codes = runners.stop_all()
    assert all(code == 0 for code in codes.values()), (codes, runners.tail())

    # Both processes led at some point, and the log moved on between the kills.
    assert {name for name, _, _ in kills} == {"crm-runner-a", "crm-runner-b"}
    assert positions[-1] > positions[0]
    # Most kills hit a leader with a batch under way (or at least in its transaction).
    in_batch = sum(1 for _, state, _ in kills if state in ("active", "idle in transaction"))
    assert in_batch >= KILLS // 4, kills
    print(f"kills (process, state of its runner connection, position): {kills}")

    # Only the customer list ran: `crm projections run customers` starts no other runner.
    others = [s for s in store.status(list(projections.ALL)) if s.name != CustomerList.name]
    assert others and all(s.position == 0 for s in others)

    result = verify_detailed(store, CustomerList, system.app.codec, database_url)
    assert result.differences == [], result.differences[:5]
    assert result.schema == schema
    assert result.position == store.head() == store.position(schema)
    assert_purchases_counted_once(database_url, writer)


def test_eight_writers_every_event_applied_exactly_once(
    crash_system: Any, database_url: str
) -> None:
    system = crash_system
    store = store_of(system)
    schema = store.ensure_active(CustomerList)
    runner = BatchRunner(CustomerList, schema, database_url, system.app.codec, poll_seconds=0.2)
    runner_stop, writers_stop = threading.Event(), threading.Event()
    follower_thread = threading.Thread(
        target=runner.run, args=(runner_stop,),
        kwargs={"follow_active": runner.active_schema}, daemon=True)
    follower_thread.start()
    writers = [Writer(system, f"w{i}", 100 + i) for i in range(8)]
    threads = [threading.Thread(target=w.run, args=(writers_stop,), daemon=True)
               for w in writers]
    for t in threads:
        t.start()
    time.sleep(8)
    writers_stop.set()
    for t in threads:
        t.join(30)
    for w in writers:
        assert not w.errors, w.errors
    sent = sum(w.sent for w in writers)
    assert sent > 200
    wait_until(lambda: store.position(schema) == store.head(), 60, "the follower to catch up")
    runner_stop.set()
    follower_thread.join(30)

    with psycopg.connect(database_url, autocommit=True) as conn:
        events = conn.execute("SELECT count(*), max(notification_id) FROM crm_events").fetchone()
        assert events is not None
        count, head = int(events[0]), int(events[1])
        rows = conn.execute("SELECT id, purchases, tags, version FROM crm_read.customers"
                            ).fetchall()
        versions = dict(conn.execute(
            "SELECT originator_id, max(originator_version) FROM crm_events"
            " WHERE topic LIKE 'Customer%%' GROUP BY originator_id").fetchall())
    # Every command appended one event, and the follower read each one exactly once: a
    # follower that skipped an id committed late would count fewer.
    assert count == sent
    assert runner.stats.events == count and store.position(schema) == head
    purchases = Counter({c: n for w in writers for c, n in w.purchases.items()})
    tags = {c: t for w in writers for c, t in w.tags.items()}
    assert len(rows) == sum(len(w.customers) for w in writers)
    for customer, n_purchases, row_tags, version in rows:
        assert n_purchases == purchases[customer]
        assert set(row_tags) == tags[customer]
        assert version == versions[customer]
    assert verify_detailed(store, CustomerList, system.app.codec, database_url).differences == []
