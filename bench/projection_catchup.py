"""Projection catch-up: how fast the read side rebuilds a read model from the event
log, against eventsourcing's ``ProjectionRunner`` and against raw inserts, and how far
behind the log a following runner stays under a steady write load.

The log is generated, not written command by command: realistic CRM histories
(customers registering, details changing, tags, lifecycle moves, opportunities opened,
moved, won and lost, interactions logged, purchases recorded) are encoded with the
CRM's own ``EventCodec`` -- personal data sealed with a per-customer key -- and
streamed into ``crm_events`` with COPY, in notification-id order; each customer's data
key goes into ``crm_subject_keys`` wrapped with the run's key-encryption key, as the
write side stores it.

``ours``
    ``BatchRunner`` of the customer list read model on a fresh generation, from 0 to
    the head: many events per transaction, rows prefetched and written in bulk.
``baseline``
    ``eventsourcing.projection.ProjectionRunner`` with an equivalent projection: the
    same handlers writing the same rows (same tables), one event per transaction
    with its tracking record, through a ``PostgresTrackingRecorder`` subclass -- the
    way eventsourcing's documentation builds a materialised view.
``limit``
    Raw ``executemany`` inserts of customer-list rows (the read table's columns and
    indexes), 2,000 rows per transaction, as many rows as events: the ceiling for
    writing one row per event.

Then ``lag``: ``crm projections run customers`` runs as its own process, following
the log through LISTEN/NOTIFY, while ``CommandService`` writes about 500 commands/s
with 8 clients; the lag of each event is the time from its recorded time to the
first moment its position is seen committed in the tracking table (polled every
10 ms).
"""

from __future__ import annotations

import bisect
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection as EsProjection
from eventsourcing.projection import ProjectionRunner
from psycopg import sql
from psycopg.types.json import Jsonb

import projections
from bench.write_throughput import environment, log, percentile, throwaway_database
from commands import HANDLERS
from commands.application import CommandService, CrmApplication, Principal, Request
from commands.customer import ContactIn, RecordPurchase, RegisterCustomer, TagCustomer
from commands.interaction import LogInteraction
from commands.opportunity import OpenOpportunity
from crm.bootstrap import postgres_env
from events import customer as ce
from events import interaction as ie
from events import opportunity as oe
from events.base import Actor, CrmEvent, EventMeta
from events.codec import EventCodec
from events.keys import KeyWrapper, SubjectKey, new_data_key
from events.values import ContactPoint, PurchaseLine
from projections.base import BatchView, Projection
from projections.customers import CustomerList
from projections.runner import BatchRunner
from projections.store import ProjectionStore

ROOT = Path(__file__).resolve().parents[1]
#: Rows per transaction of the raw-insert ceiling (= the runner's batch size).
LIMIT_BATCH = 2000
BASELINE_SCHEMA = "bench_baseline"


@dataclass(frozen=True)
class Settings:
    events: int = 1_000_000
    #: events of the comparison with the baseline (and the limit), from the log's start
    subset: int = 50_000
    reps: int = 3
    #: events each read model of ``projections.ALL`` catches up in the all-models case
    all_events: int = 100_000
    lag_seconds: float = 20.0
    lag_rate: float = 500.0  # commands per second, all clients together
    lag_clients: int = 8
    seed: int = 20261123
    server: str | None = None
    embedded: bool = False


FULL = Settings()
QUICK = Settings(events=50_000, subset=5_000, reps=3, all_events=20_000, lag_seconds=5.0)


# -- the generated log -----------------------------------------------------------------
class _Keys:
    """The generator's key ring: one random data key per customer, kept to be stored."""

    def __init__(self) -> None:
        self.keys: dict[UUID, SubjectKey] = {}

    def key_for(self, subject_id: UUID, *, create: bool, new: bool = False) -> SubjectKey | None:
        key = self.keys.get(subject_id)
        if key is None and create:
            key = self.keys[subject_id] = SubjectKey(subject_id.hex, new_data_key())
        return key

    def destroy(self, subject_id: UUID) -> bool:
        raise NotImplementedError


@dataclass
class _Customer:
    id: UUID
    version: int
    owner: str
    stage: str
    tags: set[str]
    industry: str


@dataclass
class _Opportunity:
    id: UUID
    version: int
    customer: UUID
    stage: int
    amount: Decimal


