"""Write throughput: the CRM's command path against eventsourcing's default
application and against raw PostgreSQL inserts.

Three contenders, all against one throw-away PostgreSQL database:

``ours``
    ``CommandService.execute`` on a ``CrmApplication`` (PostgreSQL recorder with
    e-mail reservations, per-customer sealing of personal data, optimistic
    concurrency). Per customer: ``RegisterCustomer`` (with a unique e-mail contact),
    ``ChangeCustomerDetails`` with ``expected_version``, ``AddContact`` (a second,
    unique e-mail address).
``baseline``
    A plain ``eventsourcing.application.Application`` with a plain
    ``eventsourcing.domain.Aggregate`` (``@event`` methods ``register`` /
    ``change_name`` / ``add_email``), default mapper/transcoder and default
    PostgreSQL application recorder, in its own tables (``baselinecrm_events``).
    Same writes: create, load + update, load + add.
``limit``
    Raw psycopg ``executemany`` of rows of the same byte size as ours' stored
    events into a plain table without indexes, 100 rows per transaction: the
    physical ceiling of this server for this row size.

Every case appends a fixed number of events (= commands; each command appends
exactly one event), with 1 client and with 8 concurrent clients (threads, each on
its own customers). ``ours`` and ``baseline`` are run interleaved, and the median
of several repetitions is reported, because the machine is shared and noisy.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as EsAggregate
from eventsourcing.domain import event
from eventsourcing.utils import Environment
from psycopg import sql

from commands import HANDLERS
from commands.application import CommandService, CrmApplication, Principal, Request
from commands.customer import AddContact, ChangeCustomerDetails, ContactIn, RegisterCustomer
from crm.bootstrap import EmbeddedPostgres, postgres_env

#: Where a server is looked for first (a throw-away database is created in it).
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Connection pool of each application (and as many again on demand): with more
#: clients than connections the clients queue for one, as they would in a server.
POOL_SIZE = 16
#: The most connections the raw-insert ceiling opens (the server allows ~100 in all).
LIMIT_CONNECTIONS = 16
#: Events per transaction of the raw-insert ceiling.
LIMIT_BATCH = 100
#: The operations of one customer, in order: each appends one event.
OPS = ("create", "update", "add")
LIMIT_TABLE = "bench_limit_rows"


@dataclass(frozen=True)
class Settings:
    commands: int = 3_000  # per case (contender x client count x repetition)
    reps: int = 5
    clients: tuple[int, ...] = (1, 8, 64)
    warmup_commands: int = 300  # per contender and client count, not measured
    #: Rows per case of the raw-insert ceiling: more than ``commands``, because a few
    #: thousand rows take only ~0.1 s, too short to measure steadily with 8 threads.
    limit_rows: int = 30_000
    server: str | None = None  # a server's maintenance URL; default: 127.0.0.1:5432
    embedded: bool = False  # use an embedded server even if one answers at 127.0.0.1:5432


FULL = Settings()
QUICK = Settings(commands=300, reps=3, warmup_commands=60, limit_rows=10_000)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the database ------------------------------------------------------------------
@dataclass
class Database:
    url: str
    name: str
    where: str  # "127.0.0.1:5432" or "embedded"
    server_version: str


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _with_dbname(url: str, dbname: str) -> str:
    return urlparse(url)._replace(path="/" + dbname).geturl()


@contextmanager
def throwaway_database(server: str | None = None, *, embedded_only: bool = False) -> Iterator[Database]:
    """A new database ``crm_bench_<hex>``, dropped afterwards.

    On the given server, else on 127.0.0.1:5432 (user postgres) if one answers, else
    on an embedded server in a temporary directory that is removed afterwards.
    """
    admin = server or DEFAULT_SERVER
    embedded: EmbeddedPostgres | None = None
    tmp: str | None = None
    where = urlparse(admin).netloc.rpartition("@")[2] or "local socket"
    if embedded_only or not _answers(admin):
        if server is not None:
            raise SystemExit(f"no PostgreSQL server answers at {server}")
        tmp = tempfile.mkdtemp(prefix="crm-bench-")
        log(f"starting an embedded PostgreSQL server in {tmp}")
        embedded = EmbeddedPostgres(Path(tmp))
        try:
            admin = embedded.start()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        where = "embedded"
    name = f"crm_bench_{secrets.token_hex(6)}"
    created = False
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created = True
            row = conn.execute("SHOW server_version").fetchone()
            server_version = row[0] if row else "?"
        log(f"created database {name} on {where}")
        yield Database(_with_dbname(admin, name), name, where, server_version)
    finally:
        try:
            if created:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )
                log(f"dropped database {name}")
        finally:
            if embedded is not None:
                embedded.stop()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


# -- the contenders ----------------------------------------------------------------
class Contender(Protocol):
    label: str

    def create(self, key: str) -> tuple[UUID, int]: ...
    def update(self, customer_id: UUID, version: int, key: str) -> int: ...
    def add(self, customer_id: UUID, version: int, key: str) -> int: ...
    def close(self) -> None: ...


class Ours:
    """The CRM's command path: ``CommandService.execute`` on a ``CrmApplication``."""

    label = "ours"

    def __init__(self, url: str):
        self.app = CrmApplication(postgres_env(url, pool_size=POOL_SIZE), kek=secrets.token_bytes(32))
        self.service = CommandService(self.app, HANDLERS, email_key=secrets.token_bytes(32))
        self.principal = Principal(id="bench-user", role="sales_rep")

    def create(self, key: str) -> tuple[UUID, int]:
        command = RegisterCustomer(
            kind="company",
            name=f"Bench {key} Ltd",
            contacts=[ContactIn(kind="email", value=f"{key}@bench.example.com", primary=True)],
            source="benchmark",
            industry="software",
            country="GB",
            preferred_language="en-GB",
            tags=["bench"],
        )
        r = self.service.execute(command, Request(self.principal, correlation_id=key))
        return r.id, r.version

    def update(self, customer_id: UUID, version: int, key: str) -> int:
        command = ChangeCustomerDetails(name=f"Bench {key} Group")
        request = Request(
            self.principal, correlation_id=key, target=customer_id, expected_version=version
        )
        return self.service.execute(command, request).version

    def add(self, customer_id: UUID, version: int, key: str) -> int:
        command = AddContact(
            contact=ContactIn(kind="email", value=f"{key}.billing@bench.example.com", label="billing")
        )
        request = Request(self.principal, correlation_id=key, target=customer_id)
        return self.service.execute(command, request).version

    def close(self) -> None:
        self.app.close()


