"""Replay and audit: timeline and as-of latency for customers with 100, 1,000 and 10,000
events, and how fast `crm audit verify` checks a log of a million events.

The log: ``projection_catchup``'s generated CRM history (COPY, personal data sealed),
then one customer per size whose own record has that many events (details changes,
tags, consents, preferences, purchases; one in twenty back-dated by up to 60 days),
appended the same way. Events loaded in bulk are linked into the hash chain by
``link_backlog`` (the same links the append path writes in SQL), timed too.

``as_of``
    ``Replayer.state`` at a random business time and a random recording time within
    the customer's history (snapshots every 200 versions, made on the first query and
    not timed). Beside it, in the same run: ``no snapshots`` (the same rebuild from
    version 1) and ``baseline``: eventsourcing's ``repository.get`` of the same
    aggregate with no snapshots, i.e. the plain rebuild of the current state.
``timeline``
    One page of 100 entries with field-level changes: the first page, one in the
    middle and the last (pages after the first start from a snapshot).
``verify``
    ``verify_chain`` over the whole log (server-side cursors, 10,000 rows a fetch),
    with one signed checkpoint at the head.
"""

from __future__ import annotations

import random
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from aggregates.customer import Customer
from bench.projection_catchup import INDUSTRIES, TAGS, _Keys, generate
from bench.write_throughput import environment, log, percentile, throwaway_database
from commands.application import CrmApplication
from crm.bootstrap import postgres_env
from events import customer as ce
from events.base import Actor, CrmEvent, EventMeta
from events.codec import EventCodec
from events.keys import KeyWrapper
from events.values import ContactPoint, PurchaseLine
from replay import audit
from replay import state as replay_state
from replay.signing import private_key_from_seed
from replay.state import Replayer
from replay.timeline import TimelineQuery, timeline


@dataclass(frozen=True)
class Settings:
    events: int = 1_000_000  # the generated log verify runs over (plus the big customers)
    sizes: tuple[int, ...] = (100, 1_000, 10_000)
    queries: int = 30  # as-of queries per size and contender
    seed: int = 20261123
    server: str | None = None
    embedded: bool = False


FULL = Settings()
QUICK = Settings(events=50_000, queries=10)


class BigCustomer:
    """One customer whose own record has ``n`` events."""

    def __init__(self, n: int, rng: random.Random, codec: EventCodec, start: datetime):
        self.id = UUID(int=rng.getrandbits(128), version=4)
        self.n = n
        self.rng = rng
        self.codec = codec
        self.clock = start
        self.first: datetime = start
        self.last: datetime = start

    def _meta(self) -> EventMeta:
        rng = self.rng
        self.clock += timedelta(minutes=rng.randint(1, 600))
        occurred = self.clock
        if rng.random() < 0.05:  # logged late: back-dated by up to 60 days
            occurred = self.clock - timedelta(days=rng.uniform(0.1, 60))
        self.last = self.clock
        corr = f"big-{rng.getrandbits(48):012x}"
        return EventMeta(event_id=UUID(int=rng.getrandbits(128), version=4), occurred_at=occurred,
                         recorded_at=self.clock, actor=Actor(f"rep-{rng.randint(1, 9)}", "sales_rep"),
                         correlation_id=corr, causation_id=corr,
                         command_id=UUID(int=rng.getrandbits(128), version=4),
                         reason="bench" if rng.random() < 0.2 else None)

    def events(self) -> list[tuple[UUID, int, str, bytes]]:
        rng = self.rng
        out: list[tuple[UUID, int, str, bytes]] = []
        industry, tags = "retail", set[str]()

        def add(cls: type[CrmEvent], **fields: Any) -> None:
            version = len(out) + 1
            meta = self._meta()
            event = cls(originator_id=self.id, originator_version=version,  # type: ignore[call-arg]
                        timestamp=meta.recorded_at, meta=meta, **fields)
            topic, state = self.codec.encode(event)
            out.append((self.id, version, topic, state))

        add(ce.CustomerRegistered, kind="person", name=f"Big Customer {self.n}",
            contacts=(ContactPoint(UUID(int=rng.getrandbits(128), version=4), "email",
                                   f"big{self.n}@example.com"),),
            source="web", owner_id="rep-1", lifecycle_stage="lead", industry=industry,
            country="DE", preferred_language="de", tags=())
        self.first = self.clock
        while len(out) < self.n:
            roll = rng.random()
            if roll < 0.3:
                before, industry = industry, rng.choice([i for i in INDUSTRIES if i != industry])
                add(ce.CustomerDetailsChanged, changes={"industry": {"before": before, "after": industry}},
                    personal_changes=None)
            elif roll < 0.5:
                tag = rng.choice(TAGS)
                if tag in tags:
                    tags.discard(tag)
                    add(ce.CustomerUntagged, tag=tag)
                else:
                    tags.add(tag)
                    add(ce.CustomerTagged, tag=tag)
            elif roll < 0.6:
                add(ce.ConsentSet, channel=rng.choice(["email", "sms", "phone"]),
                    granted=rng.random() < 0.5, previous=None)
            elif roll < 0.7:
                add(ce.PreferencesSet, changes={"newsletter": {"before": None,
                                                               "after": rng.choice(["weekly", "monthly"])}})
            else:
                qty, price = Decimal(rng.randint(1, 5)), Decimal(rng.randint(100, 50_000)) / 100
                add(ce.PurchaseRecorded, order_id=f"SO-{rng.getrandbits(40)}", amount=qty * price,
                    currency="EUR", lines=(PurchaseLine("SKU-1", "Licence", qty, price),),
                    purchased_at=self.clock)
        return out


