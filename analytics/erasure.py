"""Erasing one customer's personal data from the analytics file and its Parquet exports.

Personal fields never reach DuckDB (customers appear as keyed pseudonyms, and the link
from pseudonym to customer lives in PostgreSQL, deleted by the read side's erasure).
So this is a check that also cleans: given the customer's personal values (read from
the record before its key was destroyed, held only in memory), every text column
holding one is set to NULL, the file checkpointed, and its bytes searched; each
recorded Parquet export is searched byte by byte, and a file with a hit is rewritten
with those cells NULL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def needles_of(values: Iterable[str | None]) -> list[str]:
    """The personal values worth searching for (blank and very short ones left out)."""
    return sorted({v.strip() for v in values if v and len(v.strip()) >= 4})


def file_hits(path: Path, needles: list[str]) -> int:
    """How many of the needles occur in the file's bytes (UTF-8, any letter case)."""
    data = path.read_bytes().lower()
    return sum(1 for n in needles if n.lower().encode() in data)


def _text_columns(db: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE t.table_type = 'BASE TABLE' AND c.table_schema = 'main'"
        " AND (c.data_type = 'VARCHAR' OR c.data_type = 'JSON')"
        " ORDER BY 1, 2").fetchall()
    return [(str(t), str(c)) for t, c in rows]


def _count_cells(db: duckdb.DuckDBPyConnection, table: str, column: str, lowered: list[str]) -> int:
    condition = " OR ".join(f'contains(lower("{column}"::VARCHAR), ?)' for _ in lowered)
    found = db.execute(f'SELECT count(*) FROM "{table}" WHERE {condition}', lowered).fetchone()
    return int(found[0]) if found else 0


def erase_from_duckdb(db: duckdb.DuckDBPyConnection, path: Path, needles: list[str]) -> dict[str, Any]:
    """NULL every text cell holding one of the values, checkpoint, search the file (its
    bytes, and every text cell again: DuckDB compresses strings)."""
    cleaned: dict[str, int] = {}
    if needles:
        lowered = [n.lower() for n in needles]
        for table, column in _text_columns(db):
            found = _count_cells(db, table, column, lowered)
            if found:
                condition = " OR ".join(f'contains(lower("{column}"::VARCHAR), ?)' for _ in lowered)
                db.execute(f'UPDATE "{table}" SET "{column}" = NULL WHERE {condition}', lowered)
                cleaned[f"{table}.{column}"] = found
    db.execute("CHECKPOINT")
    size = path.stat().st_size if path.exists() else 0
    remaining = file_hits(path, needles) if needles and path.exists() else 0
    if needles:
        remaining += sum(_count_cells(db, t, c, [n.lower() for n in needles]) for t, c in _text_columns(db))
    return {"store": "duckdb", "file": str(path), "action": "searched and cleaned",
            "cells_cleared": cleaned, "bytes_searched": size, "values_found_after": remaining}


def recorded_exports(ledger: Path | None) -> list[Path]:
    """Every Parquet file the exports' ledger lists that still exists."""
    if ledger is None or not ledger.exists():
        return []
    files: set[Path] = set()
    for line in ledger.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            for name in entry["files"]:
                path = Path(entry["directory"]) / name
                if path.exists():
                    files.add(path)
    return sorted(files)


def _clean_column(column: pa.ChunkedArray, needles: list[str]) -> tuple[pa.ChunkedArray, int]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column, 0
    lowered = pc.utf8_lower(column)
    hit = None
    for n in needles:
        m = pc.match_substring(lowered, n.lower())
        hit = m if hit is None else pc.or_(hit, m)
    if hit is None:
        return column, 0
    hit = pc.fill_null(hit, False)
    count = pc.sum(hit).as_py() or 0
    if not count:
        return column, 0
    return pc.if_else(hit, pa.scalar(None, column.type), column), int(count)


def _clean_table(path: Path, needles: list[str]) -> tuple[pa.Table, int]:
    table = pq.read_table(path)
    cells = 0
    columns = []
    for column in table.columns:
        new, n = _clean_column(column, needles)
        columns.append(new)
        cells += n
    return pa.Table.from_arrays(columns, schema=table.schema), cells


def erase_from_exports(ledger: Path | None, needles: list[str]) -> dict[str, Any]:
    """Search every recorded Parquet file (decoded: pages are compressed, bytes alone
    prove nothing); rewrite those holding one of the values with those cells NULL."""
    files = recorded_exports(ledger)
    rewritten: dict[str, int] = {}
    searched = 0
    remaining = 0
    for path in files:
        searched += path.stat().st_size
        if not needles:
            continue
        table, cells = _clean_table(path, needles)
        if cells:
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)
            rewritten[str(path)] = cells
            remaining += _clean_table(path, needles)[1] + file_hits(path, needles)
    return {"store": "parquet", "ledger": str(ledger) if ledger else None, "files_searched": len(files),
            "bytes_searched": searched, "files_rewritten": rewritten, "values_found_after": remaining}