STAGES = [("qualification", 10), ("needs_analysis", 25), ("proposal", 50), ("negotiation", 75)]
FIRST = ["Anna", "Ben", "Chiara", "David", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kemal", "Lena", "Marta", "Noah", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara"]
LAST = ["Müller", "Schmidt", "Rossi", "García", "Novak", "Jensen", "Kowalski", "Dubois",
        "Silva", "Nakamura", "Öztürk", "Nielsen", "Bianchi", "Horvat", "Costa", "Meyer"]
INDUSTRIES = ["retail", "software", "logistics", "healthcare", "manufacturing", "finance",
              "education", "hospitality"]
TAGS = ["vip", "newsletter", "b2b", "partner", "trade-fair", "webinar", "churn-risk", "upsell"]
SUBJECTS = ["Intro call", "Pricing questions", "Demo follow-up", "Renewal", "Support escalation",
            "Quarterly review", "Contract draft", "Onboarding"]


class LogGenerator:
    """Realistic event histories of many customers, interleaved as a busy CRM's are."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.keys = _Keys()
        self.codec = EventCodec(self.keys)
        self.customers: list[_Customer] = []
        self.open: list[_Opportunity] = []
        self.clock = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
        self.counts: dict[str, int] = {}

    def _id(self) -> UUID:
        return UUID(int=self.rng.getrandbits(128), version=4)

    def _meta(self, actor: str) -> EventMeta:
        self.clock += timedelta(milliseconds=self.rng.randint(50, 900))
        corr = f"gen-{self.rng.getrandbits(48):012x}"
        return EventMeta(event_id=self._id(), occurred_at=self.clock, recorded_at=self.clock,
                         actor=Actor(actor, "sales_rep"), correlation_id=corr,
                         causation_id=corr, command_id=self._id())

    def _event(self, cls: type[CrmEvent], originator: UUID, version: int, actor: str,
               **fields: Any) -> CrmEvent:
        meta = self._meta(actor)
        self.counts[cls.type_name] = self.counts.get(cls.type_name, 0) + 1
        return cls(originator_id=originator, originator_version=version,  # type: ignore[call-arg]
                   timestamp=meta.recorded_at, meta=meta, **fields)

    def _register(self) -> CrmEvent:
        rng = self.rng
        cid = self._id()
        first, last = rng.choice(FIRST), rng.choice(LAST)
        company = rng.random() < 0.4
        name = f"{last} {rng.choice(['GmbH', 'AG', 'Ltd', 'S.r.l.'])}" if company else f"{first} {last}"
        n = len(self.customers)
        contacts = [ContactPoint(self._id(), "email", f"{first.lower()}.{n}@example.com", "work",
                                 f"{first} {last}" if company else None, True)]
        if rng.random() < 0.6:
            contacts.append(ContactPoint(self._id(), "phone",
                                         f"+49 30 {rng.randint(1000000, 9999999)}", "office"))
        owner = f"rep-{rng.randint(1, 40)}"
        industry = rng.choice(INDUSTRIES)
        tags = set(rng.sample(TAGS, rng.randint(0, 2)))
        self.customers.append(_Customer(cid, 1, owner, "lead", tags, industry))
        return self._event(ce.CustomerRegistered, cid, 1, owner,
                           kind="company" if company else "person", name=name,
                           contacts=tuple(contacts), source=rng.choice(["web", "referral", "event"]),
                           owner_id=owner, lifecycle_stage="lead", industry=industry,
                           country=rng.choice(["DE", "AT", "CH", "IT", "FR", "GB"]),
                           preferred_language=rng.choice(["de", "en", "it", "fr"]),
                           tags=tuple(sorted(tags)))

    def _customer_event(self, c: _Customer, cls: type[CrmEvent], **fields: Any) -> CrmEvent:
        c.version += 1
        return self._event(cls, c.id, c.version, c.owner, **fields)

    def next_event(self) -> CrmEvent:
        rng = self.rng
        roll = rng.random()
        if not self.customers or roll < 0.10:
            return self._register()
        # Recent customers are busier than old ones.
        c = self.customers[-1 - min(int(rng.expovariate(1 / 2000)), len(self.customers) - 1)]
        if roll < 0.20:
            if rng.random() < 0.5:
                before, c.industry = c.industry, rng.choice(INDUSTRIES)
                return self._customer_event(c, ce.CustomerDetailsChanged,
                                            changes={"industry": {"before": before,
                                                                  "after": c.industry}},
                                            personal_changes=None)
            return self._customer_event(
                c, ce.CustomerDetailsChanged, changes={},
                personal_changes={"name": {"before": None,
                                           "after": f"{rng.choice(FIRST)} {rng.choice(LAST)}"}})
        if roll < 0.26:
            tag = rng.choice(TAGS)
            if tag in c.tags:
                c.tags.discard(tag)
                return self._customer_event(c, ce.CustomerUntagged, tag=tag)
            c.tags.add(tag)
            return self._customer_event(c, ce.CustomerTagged, tag=tag)
        if roll < 0.30:
            to = {"lead": "prospect", "prospect": "customer"}.get(c.stage, "churned")
            before, c.stage = c.stage, to
            return self._customer_event(c, ce.LifecycleStageChanged, from_stage=before,
                                        to_stage=to)
        if roll < 0.40:
            opp = _Opportunity(self._id(), 1, c.id, 0, Decimal(rng.randint(5, 2000) * 50))
            self.open.append(opp)
            return self._event(oe.OpportunityOpened, opp.id, 1, c.owner, customer_id=c.id,
                               title=f"{rng.choice(['Licences', 'Rollout', 'Support plan'])}"
                                     f" for {rng.choice(LAST)}",
                               amount=opp.amount, currency="EUR",
                               expected_close=date(2025, rng.randint(1, 12), 28),
                               pipeline="default", stage=STAGES[0][0],
                               probability=STAGES[0][1], owner_id=c.owner)
        if roll < 0.58 and self.open:
            i = rng.randrange(len(self.open))
            opp = self.open[i]
            opp.version += 1
            if opp.stage < len(STAGES) - 1 and rng.random() < 0.7:
                before, opp.stage = STAGES[opp.stage][0], opp.stage + 1
                return self._event(oe.OpportunityStageChanged, opp.id, opp.version, c.owner,
                                   customer_id=opp.customer, from_stage=before,
                                   to_stage=STAGES[opp.stage][0],
                                   probability=STAGES[opp.stage][1])
            self.open[i] = self.open[-1]
            self.open.pop()
            if rng.random() < 0.5:
                return self._event(oe.OpportunityWon, opp.id, opp.version, c.owner,
                                   customer_id=opp.customer, from_stage=STAGES[opp.stage][0],
                                   amount=opp.amount, currency="EUR")
            return self._event(oe.OpportunityLost, opp.id, opp.version, c.owner,
                               customer_id=opp.customer, from_stage=STAGES[opp.stage][0],
                               loss_reason=rng.choice(["price", "competitor", "timing"]))
        if roll < 0.88:
            return self._event(ie.InteractionLogged, self._id(), 1, c.owner, customer_id=c.id,
                               channel=rng.choice(["call", "email", "meeting", "note"]),
                               direction=rng.choice(["inbound", "outbound"]),
                               subject=rng.choice(SUBJECTS),
                               body=f"Spoke with {rng.choice(FIRST)} about "
                                    f"{rng.choice(SUBJECTS).lower()}; next step in "
                                    f"{rng.randint(2, 30)} days.",
                               participants=(c.owner,), duration_minutes=rng.randint(5, 60),
                               opportunity_id=None, service_request_id=None)
        qty = Decimal(rng.randint(1, 5))
        price = Decimal(rng.randint(100, 50_000)) / 100
        return self._customer_event(c, ce.PurchaseRecorded, order_id=f"SO-{rng.getrandbits(40)}",
                                    amount=qty * price, currency="EUR",
                                    lines=(PurchaseLine("SKU-1", "Licence", qty, price),),
                                    purchased_at=self.clock)


@dataclass
class Generated:
    events: int
    customers: int
    keys: int
    seconds: float
    avg_state_bytes: float
    types: dict[str, int]


def generate(url: str, n_events: int, kek: bytes, seed: int) -> Generated:
    """Stream ``n_events`` generated events into ``crm_events`` (and their keys) by COPY."""
    started = time.perf_counter()
    gen = LogGenerator(seed)
    total_bytes = 0
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(
            "COPY crm_events (notification_id, originator_id, originator_version, topic, state)"
            " FROM STDIN"
        ) as copy:
            for n in range(1, n_events + 1):
                event = gen.next_event()
                topic, state = gen.codec.encode(event)
                total_bytes += len(state)
                copy.write_row((n, event.originator_id, event.originator_version, topic, state))
                if n % 100_000 == 0:
                    log(f"generated {n:,} events")
        conn.execute("SELECT setval(pg_get_serial_sequence('crm_events', 'notification_id'), %s)",
                     (n_events,))
        wrapper = KeyWrapper(kek)
        with conn.cursor() as cur, cur.copy(
            "COPY crm_subject_keys (subject_id, wrapped_key) FROM STDIN"
        ) as copy:
            for subject, key in gen.keys.keys.items():
                copy.write_row((subject, wrapper.wrap(subject, key.key)))
        conn.execute("ANALYZE crm_events")
        conn.execute("ANALYZE crm_subject_keys")
    return Generated(n_events, len(gen.customers), len(gen.keys.keys),
                     time.perf_counter() - started, total_bytes / max(1, n_events),
                     dict(sorted(gen.counts.items())))


# -- ours ------------------------------------------------------------------------------
@dataclass
class Run:
    contender: str
    events: int
    seconds: float
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def _codec_app(url: str, kek: bytes) -> CrmApplication:
    """A fresh application (cold key cache) whose codec the runner decodes with."""
    env = postgres_env(url, pool_size=4)
    env["CREATE_TABLE"] = "n"
    return CrmApplication(env, kek=kek)


def run_ours(url: str, kek: bytes, projection: type[Projection], stop_at: int | None,
             *, keep: bool = False) -> tuple[Run, str]:
    """Catch a fresh generation up from 0; the run and the generation's schema."""
    store = ProjectionStore(url)
    schema = store.new_generation(projection)
    app = _codec_app(url, kek)
    runner = BatchRunner(projection, schema, url, app.codec)
    try:
        started = time.perf_counter()
        position = runner.catch_up(stop_at=stop_at)
        seconds = time.perf_counter() - started
    finally:
        runner.close()
        app.close()
    rows = _count_rows(url, schema, projection)
    if not keep:
        store.drop_schema(schema)
    return Run("ours", position, seconds, rows,
               {"projection": projection.name, "batches": runner.stats.batches,
                "parked": runner.stats.parked}), schema


