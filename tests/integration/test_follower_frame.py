"""The log-follower frame carries a new follower in a page of code: an example that
counts stored events per type into a table, on a real PostgreSQL. Its position moves
with its rows (nothing counted twice across a restart), an event its table refuses is
parked alone while the rest of its batch is counted, and an append wakes it without
waiting for the poll."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from commands import customer as cc
from commands.application import Principal, Request
from projections.follow import StoredEvent, TrackedFollower, follower_statuses
from tests.conftest import METRICS_AUTH

pytestmark = pytest.mark.postgres


class CountByType(TrackedFollower):
    """Stored events per type (the whole follower)."""

    @property
    def table(self) -> str:
        return f"counts_{self.name}"

    def setup(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" (topic text PRIMARY KEY'
                     " CHECK (length(topic) <= 200), n bigint NOT NULL)")

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[StoredEvent]) -> None:
        counts = Counter(e.topic for e in events)
        with conn.cursor() as cur:
            cur.executemany(f'INSERT INTO "{self.table}" (topic, n) VALUES (%s, %s)'
                            " ON CONFLICT (topic) DO UPDATE SET n = \"" + self.table + "\".n + EXCLUDED.n",
                            list(counts.items()))


@pytest.fixture
def follower_name(database_url: str, system: Any) -> Iterator[str]:
    """A follower of its own for the test (the CRM built: its event store exists)."""
    name = f"f{uuid4().hex[:12]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "counts_{name}"')
        if conn.execute("SELECT to_regclass('crm_follower_parked')").fetchone() != (None,):
            conn.execute("DELETE FROM crm_follower_tracking WHERE name = %s", (name,))
            conn.execute("DELETE FROM crm_follower_parked WHERE name = %s", (name,))


def append(database_url: str, *topics: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [int(conn.execute(
            "INSERT INTO crm_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, 1, %s, %s) RETURNING notification_id",
            (uuid4(), topic, b"{}")).fetchone()[0]) for topic in topics]  # type: ignore[index]


def counts(database_url: str, name: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {r[0]: int(r[1]) for r in conn.execute(f'SELECT topic, n FROM "counts_{name}"').fetchall()}


def test_the_position_moves_with_the_rows_and_a_bad_event_is_parked_alone(
        database_url: str, follower_name: str, system: Any, tmp_path: Path) -> None:
    from tests.asgi_client import Client
    from tests.integration.test_projection_ops import ROOT, crm_command, crm_env

    bad = "t." + "x" * 300  # longer than the table's check allows
    positions = append(database_url, "t.A", "t.B", "t.A", bad, "t.B", "t.A", "t.C")
    follower = CountByType(follower_name, database_url, batch_size=100)
    try:
        assert follower.run_batch() == 7
        assert counts(database_url, follower_name) == {"t.A": 3, "t.B": 2, "t.C": 1}
        assert follower.position() == positions[-1]
        assert follower.stats.parked == 1 and follower.stats.events == 7
        with psycopg.connect(database_url, autocommit=True) as conn:
            parked = conn.execute("SELECT position, topic, error FROM crm_follower_parked WHERE name = %s",
                                  (follower_name,)).fetchall()
            statuses = {s.name: s for s in follower_statuses(conn)}
        assert [(p[0], p[1]) for p in parked] == [(positions[3], bad)]
        assert "CheckViolation" in parked[0][2]
        mine = statuses[follower_name]
        assert (mine.position, mine.parked, mine.lag_events) == (positions[-1], 1, 0)
        assert follower.run_batch() == 0
        # /ready and /metrics show it like every follower: the parked event is a reason.
        client = Client(system.http_app())
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert f"{follower_name}: 1 parked event(s)" in ready.json()["reasons"]
        assert {"name": follower_name, "position": positions[-1], "lag_events": 0,
                "parked": 1} in ready.json()["followers"]
        body = client.get("/metrics", headers=METRICS_AUTH).text
        assert f'crm_follower_parked_events{{follower="{follower_name}"}} 1' in body
        assert f'crm_follower_position{{follower="{follower_name}"}} {positions[-1]}' in body
        # and so does `crm projections status` (exit 1: a parked event)
        status = subprocess.run(crm_command("projections", "status"), env=crm_env(database_url, tmp_path / "data"),
                                cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert status.returncode == 1, status.stdout + status.stderr
        mine_row = next(line for line in status.stdout[status.stdout.index("Followers"):].splitlines()
                        if follower_name in line)
        assert [c.strip() for c in mine_row.strip().strip("│").split("│")] == [
            follower_name, str(positions[-1]), str(positions[-1]), "0", "1"]
    finally:
        follower.close()

    # A restarted follower goes on from the recorded position: nothing counted twice.
    append(database_url, "t.C")
    again = CountByType(follower_name, database_url, batch_size=100)
    try:
        assert again.run_batch() == 1
        assert counts(database_url, follower_name) == {"t.A": 3, "t.B": 2, "t.C": 2}
    finally:
        again.close()


def test_one_leader_and_an_append_wakes_it(database_url: str, follower_name: str, system: Any) -> None:
    # A poll far longer than the test: only the notification of the append can wake it.
    follower = CountByType(follower_name, database_url, poll_seconds=60.0)
    second = CountByType(follower_name, database_url, poll_seconds=60.0)
    follower.start()
    try:
        deadline = time.monotonic() + 10
        while not follower.stats.is_leader and time.monotonic() < deadline:
            time.sleep(0.05)
        assert follower.stats.is_leader
        assert not second.try_lead()  # the first one leads
        time.sleep(0.3)  # the first one waits for an append now
        system.commands.execute(cc.RegisterCustomer.model_validate({"kind": "company", "name": "Woken AG"}),
                                Request(Principal("rep-1", "sales_rep"), correlation_id="corr-frame"))
        deadline = time.monotonic() + 10
        while sum(counts(database_url, follower_name).values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(counts(database_url, follower_name).values()) == [1]
    finally:
        follower.stop()
        second.close()
    assert not follower.stats.is_leader
    assert isinstance(follower._thread, type(None)) and not any(
        t.name == follower_name for t in threading.enumerate())


def test_the_automation_is_woken_by_an_append(make_system: Any, database_url: str) -> None:
    """In the frame the automation listens too: with a poll far longer than the test, an
    append is handled at once."""
    from automation.runner import automation_status

    system = make_system(automation_poll_seconds=60.0)
    runner = system.automation()
    system.start_automation()
    try:
        deadline = time.monotonic() + 10
        while not runner.stats.is_leader and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # its first step is done: it waits for an append now
        system.commands.execute(cc.RegisterCustomer.model_validate({"kind": "company", "name": "Late AG"}),
                                Request(Principal("rep-1", "sales_rep"), correlation_id="corr-wake"))
        head = system.read.store.head()
        deadline = time.monotonic() + 10
        with psycopg.connect(database_url, autocommit=True) as conn:
            while automation_status(conn).position < head and time.monotonic() < deadline:
                time.sleep(0.05)
            assert automation_status(conn).position == head
    finally:
        runner.stop()
    assert not any(t.name == "crm-automation" and t.is_alive() for t in threading.enumerate())
