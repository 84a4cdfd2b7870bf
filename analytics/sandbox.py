"""Analysts' SQL against the analytics database, safely.

A query runs in the process that owns the DuckDB file, on a connection of its own, in a
READ ONLY transaction that is rolled back afterwards. What keeps it harmless:

* exactly one statement, and only a query (SELECT, WITH, FROM, SHOW, DESCRIBE,
  SUMMARIZE, EXPLAIN): writes, ATTACH, COPY, SET, PRAGMA, INSTALL/LOAD, CALL are
  refused before they run;
* the database was opened with ``enable_external_access = false`` (no file or network
  reads such as ``read_csv``) and ``lock_configuration = true`` (no setting can
  change), with a memory limit;
* no extension is installed or loaded automatically (a query naming an extension's
  function fails rather than fetching it);
* a time limit: the connection is interrupted when it runs out;
* a row limit and a size limit on the result: it is read from DuckDB in small Arrow
  batches and encoded a few of them at a time, so a wide result is refused once its
  encoding passes the size limit, without ever being held whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from analytics import schema
from analytics.store import tracked_position

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


class ResultTooLarge(QueryRefused):
    """The encoded result passed the size limit (nothing of it is answered)."""

    def __init__(self, limit: int, format: str):
        super().__init__(
            f"the result is larger than {_size(limit)} as {format} (the server's limit,"
            f" {limit} bytes): select fewer columns or rows (max_rows), aggregate, or use"
            " the Parquet export", code="result-too-large")
        self.limit = limit


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


@dataclass
class QueryResult:
    table: pa.Table
    truncated: bool
    seconds: float
    position: int


@dataclass
class EncodedResult:
    """A result encoded as JSON, CSV or an Arrow stream: the body in pieces (each up to
    about ``PIECE_BYTES``), its size, and what the headers say."""

    pieces: list[bytes]
    size: int
    rows: int
    truncated: bool
    seconds: float
    position: int


#: Rows per Arrow batch read from DuckDB: few, so a batch of wide rows stays small (DuckDB
#: itself holds one vector, 2,048 rows, of the result at a time).
BATCH_ROWS = 64
#: Batches are encoded (and, asked for, customers revealed) in groups of up to this many
#: rows or ``PIECE_BYTES`` of Arrow data, whichever comes first.
GROUP_ROWS = 2048
#: The encoded body is kept in pieces of about this size (no copy of the whole body).
PIECE_BYTES = 1 << 20


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


def _run(con: duckdb.DuckDBPyConnection, sql: str, timeout: float, batch_rows: int,
         consume: Callable[[pa.RecordBatchReader, int], None]) -> int:
    """Check ``sql``, then run it read-only under the time limit and hand its Arrow
    batches to ``consume(reader, position)``; the log position it saw."""
    check(con, sql)
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
            reader = con.sql(sql).to_arrow_reader(batch_size=batch_rows)
            try:
                consume(reader, position)
            finally:
                reader.close()  # the rest unread: DuckDB runs nothing more on it
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
            raise QueryRefused(f"the query failed: {_not_installed(_first_line(e))}",
                               code="sql-error") from None
        finally:
            timer.cancel()
    finally:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
    return position


def _not_installed(message: str) -> str:
    if "exists in the" in message and "extension" in message:
        return message + " (extensions are not installed or loaded here)"
    return message


def run_query(con: duckdb.DuckDBPyConnection, sql: str, *, timeout: float,
              max_rows: int) -> QueryResult:
    """Run one query on ``con`` (a connection of its own), read-only and limited; the
    rows as one Arrow table (for results the server uses itself: KPIs, lifetime values)."""
    started = time.perf_counter()
    batches: list[pa.RecordBatch] = []
    schemas: list[pa.Schema] = []

    def consume(reader: pa.RecordBatchReader, position: int) -> None:
        schemas.append(reader.schema)
        rows = 0
        for b in reader:
            batches.append(b)
            rows += b.num_rows
            if rows > max_rows:
                break

    position = _run(con, sql, timeout, min(max_rows + 1, 100_000), consume)
    table = pa.Table.from_batches(batches, schema=schemas[0])
    truncated = table.num_rows > max_rows
    if truncated:
        table = table.slice(0, max_rows)
    return QueryResult(table, truncated, time.perf_counter() - started, position)


def run_encoded(con: duckdb.DuckDBPyConnection, sql: str, *, format: str, timeout: float,
                max_rows: int, max_bytes: int,
                transform: Callable[[pa.Table], pa.Table] | None = None) -> EncodedResult:
    """Run one analyst's query on ``con`` and encode its result as ``format`` (json, csv
    or arrow) batch by batch as DuckDB hands it over: at most ``max_rows`` rows (more:
    ``truncated``), at most ``max_bytes`` bytes (more: ``ResultTooLarge``, the query
    stops there). ``transform``: applied to each batch before it is encoded (added
    columns must not depend on other batches)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    out = _Body(max_bytes, format)
    rows = 0
    truncated = False

    def consume(reader: pa.RecordBatchReader, position: int) -> None:
        nonlocal rows, truncated
        encoder: _Encoder | None = None
        group: list[pa.RecordBatch] = []
        group_rows = group_bytes = 0

        def encode() -> None:
            nonlocal encoder, group_rows, group_bytes
            table = pa.Table.from_batches(group).combine_chunks()
            group.clear()
            group_rows = group_bytes = 0
            if transform is not None:
                table = transform(table)
            if encoder is None:
                encoder = _ENCODERS[format](out, table.schema)
            encoder.write(table)

        for batch in reader:
            if batch.num_rows == 0:
                continue
            if rows >= max_rows:  # one row more than the limit: say so, read no further
                truncated = True
                break
            if batch.num_rows > max_rows - rows:
                batch = batch.slice(0, max_rows - rows)
                truncated = True
            group.append(batch)
            rows += batch.num_rows
            group_rows += batch.num_rows
            group_bytes += batch.nbytes
            # Narrow rows are encoded some thousands at a time, wide ones batch by batch.
            if group_rows >= GROUP_ROWS or group_bytes >= PIECE_BYTES:
                encode()
            if truncated:
                break
        if group:
            encode()
        if encoder is None:  # no rows: the columns still
            empty = reader.schema.empty_table()
            encoder = _ENCODERS[format](out, (transform(empty) if transform else empty).schema)
        encoder.finish(rows=rows, truncated=truncated, position=position,
                       seconds=time.perf_counter() - started)

    position = _run(con, sql, timeout, BATCH_ROWS, consume)
    pieces = out.close()
    return EncodedResult(pieces, out.size, rows, truncated, time.perf_counter() - started,
                         position)


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
    if isinstance(v, int) and not -(1 << 63) <= v < 1 << 64:  # HUGEINT: as text
        return str(v)
    return v


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (decimals and ids as text, times as ISO 8601)."""
    return [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]


def _json_default(v: Any) -> Any:
    if isinstance(v, UUID | Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, tuple):  # an interval (months, days, nanoseconds)
        return list(v)
    raise TypeError(type(v).__name__)


def _rows_json(table: pa.Table) -> bytes:
    """The rows as a JSON array, as ``rows_of`` makes them, written by orjson."""
    try:
        return orjson.dumps(table.to_pylist(), default=_json_default,
                            option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # e.g. a HUGEINT past 64 bits: the slower way
        return orjson.dumps(rows_of(table), default=str)


def to_json(result: QueryResult) -> dict[str, Any]:
    return {
        "columns": [{"name": f.name, "type": str(f.type)} for f in result.table.schema],
        "rows": rows_of(result.table),
        "row_count": result.table.num_rows,
        "truncated": result.truncated,
        "position": result.position,
        "seconds": round(result.seconds, 4),
    }


def _csv_value(v: Any) -> Any:
    v = _json_value(v)
    return json.dumps(v) if isinstance(v, dict | list) else v


class _Body:
    """The encoded body, kept in pieces of about ``PIECE_BYTES``; refuses to grow past
    ``limit`` bytes."""

    def __init__(self, limit: int, format: str):
        self.limit = limit
        self.format = format
        self.size = 0
        self.pieces: list[bytes] = []
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise ResultTooLarge(self.limit, self.format)
        self._buffer += data
        if len(self._buffer) >= PIECE_BYTES:
            self.pieces.append(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def close(self) -> list[bytes]:
        if self._buffer:
            self.pieces.append(bytes(self._buffer))
            self._buffer.clear()
        return self.pieces

    # what pyarrow asks of a file it writes to
    closed = False

    def flush(self) -> None:
        pass


class _Encoder:
    def __init__(self, out: _Body, schema: pa.Schema):
        self.out = out
        self.schema = schema

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def finish(self, *, rows: int, truncated: bool, position: int, seconds: float) -> None:
        pass


class _JsonEncoder(_Encoder):
    """``{"columns": [...], "rows": [...], "row_count", "truncated", "position", "seconds"}``,
    the rows written a batch at a time."""

    def __init__(self, out: _Body, schema: pa.Schema):
        super().__init__(out, schema)
        columns = [{"name": f.name, "type": str(f.type)} for f in schema]
        out.write(b'{"columns":' + orjson.dumps(columns) + b',"rows":[')
        self.first = True

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        rows = _rows_json(table)[1:-1]
        self.out.write(rows if self.first else b"," + rows)
        self.first = False

    def finish(self, *, rows: int, truncated: bool, position: int, seconds: float) -> None:
        self.out.write(b"]," + orjson.dumps({
            "row_count": rows, "truncated": truncated, "position": position,
            "seconds": round(seconds, 4)})[1:])


class _CsvEncoder(_Encoder):
    """A header line, then one line per row (lists and maps as JSON, empty for NULL)."""

    def __init__(self, out: _Body, schema: pa.Schema):
        super().__init__(out, schema)
        self._write_rows([schema.names])

    def _write_rows(self, rows: list[list[Any]]) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        self.out.write(text.getvalue().encode())

    def write(self, table: pa.Table) -> None:
        self._write_rows([["" if v is None else _csv_value(v) for v in row.values()]
                          for row in table.to_pylist()])


class _ArrowEncoder(_Encoder):
    """An Arrow IPC stream (media type application/vnd.apache.arrow.stream), a record
    batch per group of rows encoded."""

    def __init__(self, out: _Body, schema: pa.Schema):
        super().__init__(out, schema)
        self.writer = ipc.new_stream(pa.PythonFile(out, mode="w"), schema)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def finish(self, *, rows: int, truncated: bool, position: int, seconds: float) -> None:
        self.writer.close()


_ENCODERS: dict[str, type[_Encoder]] = {
    "json": _JsonEncoder, "csv": _CsvEncoder, "arrow": _ArrowEncoder}


# -- Parquet export ------------------------------------------------------------------------
EXPORT_NAME_MAX = 100
EXPORT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_EXPORT_NAME = re.compile(EXPORT_NAME_PATTERN)


def check_export_name(name: str) -> str:
    """``name`` if it is a plain name an export may have (a directory right inside the
    exports directory); otherwise ValueError saying why. Letters, digits, '.', '_' and
    '-', starting with a letter or digit, no '..': never a path."""
    if any(c in name for c in "/\\"):
        raise ValueError("give a name, not a path: '/' and '\\' are not allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("control characters (NUL included) are not allowed")
    if ".." in name:
        raise ValueError("'..' is not allowed")
    if len(name) > EXPORT_NAME_MAX:
        raise ValueError(f"at most {EXPORT_NAME_MAX} characters")
    if not _EXPORT_NAME.fullmatch(name):
        raise ValueError("use letters, digits, '.', '_' and '-', starting with a letter or digit")
    return name


def export_directory(root: Path, name: str) -> Path:
    """Where the export ``name`` is written: ``root/name`` (``root`` made if missing).
    ValueError for a name that is not plain, or whose directory leads out of ``root``
    (a symbolic link put there)."""
    check_export_name(name)
    root.mkdir(parents=True, exist_ok=True)
    base = root.resolve()
    directory = base / name
    if directory.resolve().parent != base:
        raise ValueError(f"the export {name!r} leads out of the exports directory")
    return directory


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