def _count_rows(url: str, schema: str, projection: type[Projection]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        total = 0
        for t in projection.tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(t.name))).fetchone()
            total += int(row[0]) if row else 0
    return total


# -- baseline: eventsourcing's ProjectionRunner -----------------------------------------
class BaselineCustomerView(PostgresTrackingRecorder):
    """The customer list as a materialised view the eventsourcing way: each event's rows
    and its tracking record written in one transaction of their own."""

    #: events after this position are not applied (the runner goes on until stopped)
    stop_at: int | None = None

    def apply(self, event: CrmEvent, tracking: Tracking) -> None:
        if self.stop_at is not None and tracking.notification_id > self.stop_at:
            return
        with self.datastore.transaction(commit=True) as curs:

            def load(table: Any, keys: list[Any]) -> list[dict[str, Any]]:
                curs.execute(sql.SQL("SELECT * FROM {}.{} WHERE {} = ANY(%s)").format(
                    sql.Identifier(BASELINE_SCHEMA), sql.Identifier(table.name),
                    sql.Identifier(table.key)), (keys,), prepare=True)
                return list(curs.fetchall())

            view = BatchView(CustomerList, load)
            for on in CustomerList.handlers_for(event.type_name):
                on.handler(view, event)
            for table in CustomerList.tables:
                for key in view.dirty[table.name]:
                    row = view.rows[table.name][key]
                    if row is None:
                        curs.execute(sql.SQL("DELETE FROM {}.{} WHERE {} = %s").format(
                            sql.Identifier(BASELINE_SCHEMA), sql.Identifier(table.name),
                            sql.Identifier(table.key)), (key,), prepare=True)
                    else:
                        curs.execute(_baseline_upsert(table.name), _params(table.name, row),
                                     prepare=True)
            self._insert_tracking(curs, tracking)


