"""Operating read models on a real PostgreSQL: blue/green rebuild under load, verify,
status, and the `crm projections` commands."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from bench.projection_catchup import generate
from commands.application import Principal, Request
from commands.customer import ContactIn, RecordPurchase, RegisterCustomer, TagCustomer
from commands.interaction import LogInteraction
from commands.opportunity import ChangeOpportunityStage, OpenOpportunity, WinOpportunity
from projections.customers import CustomerList
from projections.operations import Busy, rebuild, run_projections, verify, verify_detailed
from projections.runner import BatchRunner
from projections.store import ProjectionStore
from tests.conftest import JWT_SECRET, MASTER_KEY

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
REP = Principal("rep-ops", "sales_rep")


# -- shared helpers (also used by test_crash_safety) -----------------------------------
def crm_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `crm` process on the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({
        "CRM_DATABASE_URL": database_url,
        "CRM_MASTER_KEY": MASTER_KEY,
        "CRM_JWT_SECRET": JWT_SECRET,
        "CRM_DATA_DIR": str(data_dir),
        "CRM_DB_POOL_SIZE": "2",
        "CRM_LOG_FORMAT": "json",
        "CRM_LOG_LEVEL": "warning",
    })
    env.update(extra)
    return env


def crm_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "crm"), *args]


def sql_value(database_url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


class Writer:
    """Issues a realistic mix of commands on its own customers, through CommandService,
    and counts what it sent."""

    def __init__(self, system: Any, name: str, seed: int):
        self.system = system
        self.name = name
        self.rng = random.Random(seed)
        self.customers: list[UUID] = []
        self.opportunities: dict[UUID, tuple[int, str]] = {}  # id -> (version, stage)
        self.purchases: Counter[UUID] = Counter()
        self.tags: dict[UUID, set[str]] = {}
        self.sent = 0
        self.errors: list[BaseException] = []

    def _run(self, command: Any, target: UUID | None = None, version: int | None = None) -> Any:
        result = self.system.commands.execute(
            command, Request(REP, correlation_id=f"ops-{self.name}", target=target,
                             expected_version=version))
        self.sent += 1
        return result

    def register(self) -> UUID:
        n = len(self.customers)
        result = self._run(RegisterCustomer(
            kind=self.rng.choice(["person", "company"]),
            name=f"{self.name} Customer {n}",
            contacts=[ContactIn(kind="email", value=f"{self.name}.{n}.{uuid.uuid4().hex[:8]}"
                                "@ops.example.com", primary=True)],
            country="DE", tags=["ops"]))
        self.customers.append(result.id)
        self.tags[result.id] = {"ops"}
        return UUID(str(result.id))

    def step(self) -> None:
        if len(self.customers) < 3 or self.rng.random() < 0.15:
            self.register()
            return
        customer = self.rng.choice(self.customers)
        roll = self.rng.random()
        if roll < 0.35:
            self._run(RecordPurchase(order_id=f"o-{uuid.uuid4().hex[:10]}",
                                     amount=Decimal(self.rng.randint(1, 50_000)) / 100,
                                     currency="EUR"), target=customer)
            self.purchases[customer] += 1
        elif roll < 0.5:
            tag = f"t{self.rng.randint(0, 9)}"
            if tag not in self.tags[customer]:
                self._run(TagCustomer(tag=tag), target=customer)
                self.tags[customer].add(tag)
        elif roll < 0.7:
            self._run(LogInteraction(customer_id=customer, channel="call", direction="outbound",
                                     subject="Follow-up", body="Talked about the renewal."))
        elif roll < 0.85 or not self.opportunities:
            result = self._run(OpenOpportunity(customer_id=customer, title="Licences",
                                               amount=Decimal(self.rng.randint(100, 9_000)),
                                               currency="EUR"))
            self.opportunities[result.id] = (result.version, "qualification")
        else:
            opp = self.rng.choice(list(self.opportunities))
            version, stage = self.opportunities[opp]
            if stage == "qualification":
                result = self._run(ChangeOpportunityStage(stage="proposal"), target=opp,
                                   version=version)
                self.opportunities[opp] = (result.version, "proposal")
            else:
                self._run(WinOpportunity(), target=opp, version=version)
                del self.opportunities[opp]

    def run(self, stop: threading.Event, pause: float = 0.0) -> None:
        try:
            while not stop.is_set():
                self.step()
                if pause:
                    time.sleep(pause)
        except BaseException as e:  # noqa: BLE001 -- checked by the test
            self.errors.append(e)


class Background:
    """Threads that run until the test stops them; their errors fail the test."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, fn: Callable[[threading.Event], Any], name: str,
              stop: threading.Event | None = None) -> threading.Thread:
        t = threading.Thread(target=fn, args=(stop or self.stop,), name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def assert_purchases_counted_once(database_url: str, writer: Writer) -> None:
    """Every purchase the writer sent is counted once in the live customer list."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        counted = dict(conn.execute("SELECT id, purchases FROM crm_read.customers").fetchall())
    for customer, n in writer.purchases.items():
        assert counted[customer] == n


def caught_up(store: ProjectionStore) -> bool:
    schema = store.active_schema(CustomerList)
    return schema is not None and store.position(schema) == store.head()


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture
def ops_system(make_system: Callable[..., Any]) -> Any:
    """The CRM on a clean database (no events, no read side: see ``pg_env``)."""
    return make_system()


@pytest.fixture
def background() -> Iterator[Background]:
    bg = Background()
    yield bg
    bg.close()


def store_of(system: Any) -> ProjectionStore:
    assert system.read is not None
    return system.read.store  # type: ignore[no-any-return]


def catch_up(system: Any, stop_at: int | None = None) -> int:
    runner = BatchRunner(CustomerList, store_of(system).ensure_active(CustomerList),
                         system.database_url, system.app.codec)
    try:
        return runner.catch_up(stop_at=stop_at)
    finally:
        runner.close()


def fill(system: Any, commands: int, name: str = "fill", seed: int = 1) -> Writer:
    writer = Writer(system, name, seed)
    while writer.sent < commands:
        writer.step()
    return writer


# -- rebuild -------------------------------------------------------------------------
def test_rebuild_while_writing_and_reading_loses_nothing(
    ops_system: Any, background: Background, database_url: str
) -> None:
    system = ops_system
    store = store_of(system)
    # A log long enough that the rebuild takes seconds, written fast (bench's generator:
    # real stored events, keys wrapped with this system's master key), then commands.
    generate(database_url, 20_000, bytes.fromhex(MASTER_KEY), seed=5)
    fill(system, 100)
    old = store.ensure_active(CustomerList)

    # The live runner (as `crm projections run` runs it), a writer and a reader.
    runner_stop = threading.Event()
    live_ok: list[bool] = []
    background.start(lambda stop: live_ok.append(run_projections(
        store, [CustomerList], system.app.codec, database_url, stop, poll_seconds=0.2)),
        "live-runner", runner_stop)
    wait_until(lambda: caught_up(store), 30, "the live runner to catch up")
    writer = Writer(system, "during", 2)
    writer_stop = threading.Event()
    background.start(lambda stop: writer.run(stop, pause=0.002), "writer", writer_stop)
    reads: list[int] = []
    read_errors: list[BaseException] = []

    def reader(stop: threading.Event) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    row = conn.execute(
                        "SELECT count(*), max(last_activity_at) FROM crm_read.customers"
                        " WHERE lifecycle_stage = 'lead'").fetchone()
                    assert row is not None
                    conn.execute("SELECT id, name, purchases FROM crm_read.customers"
                                 " ORDER BY last_activity_at DESC, id LIMIT 20").fetchall()
                    reads.append(int(row[0]))
                except BaseException as e:  # noqa: BLE001 -- the test fails on any
                    read_errors.append(e)
                    return

    background.start(reader, "reader")
    time.sleep(0.5)
    seen: list[tuple[int, int]] = []
    sent_before = writer.sent
    summary = rebuild(store, CustomerList, system.app.codec, database_url,
                      lambda position, head: seen.append((position, head)), lock_timeout=30)
    reads_at_switch = len(reads)
    sent_during = writer.sent - sent_before
    time.sleep(1.0)  # writes go on after the switch, applied by the live runner
    writer_stop.set()
    wait_until(lambda: writer.sent > 0 and caught_up(store), 60, "catch-up after the rebuild")
    time.sleep(0.3)
    background.stop.set()
    runner_stop.set()
    background.close()

    assert not writer.errors, writer.errors
    assert not read_errors, read_errors
    assert len(reads) > reads_at_switch > 0
    assert sent_during > 10, "the writer should have written during the rebuild"
    assert live_ok == [True]
    assert summary.old_schema == old
    assert summary.new_schema != old and summary.old_dropped
    assert store.active_schema(CustomerList) == summary.new_schema
    assert sql_value(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                     (old,)) == 0
    assert sql_value(database_url, "SELECT count(*) FROM crm_projection_tracking"
                     " WHERE schema_name = %s", (old,)) == 0
    assert summary.events > 20_000 and summary.events_per_second > 0
    positions = [p for p, _ in seen]
    assert positions == sorted(positions) and positions[-1] >= summary.position - 1000
    # Nothing lost at the switch: the live tables equal a fresh build, at the head.
    result = verify_detailed(store, CustomerList, system.app.codec, database_url)
    assert result.differences == []
    assert result.position == store.head() == store.position(summary.new_schema)
    # And every purchase the writers sent is counted once.
    assert_purchases_counted_once(database_url, writer)


def test_rebuild_with_no_runner_and_a_failed_rebuild_leaves_the_live_one(
    ops_system: Any, database_url: str
) -> None:
    system = ops_system
    store = store_of(system)
    fill(system, 60)
    catch_up(system)
    live = store.ensure_active(CustomerList)

    def fail(position: int, head: int) -> None:
        if position > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(store, CustomerList, system.app.codec, database_url, fail)
    assert store.active_schema(CustomerList) == live
    assert sql_value(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE"
                     " 'rm\\_customers\\_%%'") == 1
    # What a rebuild and a verify killed with SIGKILL would leave: their generations.
    store.new_generation(CustomerList)
    store.new_generation(CustomerList, scratch=True)
    summary = rebuild(store, CustomerList, system.app.codec, database_url)
    assert summary.old_dropped and summary.position == store.head()
    assert verify(store, CustomerList, system.app.codec, database_url) == []
    assert sql_value(database_url, "SELECT array_agg(nspname::text) FROM pg_namespace"
                     " WHERE nspname LIKE 'rm\\_customers\\_%%'") == [summary.new_schema]
    assert sql_value(database_url, "SELECT array_agg(schema_name) FROM crm_projection_tracking"
                     " WHERE projection LIKE 'customers%%'") == [summary.new_schema]


# -- verify -------------------------------------------------------------------------
def test_verify_finds_nothing_on_a_clean_build_and_finds_tampering(
    ops_system: Any, database_url: str
) -> None:
    system = ops_system
    store = store_of(system)
    writer = fill(system, 150)
    catch_up(system)
    codec = system.app.codec
    assert verify(store, CustomerList, codec, database_url) == []

    live = store.ensure_active(CustomerList)
    deleted, changed = writer.customers[0], writer.customers[1]
    extra = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{live}".customers WHERE id = %s', (deleted,))
        conn.execute(f'UPDATE "{live}".customers SET owner_id = %s, purchases = purchases + 1'
                     " WHERE id = %s", ("someone-else", changed))
        conn.execute(
            f'INSERT INTO "{live}".customers (id, version, kind, owner_id, lifecycle_stage,'
            " created_at, updated_at, last_activity_at)"
            " VALUES (%s, 1, 'person', 'x', 'lead', now(), now(), now())", (extra,))
    differences = verify(store, CustomerList, codec, database_url)
    found = {(d.table, d.key, d.kind): d for d in differences}
    assert set(found) == {("customers", str(deleted), "missing"),
                          ("customers", str(changed), "changed"),
                          ("customers", str(extra), "extra")}
    change = found[("customers", str(changed), "changed")]
    assert change.columns == ("owner_id", "purchases")
    assert change.live is not None and change.live["owner_id"] == "someone-else"
    assert change.rebuilt is not None and change.rebuilt["owner_id"] == "rep-ops"
    # The scratch generation is gone; the live one untouched.
    assert sql_value(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE"
                     " 'rm\\_customers\\_%%'") == 1
    assert sql_value(database_url, "SELECT count(*) FROM crm_projection_tracking"
                     " WHERE projection LIKE '%%scratch'") == 0


def test_verify_compares_at_the_live_position_not_the_head(
    ops_system: Any, database_url: str
) -> None:
    system = ops_system
    store = store_of(system)
    fill(system, 100)
    position = catch_up(system)
    fill(system, 50, name="later", seed=9)  # the live model is now behind the head
    assert store.head() > position
    result = verify_detailed(store, CustomerList, system.app.codec, database_url)
    assert result.position == position and result.differences == []


# -- status --------------------------------------------------------------------------
def insert_undecodable_event(database_url: str) -> int:
    """A stored event of a known type whose state is not JSON: the runner parks it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO crm_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, 1, 'CustomerRegistered', %s) RETURNING notification_id",
            (uuid.uuid4(), b"not json"),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_status_reports_lag_and_parked(ops_system: Any, database_url: str) -> None:
    system = ops_system
    store = store_of(system)
    fill(system, 40)
    head = store.head()
    catch_up(system, stop_at=head - 10)
    time.sleep(0.3)
    [status] = [s for s in store.status([CustomerList])]
    assert (status.position, status.head, status.lag_events) == (head - 10, head, 10)
    assert status.lag_seconds >= 0.3 and status.parked == 0

    parked_at = insert_undecodable_event(database_url)
    catch_up(system)
    [status] = store.status([CustomerList])
    assert status.lag_events == 0 and status.lag_seconds == 0.0
    assert status.parked == 1
    [parked] = store.parked(status.schema)
    assert parked["position"] == parked_at and "cannot decode" in parked["error"]