class BaselineCustomer(EsAggregate):
    """eventsourcing's own way: a plain Aggregate with ``@event`` methods."""

    @event("Registered")
    def __init__(self, kind: str, name: str, email: str, source: str, owner_id: str,
                 lifecycle_stage: str, industry: str, country: str,
                 preferred_language: str, tags: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.emails = [email]
        self.source = source
        self.owner_id = owner_id
        self.lifecycle_stage = lifecycle_stage
        self.industry = industry
        self.country = country
        self.preferred_language = preferred_language
        self.tags = tags

    @classmethod
    def register(cls, **kwargs: Any) -> BaselineCustomer:
        return cls(**kwargs)

    @event("NameChanged")
    def change_name(self, name: str) -> None:
        self.name = name

    @event("EmailAdded")
    def add_email(self, email: str) -> None:
        self.emails.append(email)


class BaselineApplication(Application[UUID]):
    """eventsourcing's default application: default mapper, transcoder, recorder."""

    name = "BaselineCrm"  # -> table baselinecrm_events

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only what we pass (as CrmApplication does): the process environment must
        # not switch on a cipher, compressor, cache or snapshots behind our back.
        return Environment(name, dict(env or {}))


class Baseline:
    label = "baseline"

    def __init__(self, url: str):
        self.app = BaselineApplication(postgres_env(url, pool_size=POOL_SIZE))

    def create(self, key: str) -> tuple[UUID, int]:
        customer = BaselineCustomer.register(
            kind="company",
            name=f"Bench {key} Ltd",
            email=f"{key}@bench.example.com",
            source="benchmark",
            owner_id="bench-user",
            lifecycle_stage="lead",
            industry="software",
            country="GB",
            preferred_language="en-GB",
            tags=["bench"],
        )
        self.app.save(customer)
        return customer.id, customer.version

    def _get(self, customer_id: UUID, version: int | None) -> BaselineCustomer:
        customer: BaselineCustomer = self.app.repository.get(customer_id)
        if version is not None and customer.version != version:  # the same check as ours
            raise RuntimeError(f"{customer_id} is at {customer.version}, expected {version}")
        return customer

    def update(self, customer_id: UUID, version: int, key: str) -> int:
        customer = self._get(customer_id, version)
        customer.change_name(f"Bench {key} Group")
        self.app.save(customer)
        return customer.version

    def add(self, customer_id: UUID, version: int, key: str) -> int:
        customer = self._get(customer_id, None)
        customer.add_email(f"{key}.billing@bench.example.com")
        self.app.save(customer)
        return customer.version

    def close(self) -> None:
        self.app.close()


# -- running a case ----------------------------------------------------------------
@dataclass
class CaseRun:
    contender: str
    clients: int
    commands: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)  # op -> seconds
    groups: int | None = None  # ours: transactions the commands were appended in
    #: ours: records taken from the command path's cache, and records loaded in all
    cache_hits: int = 0
    records_loaded: int = 0

    @property
    def rate(self) -> float:
        return self.commands / self.seconds


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _run_threads(clients: int, work: Callable[[int, threading.Barrier], None]) -> float:
    """Run ``work(i, barrier)`` in ``clients`` threads; wall seconds from the start signal."""
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            work(i, barrier)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(i,), name=f"bench-{i}",
                                daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    return seconds


