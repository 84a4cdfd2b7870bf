"""The read side as one object: store, one runner thread per read model, read pool."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from events.codec import EventCodec
from projections.base import Projection
from projections.runner import BatchRunner, RunnerStats
from projections.store import ProjectionStore, Status

log = structlog.get_logger("crm.projections")


def _read_connection(conn: psycopg.Connection[Any]) -> None:
    # json/jsonb columns of the read models parsed by orjson (the same values, ~5x faster)
    set_json_loads(orjson.loads, conn)


@dataclass
class ReadSide:
    """Keeps every read model up to date (runner threads) and serves reads (pool)."""

    store: ProjectionStore
    projections: tuple[type[Projection], ...]
    codec: EventCodec
    pool: ConnectionPool[Any]
    batch_size: int = 2000
    runners: dict[str, BatchRunner] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(cls, conninfo: str, projections: tuple[type[Projection], ...], codec: EventCodec,
              *, pool_size: int = 10, batch_size: int = 2000, timeout: float = 30.0) -> ReadSide:
        store = ProjectionStore(conninfo)
        store.setup()
        for p in projections:
            store.ensure_active(p)
        # timeout: how long a read waits for a connection (then PoolTimeout)
        pool: ConnectionPool[Any] = ConnectionPool(conninfo, min_size=1, max_size=pool_size, open=True,
                              timeout=timeout,
                              kwargs={"row_factory": dict_row, "autocommit": True},
                              configure=_read_connection)
        return cls(store, projections, codec, pool, batch_size)

    def runner(self, projection: type[Projection]) -> BatchRunner:
        if projection.name not in self.runners:
            schema = self.store.ensure_active(projection)
            self.runners[projection.name] = BatchRunner(
                projection, schema, self.store.conninfo, self.codec, batch_size=self.batch_size
            )
        return self.runners[projection.name]

    def start(self) -> None:
        """Run every read model's runner in a thread of this process (embedded default)."""
        for p in self.projections:
            runner = self.runner(p)
            t = threading.Thread(
                target=runner.run,
                args=(self._stop,),
                kwargs={"follow_active": runner.active_schema},
                name=f"projection-{p.name}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        log.info("projection runners started", projections=[p.name for p in self.projections])

    def signal_stop(self) -> None:
        """Ask every runner to stop (``stop`` waits for them)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the runners, waiting ``timeout`` seconds for them in all, and close."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        for runner in self.runners.values():
            runner.close()
        self.pool.close(timeout=max(0.1, deadline - time.monotonic()))

    def stats(self) -> dict[str, RunnerStats]:
        return {name: r.stats for name, r in self.runners.items()}

    def status(self) -> list[Status]:
        with self.pool.connection() as conn:
            return self.store.status(list(self.projections), conn)

    def wait_for(self, position: int, timeout: float) -> bool:
        """Wait until every read model has applied ``position`` (read-your-writes)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            with self.pool.connection() as conn:
                row = conn.execute(
                    "SELECT min(t.position) AS p FROM crm_projections r"
                    " JOIN crm_projection_tracking t ON t.schema_name = r.active_schema"
                ).fetchone()
            if row and row["p"] is not None and int(row["p"]) >= position:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