# -- the command line ------------------------------------------------------------------
def test_the_projections_commands(ops_system: Any, database_url: str, tmp_path: Path) -> None:
    system = ops_system
    store = store_of(system)
    writer = fill(system, 80)
    catch_up(system)
    env = crm_env(database_url, tmp_path / "data")

    def crm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(crm_command("projections", *args), env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    status = crm("status")
    assert status.returncode == 0, status.stderr
    assert "customers" in status.stdout and store.ensure_active(CustomerList) in status.stdout

    ok = crm("verify", "customers")
    assert ok.returncode == 0, ok.stderr
    assert "equal to a fresh build" in ok.stdout

    live = store.ensure_active(CustomerList)
    gone = writer.customers[2]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{live}".customers WHERE id = %s', (gone,))
    bad = crm("verify", "customers")
    assert bad.returncode == 1, bad.stderr
    assert f"customers {gone}: missing from the live table" in bad.stdout

    rebuilt = crm("rebuild", "customers")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "events/s" in rebuilt.stdout
    new = store.ensure_active(CustomerList)
    assert new != live and f"now {new} at position {store.head()}" in rebuilt.stdout
    assert crm("verify", "customers").returncode == 0

    insert_undecodable_event(database_url)
    catch_up(system)
    parked = crm("status")
    assert parked.returncode == 1
    assert "customers" in parked.stdout

    with psycopg.connect(database_url, autocommit=True) as conn:
        # Another rebuild or verify of the customer list under way:
        conn.execute("SELECT pg_advisory_lock(hashtext('crm_projection_ops:customers'))")
        busy = crm("verify", "customers")
        assert busy.returncode == 3 and "under way" in busy.stderr
        assert crm("rebuild", "customers").returncode == 3
        with pytest.raises(Busy):
            rebuild(store, CustomerList, system.app.codec, database_url)
    assert store.ensure_active(CustomerList) == new

    unknown = crm("verify", "nonesuch")
    assert unknown.returncode == 2 and "no projection 'nonesuch'" in unknown.stderr
    assert crm("run").returncode == 2


def test_a_switch_waits_for_a_reader_of_both_views_without_deadlocking(
    ops_system: Any, database_url: str
) -> None:
    """A reader that has read one view of a read model and then reads the other one
    while a switch is under way is not chosen as a deadlock victim, and the switch
    completes once the reader is done."""
    store = store_of(ops_system)
    store.ensure_active(CustomerList)
    new = store.new_generation(CustomerList)
    errors: list[BaseException] = []
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM crm_read.customer_deals").fetchone()

        def switch() -> None:
            try:
                store.switch(CustomerList, new)
            except BaseException as e:  # noqa: BLE001 -- asserted below
                errors.append(e)

        thread = threading.Thread(target=switch)
        thread.start()
        time.sleep(0.3)
        reader.execute("SELECT count(*) FROM crm_read.customers").fetchone()
        assert store.active_schema(CustomerList) != new  # still waiting for the reader
        reader.commit()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    assert store.active_schema(CustomerList) == new