def run_commands(contender: Contender, clients: int, commands: int, tag: str) -> CaseRun:
    """``commands`` commands (create, update, add per customer) by ``clients`` threads."""
    customers = _split(commands // len(OPS), clients)
    per_client: list[dict[str, list[float]]] = [{op: [] for op in OPS} for _ in range(clients)]
    clock = time.perf_counter

    def work(i: int, barrier: threading.Barrier) -> None:
        lat = per_client[i]
        # Keys of one length, so warm-up and measured events have the same size.
        keys = [f"{tag}-c{i}-{n:06d}" for n in range(customers[i])]
        barrier.wait()
        for key in keys:
            t0 = clock()
            customer_id, version = contender.create(key)
            t1 = clock()
            version = contender.update(customer_id, version, key)
            t2 = clock()
            contender.add(customer_id, version, key)
            t3 = clock()
            lat["create"].append(t1 - t0)
            lat["update"].append(t2 - t1)
            lat["add"].append(t3 - t2)

    committer = getattr(getattr(getattr(contender, "app", None), "recorder", None), "committer", None)
    groups_before = committer.groups if committer is not None else 0
    cache = getattr(getattr(contender, "service", None), "cache", None)
    hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
    seconds = _run_threads(clients, work)
    latencies = {op: [x for c in per_client for x in c[op]] for op in OPS}
    groups = committer.groups - groups_before if committer is not None else None
    run = CaseRun(contender.label, clients, len(OPS) * sum(customers), seconds, latencies, groups)
    if cache is not None:
        run.cache_hits = cache.hits - hits
        run.records_loaded = run.cache_hits + cache.misses - misses
    return run


class Limit:
    """Raw inserts of same-sized rows into a plain table: the physical ceiling."""

    label = "limit"

    def __init__(self, url: str, state_bytes: int, topic_chars: int):
        self.url = url
        self.state_bytes = state_bytes
        self.topic = ("T" * topic_chars) or "T"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {LIMIT_TABLE} ("
                " originator_id uuid NOT NULL, originator_version bigint NOT NULL,"
                " topic text, state bytea)"
            )
        # Random (incompressible) payloads, like ours' sealed events; a pool of them
        # is reused so generating them is not measured.
        self.payloads = [os.urandom(state_bytes) for _ in range(64)]

    def run(self, clients: int, rows: int) -> CaseRun:
        threads = min(clients, LIMIT_CONNECTIONS)
        per_client = _split(rows, threads)
        statement = (
            f"INSERT INTO {LIMIT_TABLE} (originator_id, originator_version, topic, state)"
            " VALUES (%s, %s, %s, %s)"
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {LIMIT_TABLE}")  # keeps the disk use of the run small
        connections = [psycopg.connect(self.url, autocommit=True) for _ in range(threads)]

        def work(i: int, barrier: threading.Barrier) -> None:
            conn = connections[i]
            batch_rows = [
                (uuid.uuid4(), n % 3 + 1, self.topic, self.payloads[n % len(self.payloads)])
                for n in range(per_client[i])
            ]
            batches = [batch_rows[j:j + LIMIT_BATCH] for j in range(0, len(batch_rows), LIMIT_BATCH)]
            barrier.wait()
            with conn.cursor() as cur:
                for batch in batches:
                    with conn.transaction():
                        cur.executemany(statement, batch)

        try:
            seconds = _run_threads(threads, work)
        finally:
            for conn in connections:
                conn.close()
        return CaseRun(self.label, clients, rows, seconds)


# -- measuring -----------------------------------------------------------------------
def _table_stats(url: str, table: str) -> dict[str, float]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), avg(octet_length(state)), avg(octet_length(topic))"
                " FROM {}"
            ).format(sql.Identifier(table))
        ).fetchone()
    assert row is not None
    return {
        "events": int(row[0]),
        "avg_state_bytes": float(row[1] or 0),
        "avg_topic_bytes": float(row[2] or 0),
    }


