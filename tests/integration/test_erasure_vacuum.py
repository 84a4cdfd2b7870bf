"""The erasure's VACUUM removes old row versions even while another session still holds
a snapshot from before the erasure: it waits that snapshot out first (VACUUM, even FULL,
keeps row versions some snapshot may still see)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from projections.erasure import vacuum

pytestmark = pytest.mark.postgres

SECRET = "Quirinella Vantablack-Oddsworth"


def _pages(conn: psycopg.Connection[Any], table: str) -> bytes:
    conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    blocks = conn.execute("SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                          (table,)).fetchone()
    assert blocks is not None
    return b"".join(bytes(conn.execute("SELECT get_raw_page(%s, %s)", (table, b)).fetchone()[0])  # type: ignore[index]
                    for b in range(int(blocks[0])))


@pytest.mark.parametrize("full", [True, False])
def test_vacuum_waits_out_an_older_snapshot_and_leaves_no_old_row_version(
        database_url: str, full: bool) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS erasure_vacuum_probe")
        conn.execute("CREATE TABLE erasure_vacuum_probe (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO erasure_vacuum_probe VALUES (1, %s), (2, 'kept')", (SECRET,))
        # Another session's snapshot, taken before the erasure's change, in a transaction
        # that holds no lock on the erased table (a reader of another table).
        holder = psycopg.connect(database_url)
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert holder.execute("SELECT count(*) FROM pg_class WHERE relname = 'erasure_vacuum_probe'"
                              ).fetchone() == (1,)
        conn.execute("UPDATE erasure_vacuum_probe SET name = 'erased' WHERE id = 1")
        released = threading.Timer(1.0, holder.commit)
        released.start()
        started = time.monotonic()
        try:
            vacuum(database_url, ["public.erasure_vacuum_probe"], full=full)
        finally:
            released.join()
            holder.close()
        assert time.monotonic() - started >= 0.9  # it waited for the snapshot to go
        assert SECRET.encode() not in _pages(conn, "erasure_vacuum_probe")
        conn.execute("DROP TABLE erasure_vacuum_probe")