_UPSERTS: dict[str, sql.Composed] = {}


def _baseline_upsert(table_name: str) -> sql.Composed:
    if table_name not in _UPSERTS:
        table = CustomerList.table(table_name)
        cols = list(table.columns)
        _UPSERTS[table_name] = sql.SQL(
            "INSERT INTO {}.{} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
            sql.Identifier(BASELINE_SCHEMA), sql.Identifier(table.name),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)), sql.Identifier(table.key),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                               for c in cols if c != table.key))
    return _UPSERTS[table_name]


def _params(table_name: str, row: dict[str, Any]) -> list[Any]:
    table = CustomerList.table(table_name)
    return [Jsonb(row.get(c)) if typ.startswith("jsonb") and row.get(c) is not None
            else row.get(c) for c, typ in table.columns.items()]


class BaselineProjection(EsProjection[BaselineCustomerView]):
    name = "bench_baseline"
    topics = tuple(CustomerList.topics())

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply(domain_event, tracking)


def _baseline_source(kek: bytes) -> type[CrmApplication]:
    """The CRM's application as eventsourcing's runner constructs it: from env alone."""

    class BaselineSource(CrmApplication):
        def __init__(self, env: Any = None):
            env = dict(env or {})
            env["CREATE_TABLE"] = "n"
            super().__init__(env, kek=kek)

    return BaselineSource


