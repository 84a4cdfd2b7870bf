"""Analysts' SQL against the analytics database, safely.

A query runs in the process that owns the DuckDB file, on a connection of its own, in a
READ ONLY transaction that is rolled back afterwards. What keeps it harmless:

* exactly one statement, and only a query (SELECT, WITH, FROM, SHOW, DESCRIBE,
  SUMMARIZE, EXPLAIN): writes, ATTACH, COPY, SET, PRAGMA, INSTALL/LOAD, CALL are
  refused before they run;
* the database was opened with ``enable_external_access = false`` (no file or network
  reads such as ``read_csv``) and ``lock_configuration = true`` (no setting can
  change), with a memory limit;
* a time limit: the connection is interrupted when it runs out;
* a row limit on the result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from projections.analytics import schema
from projections.analytics.store import tracked_position

_ALLOWED = {
    duckdb.StatementType.SELECT,
    duckdb.StatementType.EXPLAIN,
}
_REFUSED_WHY = {
    "INSERT": "writes are not allowed", "UPDATE": "writes are not allowed",
    "DELETE": "writes are not allowed", "CREATE": "writes are not allowed",
    "DROP": "writes are not allowed", "ALTER": "writes are not allowed",
    "MERGE_INTO": "writes are not allowed", "VACUUM": "writes are not allowed",
    "ATTACH": "ATTACH is not allowed", "DETACH": "DETACH is not allowed",
    "COPY": "COPY is not allowed (use the Parquet export)",
    "COPY_DATABASE": "COPY is not allowed (use the Parquet export)",
    "SET": "settings cannot be changed", "VARIABLE_SET": "settings cannot be changed",
    "PRAGMA": "PRAGMA is not allowed", "LOAD": "extensions cannot be loaded",
    "EXPORT": "EXPORT is not allowed (use the Parquet export)",
    "TRANSACTION": "transactions are managed by the server",
}
FORMATS = ("json", "csv", "arrow")


class QueryRefused(ValueError):
    """The query may not run (or failed): a client error, with the reason."""

    def __init__(self, detail: str, *, code: str = "sql-refused"):
        super().__init__(detail)
        self.detail = detail
        self.code = code


class QueryTimeout(QueryRefused):
    def __init__(self, seconds: float):
        super().__init__(f"the query ran longer than {seconds:g} s and was interrupted",
                         code="sql-timeout")


@dataclass
class QueryResult:
    table: pa.Table
    truncated: bool
    seconds: float
    position: int


def check(db: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but a single read-only query."""
    if not sql.strip():
        raise QueryRefused("the query is empty")
    try:
        statements = db.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryRefused(f"the query does not parse: {_first_line(e)}", code="sql-syntax") from None
    if len(statements) != 1:
        raise QueryRefused(f"send exactly one statement (got {len(statements)})")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = str(kind).rsplit(".", 1)[-1].removesuffix("_STATEMENT")
        why = _REFUSED_WHY.get(name, f"{name} statements are not allowed")
        raise QueryRefused(f"only queries may run: {why}")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run_query(con: duckdb.DuckDBPyConnection, sql: str, *, timeout: float,
              max_rows: int) -> QueryResult:
    """Run one analyst query on ``con`` (a connection of its own), read-only and limited."""
    check(con, sql)
    started = time.perf_counter()
    timed_out = threading.Event()

    def interrupt() -> None:
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(timeout, interrupt)
    con.execute("BEGIN TRANSACTION READ ONLY")
    try:
        position = tracked_position(con)
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(batch_size=min(max_rows + 1, 100_000))
            batches: list[pa.RecordBatch] = []
            rows = 0
            for b in reader:
                batches.append(b)
                rows += b.num_rows
                if rows > max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException:
            raise QueryTimeout(timeout) from None
        except duckdb.PermissionException as e:
            raise QueryRefused(f"file and network access is not allowed: {_first_line(e)}") from None
        except (duckdb.TransactionException, duckdb.InvalidInputException) as e:
            if timed_out.is_set():
                raise QueryTimeout(timeout) from None
            raise QueryRefused(f"refused: {_first_line(e)}") from None
        except duckdb.Error as e:
            if timed_out.is_set():
                raise QueryTimeout(timeout) from None
            raise QueryRefused(f"the query failed: {_first_line(e)}", code="sql-error") from None
        finally:
            timer.cancel()
    finally:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
    truncated = table.num_rows > max_rows
    if truncated:
        table = table.slice(0, max_rows)
    return QueryResult(table, truncated, time.perf_counter() - started, position)


# -- result formats ------------------------------------------------------------------------
def _json_value(v: Any) -> Any:
    if isinstance(v, UUID | Decimal):
        return str(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    if isinstance(v, float) and v != v:  # NaN is not JSON
        return None
    return v


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (decimals and ids as text, times as ISO 8601)."""
    return [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]


def to_json(result: QueryResult) -> dict[str, Any]:
    return {
        "columns": [{"name": f.name, "type": str(f.type)} for f in result.table.schema],
        "rows": rows_of(result.table),
        "row_count": result.table.num_rows,
        "truncated": result.truncated,
        "position": result.position,
        "seconds": round(result.seconds, 4),
    }


def to_csv(table: pa.Table) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else _csv_value(v) for v in row.values()])
    return out.getvalue().encode()


def _csv_value(v: Any) -> Any:
    v = _json_value(v)
    return json.dumps(v) if isinstance(v, dict | list) else v


def to_arrow(table: pa.Table) -> bytes:
    """An Arrow IPC stream (media type application/vnd.apache.arrow.stream)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# -- Parquet export ------------------------------------------------------------------------
def export_parquet(con: duckdb.DuckDBPyConnection, directory: Path, *,
                   record_to: Path | None = None) -> dict[str, Any]:
    """Every table of the star as Parquet, from one snapshot, with a manifest giving the
    log position it reflects. Written by Python (pyarrow): DuckDB itself has no file access.
    ``record_to``: the exports' ledger, where the export is recorded (an erasure rewrites
    the files it lists)."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = (*schema.DATA_TABLES, "dim_stage", "sla_target")
    manifest: dict[str, Any] = {"tables": {}}
    con.execute("BEGIN TRANSACTION READ ONLY")
    try:
        manifest["position"] = tracked_position(con)
        for name in tables:
            reader = con.sql(f"SELECT * FROM {name}").to_arrow_reader(batch_size=200_000)
            path = directory / f"{name}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            rows = 0
            with pq.ParquetWriter(tmp, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            os.replace(tmp, path)
            manifest["tables"][name] = {"file": path.name, "rows": rows}
    finally:
        con.execute("ROLLBACK")
    manifest["exported_at"] = datetime.now(UTC).isoformat()
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if record_to is not None:
        record_export(record_to, directory, manifest)
    return manifest


def record_export(ledger: Path, directory: Path, manifest: dict[str, Any]) -> None:
    """Append one export (directory, files, position, time) to the exports' ledger."""
    ledger.parent.mkdir(parents=True, exist_ok=True)
    entry = {"directory": str(directory.resolve()), "exported_at": manifest["exported_at"],
             "position": manifest["position"],
             "files": sorted(t["file"] for t in manifest["tables"].values())}
    with ledger.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