def environment(server: Any, **extra: Any) -> dict[str, Any]:
    """Where a report was measured: Python, platform, CPUs, library and server versions."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "eventsourcing": dist_version("eventsourcing"),
        "psycopg": dist_version("psycopg"),
        "postgres": server,
        **extra,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _tag(label: str) -> str:
    """A fresh prefix for one case's customer keys (e-mail addresses stay unique)."""
    return f"{label[0]}{secrets.token_hex(5)}"


def measure(settings: Settings) -> dict[str, Any]:
    """The whole benchmark, in one throw-away database; returns the results document."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    runs: list[CaseRun] = []
    expected = {"ours": 0, "baseline": 0}
    with throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        contenders: list[Contender] = []
        try:
            contenders = [Ours(db.url), Baseline(db.url)]
            log("warming up")
            for clients in settings.clients:
                for c in contenders:
                    r = run_commands(c, clients, settings.warmup_commands, _tag(c.label))
                    expected[c.label] += r.commands
            sizes = _table_stats(db.url, "crm_events")
            limit = Limit(db.url, round(sizes["avg_state_bytes"]), round(sizes["avg_topic_bytes"]))
            for clients in settings.clients:
                limit.run(clients, settings.limit_rows // 5)

            for rep in range(settings.reps):
                for clients in settings.clients:
                    for c in contenders:
                        r = run_commands(c, clients, settings.commands, _tag(c.label))
                        expected[c.label] += r.commands
                        runs.append(r)
                        log(f"rep {rep + 1}/{settings.reps} {c.label:8} {clients} client(s): "
                            f"{r.rate:8.1f} commands/s")
                    r = limit.run(clients, settings.limit_rows)
                    runs.append(r)
                    log(f"rep {rep + 1}/{settings.reps} {'limit':8} {clients} client(s): "
                        f"{r.rate:8.1f} rows/s")
        finally:
            for c in contenders:
                c.close()
        ours_stats = _table_stats(db.url, "crm_events")
        baseline_stats = _table_stats(db.url, "baselinecrm_events")
        for label, stats in (("ours", ours_stats), ("baseline", baseline_stats)):
            if stats["events"] != expected[label]:
                raise RuntimeError(
                    f"{label}: {stats['events']} events stored, {expected[label]} expected"
                )
        server = {"where": db.where, "version": db.server_version}
    return _document(settings, runs, ours_stats, baseline_stats, limit.state_bytes,
                     server, started_at, time.perf_counter() - started)


def _document(settings: Settings, runs: list[CaseRun], ours_stats: dict[str, float],
              baseline_stats: dict[str, float], limit_state_bytes: int,
              server: dict[str, str], started_at: datetime, seconds: float) -> dict[str, Any]:
    cases: dict[str, dict[str, Any]] = {}
    for clients in settings.clients:
        per: dict[str, Any] = {}
        for label in ("ours", "baseline", "limit"):
            mine = [r for r in runs if r.contender == label and r.clients == clients]
            rates = [r.rate for r in mine]
            entry: dict[str, Any] = {
                "commands_per_case": settings.commands,
                "rates": [round(x, 1) for x in rates],
                "median": round(statistics.median(rates), 1),
                "min": round(min(rates), 1),
                "max": round(max(rates), 1),
            }
            groups = [r.groups for r in mine if r.groups]
            if groups:
                entry["commands_per_transaction"] = round(
                    sum(r.commands for r in mine) / sum(groups), 1)
            loaded = sum(r.records_loaded for r in mine)
            if loaded:
                entry["records_from_cache"] = round(sum(r.cache_hits for r in mine) / loaded, 3)
            if label == "limit":
                entry["commands_per_case"] = settings.limit_rows
            else:
                # Percentiles per repetition, then their median over the repetitions
                # (as for the rates: one disturbed repetition must not dominate).
                lat: dict[str, dict[str, Any]] = {}
                for op in (*OPS, "all"):
                    per_rep = [
                        [x for o in OPS for x in r.latencies[o]] if op == "all" else r.latencies[op]
                        for r in mine
                    ]
                    p50s = [percentile(xs, 50) * 1e3 for xs in per_rep]
                    p95s = [percentile(xs, 95) * 1e3 for xs in per_rep]
                    lat[op] = {
                        "p50_ms": round(statistics.median(p50s), 2),
                        "p95_ms": round(statistics.median(p95s), 2),
                        "p50_ms_per_rep": [round(x, 2) for x in p50s],
                        "p95_ms_per_rep": [round(x, 2) for x in p95s],
                        "samples_per_rep": [len(xs) for xs in per_rep],
                    }
                entry["latency"] = lat
            per[label] = entry
        ours, base, lim = per["ours"]["median"], per["baseline"]["median"], per["limit"]["median"]
        per["ratios"] = {
            "ours_over_baseline": round(ours / base, 3),
            "ours_over_limit": round(ours / lim, 4),
            "baseline_over_limit": round(base / lim, 4),
        }
        cases[str(clients)] = per
    return {
        "benchmark": "write_throughput",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 1),
        "settings": asdict(settings) | {"server": None},  # the URL may hold a password
        "environment": environment(server, pool_size=POOL_SIZE, limit_batch_rows=LIMIT_BATCH),
        "stored": {
            "ours": ours_stats,
            "baseline": baseline_stats,
            "limit_state_bytes": limit_state_bytes,
        },
        "cases": cases,
    }


# -- reporting ------------------------------------------------------------------------
def markdown(doc: dict[str, Any]) -> str:
    s, env, stored = doc["settings"], doc["environment"], doc["stored"]
    lines = [
        f"# Write throughput ({doc['started_at']})",
        "",
        f"{s['commands']:,} commands (= events) per case ({s['limit_rows']:,} rows for the "
        f"limit), median of {s['reps']} interleaved repetitions after "
        f"{s['warmup_commands']:,} warm-up commands per contender and client count. "
        f"PostgreSQL {env['postgres']['version']} ({env['postgres']['where']}), "
        f"{env['cpus']} CPUs, Python {env['python']}, eventsourcing {env['eventsourcing']}. "
        f"Whole run {doc['duration_seconds']:.0f} s.",
        "",
        "| clients | ours cmd/s | baseline cmd/s | limit rows/s | ours/baseline | ours/limit "
        "| ours p50 ms | ours p95 ms | ours cmd/transaction | ours records from cache |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, c in doc["cases"].items():
        o, b, li, r = c["ours"], c["baseline"], c["limit"], c["ratios"]
        lines.append(
            f"| {clients} | {o['median']:,.0f} | {b['median']:,.0f} | {li['median']:,.0f} "
            f"| {r['ours_over_baseline']:.2f} | {r['ours_over_limit']:.3f} "
            f"| {o['latency']['all']['p50_ms']:.2f} | {o['latency']['all']['p95_ms']:.2f} "
            f"| {o.get('commands_per_transaction', 1):.1f} "
            f"| {100 * o.get('records_from_cache', 0):.0f} % |"
        )
    lines += [
        "",
        "Spread (min–max commands/s over the repetitions) and latency per command type "
        "(p50 / p95 ms per command, median over the repetitions):",
        "",
        "| clients | contender | min–max /s | create | update | add |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for clients, c in doc["cases"].items():
        for label in ("ours", "baseline", "limit"):
            e = c[label]
            cells = ["", "", ""]
            if "latency" in e:
                cells = [f"{e['latency'][op]['p50_ms']:.2f} / {e['latency'][op]['p95_ms']:.2f}"
                         for op in OPS]
            lines.append(f"| {clients} | {label} | {e['min']:,.0f}–{e['max']:,.0f} | "
                         + " | ".join(cells) + " |")
    lines += [
        "",
        f"Stored event size (avg bytes of state): ours {stored['ours']['avg_state_bytes']:.0f}, "
        f"baseline {stored['baseline']['avg_state_bytes']:.0f}; limit rows carry "
        f"{stored['limit_state_bytes']} random bytes each, {env['limit_batch_rows']} rows per "
        f"transaction, plain table without indexes. Events verified after the run: ours "
        f"{stored['ours']['events']:,}, baseline {stored['baseline']['events']:,}.",
        "",
    ]
    return "\n".join(lines)