def _reset_baseline(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{BASELINE_SCHEMA}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{BASELINE_SCHEMA}"')
        for table in CustomerList.tables:
            for statement in table.create_statements(BASELINE_SCHEMA):
                conn.execute(statement)
        conn.execute("DROP TABLE IF EXISTS bench_baseline_tracking")


def run_baseline(url: str, kek: bytes, stop_at: int) -> Run:
    _reset_baseline(url)
    env = postgres_env(url, pool_size=4)
    BaselineCustomerView.stop_at = stop_at
    started = time.perf_counter()
    runner = ProjectionRunner(application_class=_baseline_source(kek),
                              projection_class=BaselineProjection,
                              view_class=BaselineCustomerView, env=env)
    with runner:
        runner.wait(stop_at, timeout=3600)
        seconds = time.perf_counter() - started
    return Run("baseline", stop_at, seconds, _count_rows(url, BASELINE_SCHEMA, CustomerList))


def same_rows(url: str, schema: str, other: str) -> bool:
    """The customer list tables of two schemas hold the same rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        for t in CustomerList.tables:
            cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c))
                                      for c in t.columns)
            for a, b in ((schema, other), (other, schema)):
                row = conn.execute(sql.SQL(
                    "SELECT count(*) FROM (SELECT {0} FROM {1}.{3} EXCEPT SELECT {0} FROM {2}.{3}) d"
                ).format(cols, sql.Identifier(a), sql.Identifier(b), sql.Identifier(t.name))
                ).fetchone()
                if row is None or row[0] != 0:
                    return False
    return True


# -- limit -----------------------------------------------------------------------------
LIMIT_TABLE = "bench_limit_customers"


def run_limit(url: str, template_schema: str, rows: int) -> Run:
    """``rows`` customer-list rows by executemany, LIMIT_BATCH per transaction."""
    table = CustomerList.table("customers")
    cols = list(table.columns)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {LIMIT_TABLE}")
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {}.customers INCLUDING ALL)").format(
            sql.Identifier(LIMIT_TABLE), sql.Identifier(template_schema)))
        sample = conn.execute(sql.SQL("SELECT {} FROM {}.customers LIMIT 5000").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(template_schema))
        ).fetchall()
    if not sample:
        raise RuntimeError("no customer rows to copy for the limit")
    jsonb = {i for i, c in enumerate(cols) if table.columns[c].startswith("jsonb")}
    data = []
    for n in range(rows):
        values = list(sample[n % len(sample)])
        values[0] = uuid.uuid4()
        data.append([Jsonb(v) if i in jsonb else v for i, v in enumerate(values)])
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(LIMIT_TABLE), sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(sql.Placeholder() * len(cols)))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        for i in range(0, rows, LIMIT_BATCH):
            cur.executemany(statement, data[i:i + LIMIT_BATCH])
            conn.commit()
        seconds = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {LIMIT_TABLE}")
    return Run("limit", rows, seconds, rows)


# -- lag under a steady write load -----------------------------------------------------
class _Load:
    """One client: a paced mix of commands on its own customers."""

    def __init__(self, service: CommandService, name: str, seed: int):
        self.service = service
        self.name = name
        self.rng = random.Random(seed)
        self.customers: list[UUID] = []
        self.sent = 0
        self.principal = Principal(f"bench-{name}", "sales_rep")

    def step(self) -> None:
        rng = self.rng
        req = Request(self.principal, correlation_id=f"lag-{self.name}")
        if len(self.customers) < 5 or rng.random() < 0.2:
            n = len(self.customers)
            r = self.service.execute(RegisterCustomer(
                kind="person", name=f"Lag {self.name} {n}",
                contacts=[ContactIn(kind="email", value=f"lag.{self.name}.{n}."
                                    f"{secrets.token_hex(4)}@bench.example.com", primary=True)]),
                req)
            self.customers.append(r.id)
        else:
            c = rng.choice(self.customers)
            roll = rng.random()
            if roll < 0.3:
                self.service.execute(RecordPurchase(order_id=f"o{rng.getrandbits(40)}",
                                                    amount=Decimal("19.90"), currency="EUR"),
                                     Request(self.principal, req.correlation_id, target=c))
            elif roll < 0.5:
                self.service.execute(TagCustomer(tag=f"t{rng.randint(0, 20)}"),
                                     Request(self.principal, req.correlation_id, target=c))
            elif roll < 0.8:
                self.service.execute(LogInteraction(customer_id=c, channel="call",
                                                    direction="outbound", subject="Check-in",
                                                    body="Short call."), req)
            else:
                self.service.execute(OpenOpportunity(customer_id=c, title="Upsell",
                                                     amount=Decimal(500), currency="EUR"), req)
        self.sent += 1


def _leader(url: str, schema: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 1 AND objid::bigint = (hashtext(%s)::bigint & 4294967295)"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ("crm_projection:" + schema,)).fetchone()
    return bool(row and row[0])


def measure_lag(url: str, kek: bytes, schema: str, settings: Settings) -> dict[str, Any]:
    """Lag of a `crm projections run customers` process behind a paced write load."""
    store = ProjectionStore(url)
    start_head = store.head()
    data_dir = tempfile.mkdtemp(prefix="crm-bench-lag-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({"CRM_DATABASE_URL": url, "CRM_MASTER_KEY": kek.hex(),
                "CRM_JWT_SECRET": secrets.token_hex(32), "CRM_DATA_DIR": data_dir,
                "CRM_DB_POOL_SIZE": "2", "CRM_LOG_FORMAT": "json", "CRM_LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "crm.cli", "projections", "run", "customers"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    app = CrmApplication(postgres_env(url, pool_size=settings.lag_clients + 2), kek=kek)
    try:
        deadline = time.monotonic() + 60
        while not _leader(url, schema):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the runner process did not start: "
                                   + (proc.stderr.read().decode() if proc.stderr else ""))
            time.sleep(0.1)
        service = CommandService(app, HANDLERS, email_key=secrets.token_bytes(32))
        clients = [_Load(service, f"c{i}", settings.seed + i) for i in range(settings.lag_clients)]
        for c in clients:  # a few customers each, before the clock starts
            while len(c.customers) < 5:
                c.step()
        samples: list[tuple[float, int]] = []
        stop_poll = threading.Event()

        def poll() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                while not stop_poll.is_set():
                    row = conn.execute("SELECT position FROM crm_projection_tracking"
                                       " WHERE schema_name = %s", (schema,), prepare=True
                                       ).fetchone()
                    samples.append((time.time(), int(row[0]) if row else 0))
                    time.sleep(0.01)

        poller = threading.Thread(target=poll, name="lag-poller", daemon=True)
        poller.start()
        interval = settings.lag_clients / settings.lag_rate
        errors: list[BaseException] = []
        load_started = time.perf_counter()
        end = time.monotonic() + settings.lag_seconds

        def drive(client: _Load, offset: float) -> None:
            next_at = time.monotonic() + offset
            try:
                while next_at < end:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    client.step()
                    next_at += interval
            except BaseException as e:  # noqa: BLE001 -- re-raised below
                errors.append(e)

        sent_before = sum(c.sent for c in clients)
        load_head = store.head()
        threads = [threading.Thread(target=drive, args=(c, i * interval / len(clients)),
                                    daemon=True) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_seconds = time.perf_counter() - load_started
        if errors:
            raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
        sent = sum(c.sent for c in clients) - sent_before
        head = store.head()
        deadline = time.monotonic() + 60
        while store.position(schema) < head and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.05)
        stop_poll.set()
        poller.join()
        with psycopg.connect(url, autocommit=True) as conn:
            recorded = conn.execute(
                "SELECT notification_id, (convert_from(state, 'UTF8')::jsonb ->> 'recorded_at')"
                "::timestamptz FROM crm_events WHERE notification_id > %s ORDER BY 1",
                (start_head,)).fetchall()
    finally:
        app.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    times = [t for t, _ in samples]
    positions = [p for _, p in samples]
    lags: list[float] = []
    missed = 0
    for notification_id, recorded_at in recorded:
        if notification_id <= load_head:
            continue  # the clients' first customers, registered before the clock started
        i = bisect.bisect_left(positions, notification_id)
        if i == len(positions):
            missed += 1
            continue
        lags.append(max(0.0, times[i] - recorded_at.timestamp()))
    return {
        "commands": sent,
        "events": sum(1 for n, _ in recorded if n > load_head),
        "seconds": round(load_seconds, 2),
        "commands_per_second": round(sent / load_seconds, 1),
        "target_per_second": settings.lag_rate,
        "clients": settings.lag_clients,
        "events_measured": len(lags),
        "events_not_seen": missed,
        "poll_interval_ms": 10,
        "lag_p50_ms": round(percentile(lags, 50) * 1e3, 1),
        "lag_p99_ms": round(percentile(lags, 99) * 1e3, 1),
        "lag_max_ms": round(max(lags) * 1e3, 1) if lags else None,
        "runner_exit_code": proc.returncode,
    }


# -- measuring -------------------------------------------------------------------------
def measure(settings: Settings) -> dict[str, Any]:
    """The whole benchmark in one throw-away database; returns the results document."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    kek = secrets.token_bytes(32)
    runs: list[Run] = []
    with throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        CrmApplication(postgres_env(db.url, pool_size=2), kek=kek).close()  # the tables
        store = ProjectionStore(db.url)
        store.setup()
        log(f"generating {settings.events:,} events")
        gen = generate(db.url, settings.events, kek, settings.seed)
        log(f"generated and copied {gen.events:,} events ({gen.customers:,} customers) "
            f"in {gen.seconds:.1f} s")
        subset = min(settings.subset, settings.events)

        # Warm-up: a small catch-up of each contender (imports, prepared statements).
        run_ours(db.url, kek, CustomerList, min(2000, subset))
        run_baseline(db.url, kek, min(300, subset))
        equal_rows: bool | None = None
        for rep in range(settings.reps):
            ours, ours_schema = run_ours(db.url, kek, CustomerList, subset, keep=True)
            runs.append(ours)
            log(f"rep {rep + 1}/{settings.reps} ours     {subset:,} events: "
                f"{ours.rate:10,.0f} events/s")
            base = run_baseline(db.url, kek, subset)
            runs.append(base)
            log(f"rep {rep + 1}/{settings.reps} baseline {subset:,} events: "
                f"{base.rate:10,.0f} events/s")
            if equal_rows is None:
                equal_rows = same_rows(db.url, ours_schema, BASELINE_SCHEMA)
                log(f"baseline rows equal ours: {equal_rows}")
            lim = run_limit(db.url, ours_schema, subset)
            runs.append(lim)
            log(f"rep {rep + 1}/{settings.reps} limit    {subset:,} rows:   "
                f"{lim.rate:10,.0f} rows/s")
            store.drop_schema(ours_schema)

        log(f"ours over the whole log ({gen.events:,} events)")
        full, full_schema = run_ours(db.url, kek, CustomerList, None, keep=True)
        log(f"ours full: {full.rate:,.0f} events/s in {full.seconds:.1f} s")

        all_runs: list[Run] = []
        all_events = min(settings.all_events, settings.events)
        for p in projections.ALL:
            r, _ = run_ours(db.url, kek, p, all_events)
            all_runs.append(r)
            log(f"{p.name}: {r.rate:,.0f} events/s over {all_events:,} events")

        # The full build becomes the live customer list, followed by a runner process.
        store.switch(CustomerList, full_schema)
        log(f"lag: {settings.lag_rate:.0f} commands/s for {settings.lag_seconds:.0f} s")
        lag = measure_lag(db.url, kek, full_schema, settings)
        log(f"lag p50 {lag['lag_p50_ms']} ms, p99 {lag['lag_p99_ms']} ms at "
            f"{lag['commands_per_second']} commands/s")
        server = {"where": db.where, "version": db.server_version}
    return _document(settings, gen, runs, full, all_runs, equal_rows, lag, server, started_at,
                     time.perf_counter() - started)


def _stats(rates: list[float]) -> dict[str, Any]:
    return {"rates": [round(x, 1) for x in rates], "median": round(statistics.median(rates), 1),
            "min": round(min(rates), 1), "max": round(max(rates), 1)}


def _document(settings: Settings, gen: Generated, runs: list[Run], full: Run,
              all_runs: list[Run], equal_rows: bool | None, lag: dict[str, Any],
              server: dict[str, str], started_at: datetime, seconds: float) -> dict[str, Any]:
    by = {label: _stats([r.rate for r in runs if r.contender == label])
          for label in ("ours", "baseline", "limit")}
    ratio = by["ours"]["median"] / by["baseline"]["median"]
    return {
        "benchmark": "projection_catchup",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 1),
        "settings": asdict(settings) | {"server": None},
        "environment": environment(server, limit_batch_rows=LIMIT_BATCH),
        "log": asdict(gen) | {"seconds": round(gen.seconds, 1),
                              "avg_state_bytes": round(gen.avg_state_bytes, 1)},
        "subset": {
            "events": min(settings.subset, settings.events),
            **by,
            "ours_over_baseline": round(ratio, 2),
            "ours_over_limit": round(by["ours"]["median"] / by["limit"]["median"], 3),
            "baseline_rows_equal_ours": equal_rows,
        },
        "full": {"events": full.events, "seconds": round(full.seconds, 2),
                 "events_per_second": round(full.rate, 1), "rows": full.rows,
                 "batches": full.extra.get("batches"), "parked": full.extra.get("parked")},
        "all_projections": [{"projection": r.extra["projection"], "events": r.events,
                             "seconds": round(r.seconds, 2),
                             "events_per_second": round(r.rate, 1), "rows": r.rows,
                             "parked": r.extra.get("parked")} for r in all_runs],
        "lag": lag,
        "goals": {
            "ours_over_baseline": {"goal": 18, "met": ratio >= 18},
            "events_per_second": {"goal": 20_000, "met": full.rate >= 20_000},
        },
    }