def _append(url: str, rows: list[tuple[UUID, int, str, bytes]], keys: _Keys, kek: bytes) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        start = conn.execute("SELECT COALESCE(max(notification_id), 0) FROM crm_events").fetchone()
        assert start is not None
        n = int(start[0])
        with conn.cursor() as cur, cur.copy(
            "COPY crm_events (notification_id, originator_id, originator_version, topic, state) FROM STDIN"
        ) as copy:
            for row in rows:
                n += 1
                copy.write_row((n, *row))
        conn.execute("SELECT setval(pg_get_serial_sequence('crm_events', 'notification_id'), %s)", (n,))
        wrapper = KeyWrapper(kek)
        with conn.cursor() as cur, cur.copy("COPY crm_subject_keys (subject_id, wrapped_key) FROM STDIN") as copy:
            for subject, key in keys.keys.items():
                copy.write_row((subject, wrapper.wrap(subject, key.key)))
        conn.execute("ANALYZE crm_events")


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples) * 1e3, 2),
            "p95_ms": round(percentile(samples, 95) * 1e3, 2),
            "max_ms": round(max(samples) * 1e3, 2), "n": len(samples)}


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(settings: Settings) -> dict[str, Any]:
    started, started_at = time.perf_counter(), datetime.now(UTC)
    kek = secrets.token_bytes(32)
    rng = random.Random(settings.seed)
    results: list[dict[str, Any]] = []
    with throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        app = CrmApplication(postgres_env(db.url, pool_size=4), kek=kek)
        connect = app.factory.datastore.get_connection  # type: ignore[attr-defined]
        audit.create_tables(connect)
        replay_state.create_tables(connect)
        log(f"generating {settings.events:,} events")
        gen = generate(db.url, settings.events, kek, settings.seed)
        keys = _Keys()
        codec = EventCodec(keys)
        big = [BigCustomer(n, rng, codec, datetime(2026, 1, 1, tzinfo=UTC)) for n in settings.sizes]
        rows = [row for c in big for row in c.events()]
        _append(db.url, rows, keys, kek)
        total = settings.events + len(rows)
        log(f"linking {total:,} events into the hash chain")
        t = time.perf_counter()
        linked = app.recorder.link_backlog()  # type: ignore[attr-defined]
        link_seconds = time.perf_counter() - t
        log(f"linked {linked:,} events in {link_seconds:.1f} s")

        replayer = Replayer(connect, app.codec)
        plain = Replayer(connect, app.codec, snapshots=False)
        for c in big:
            t = time.perf_counter()
            made = replayer.refresh_snapshots(c.id)
            snap_seconds = time.perf_counter() - t
            span = (c.last - c.first).total_seconds()

            def when() -> datetime:
                return c.first + timedelta(seconds=rng.uniform(0, span))  # noqa: B023

            times = [(when(), when()) for _ in range(settings.queries)]
            it = iter(times * 2)

            def ours(r: Replayer = replayer) -> Any:
                as_of, known = next(it)  # noqa: B023
                return r.state(c.id, as_of=as_of, as_known_at=known)  # noqa: B023

            ours()  # warm
            it = iter(times * 2)
            as_of_ours = _timed(ours, settings.queries)
            it = iter(times * 2)
            as_of_plain = _timed(lambda: ours(plain), min(settings.queries, 10))
            app.repository.get(c.id, projector_func=Customer.project)  # warm
            baseline = _timed(lambda: app.repository.get(c.id, projector_func=Customer.project),  # noqa: B023
                              min(settings.queries, 10))
            now = replayer.state(c.id)
            assert now is not None and now.state() == app.repository.get(
                c.id, projector_func=Customer.project).state()
            with psycopg.connect(db.url) as conn:
                positions = [r[0] for r in conn.execute(
                    "SELECT notification_id FROM crm_events WHERE originator_id = %s"
                    " ORDER BY originator_version", (c.id,)).fetchall()]
            pages = {"first": 0, "middle": positions[len(positions) // 2 - 1],
                     "last": positions[max(0, len(positions) - 101)]}
            tl: dict[str, Any] = {}
            for name, after in pages.items():
                timeline(replayer, c.id, TimelineQuery(after=after, limit=100))  # warm
                tl[name] = _ms(_timed(lambda: timeline(replayer, c.id, TimelineQuery(after=after, limit=100)),  # noqa: B023
                                      max(3, settings.queries // 3)))
            results.append({"events": c.n, "snapshots": made, "snapshot_seconds": round(snap_seconds, 3),
                            "as_of": _ms(as_of_ours), "as_of_no_snapshots": _ms(as_of_plain),
                            "baseline_repository_get": _ms(baseline), "timeline_page_100": tl})
            log(f"{c.n:,} events: as_of p50 {results[-1]['as_of']['p50_ms']} ms "
                f"(no snapshots {results[-1]['as_of_no_snapshots']['p50_ms']} ms, baseline "
                f"{results[-1]['baseline_repository_get']['p50_ms']} ms); timeline last page p50 "
                f"{tl['last']['p50_ms']} ms")

        key = private_key_from_seed(secrets.token_bytes(32))
        audit.write_checkpoint(connect, key)
        log(f"verifying the chain over {total:,} events")
        report = audit.verify_chain(connect, key.public_key(),
                                    progress=lambda n: log(f"  verified {n:,}") if n % 500_000 == 0 else None)
        log(f"verify: {report.events:,} events in {report.seconds:.1f} s = "
            f"{report.events_per_second:,.0f} events/s, findings {len(report.findings)}")
        server = {"where": db.where, "version": db.server_version}
        app.close()
    return {
        "benchmark": "replay_audit",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_seconds": round(time.perf_counter() - started, 1),
        "settings": asdict(settings) | {"server": None},
        "environment": environment(server),
        "log": {"generated_events": gen.events, "big_customer_events": len(rows), "total": total,
                "link_backlog_seconds": round(link_seconds, 1),
                "link_backlog_events_per_second": round(linked / link_seconds, 1)},
        "customers": results,
        "verify": {"events": report.events, "seconds": round(report.seconds, 2),
                   "events_per_second": round(report.events_per_second, 1),
                   "findings": len(report.findings), "checkpoints": report.checkpoints},
        "goals": {"as_of_10000_under_100_ms": next(
            (r["as_of"]["p95_ms"] < 100 for r in results if r["events"] == 10_000), None)},
    }


def markdown(doc: dict[str, Any]) -> str:
    env, lg, v = doc["environment"], doc["log"], doc["verify"]
    lines = [
        f"# Replay and audit ({doc['started_at']})",
        "",
        f"Log: {lg['total']:,} events ({lg['generated_events']:,} generated CRM history + "
        f"{lg['big_customer_events']:,} of the measured customers), PostgreSQL "
        f"{env['postgres']['version']} ({env['postgres']['where']}), {env['cpus']} CPUs, Python "
        f"{env['python']}. Whole run {doc['duration_seconds']:.0f} s.",
        "",
        "Rebuilding a customer as of a random business time and a random recording time "
        f"({doc['settings']['queries']} queries; ms):",
        "",
        "| events | as_of p50 | as_of p95 | as_of max | no snapshots p50 | baseline repository.get p50 "
        "| timeline first page p50 | middle p50 | last p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["customers"]:
        tl = r["timeline_page_100"]
        lines.append(
            f"| {r['events']:,} | {r['as_of']['p50_ms']} | {r['as_of']['p95_ms']} | {r['as_of']['max_ms']} "
            f"| {r['as_of_no_snapshots']['p50_ms']} | {r['baseline_repository_get']['p50_ms']} "
            f"| {tl['first']['p50_ms']} | {tl['middle']['p50_ms']} | {tl['last']['p50_ms']} |")
    goal = doc["goals"]["as_of_10000_under_100_ms"]
    lines += [
        "",
        f"10,000 events as of any time under 100 ms (p95): "
        f"{'met' if goal else 'NOT met' if goal is not None else 'not measured'}.",
        "",
        f"**`audit verify`: {v['events']:,} events in {v['seconds']:.1f} s = "
        f"{v['events_per_second']:,.0f} events/s** ({v['findings']} findings, "
        f"{v['checkpoints']} checkpoint). Linking the bulk-loaded log: "
        f"{lg['link_backlog_events_per_second']:,.0f} events/s.",
        "",
    ]
    return "\n".join(lines)