def markdown(doc: dict[str, Any]) -> str:
    s, env, g, sub, full, lag = (doc["settings"], doc["environment"], doc["log"], doc["subset"],
                                 doc["full"], doc["lag"])
    lines = [
        f"# Projection catch-up ({doc['started_at']})",
        "",
        f"Log: {g['events']:,} generated events ({g['customers']:,} customers, avg "
        f"{g['avg_state_bytes']:.0f} bytes of state, personal data sealed), written by COPY in "
        f"{g['seconds']:.0f} s. PostgreSQL {env['postgres']['version']} "
        f"({env['postgres']['where']}), {env['cpus']} CPUs, Python {env['python']}, "
        f"eventsourcing {env['eventsourcing']}. Whole run {doc['duration_seconds']:.0f} s.",
        "",
        f"Customer list read model, first {sub['events']:,} events of the log, median of "
        f"{s['reps']} interleaved repetitions:",
        "",
        "| contender | events/s (limit: rows/s) | min–max | ours/contender |",
        "|---|---:|---:|---:|",
    ]
    for label in ("ours", "baseline", "limit"):
        e = sub[label]
        vs = sub["ours"]["median"] / e["median"]
        lines.append(f"| {label} | {e['median']:,.0f} | {e['min']:,.0f}–{e['max']:,.0f} "
                     f"| {vs:.2f} |")
    goals = doc["goals"]
    lines += [
        "",
        f"**ours/baseline = {sub['ours_over_baseline']:.1f}×** (goal ≥ 18: "
        f"{'met' if goals['ours_over_baseline']['met'] else 'NOT met'}); the baseline's rows "
        f"equal ours: {sub['baseline_rows_equal_ours']}.",
        "",
        f"**Whole log: {full['events']:,} events in {full['seconds']:.1f} s = "
        f"{full['events_per_second']:,.0f} events/s** (goal ≥ 20,000: "
        f"{'met' if goals['events_per_second']['met'] else 'NOT met'}); "
        f"{full['rows']:,} rows, {full['batches']:,} batches, {full['parked']} parked.",
        "",
        f"Every read model of `projections.ALL`, one after another, first "
        f"{s['all_events']:,} events:",
        "",
        "| read model | events/s | rows | parked |",
        "|---|---:|---:|---:|",
    ]
    for r in doc["all_projections"]:
        lines.append(f"| {r['projection']} | {r['events_per_second']:,.0f} | {r['rows']:,} "
                     f"| {r['parked']} |")
    lines += [
        "",
        f"Lag of `crm projections run customers` (own process, LISTEN/NOTIFY) while "
        f"{lag['clients']} clients sent {lag['commands']:,} commands through `CommandService` "
        f"in {lag['seconds']:.0f} s ({lag['commands_per_second']:.0f}/s, target "
        f"{lag['target_per_second']:.0f}/s): **p50 {lag['lag_p50_ms']:.0f} ms, p99 "
        f"{lag['lag_p99_ms']:.0f} ms**, max {lag['lag_max_ms']} ms over "
        f"{lag['events_measured']:,} events (recorded time to the first 10 ms poll that saw "
        f"the position committed).",
        "",
    ]
    return "\n".join(lines)
