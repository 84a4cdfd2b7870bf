"""The Kafka publisher: follows the event log and publishes each event's public envelope.

One topic per aggregate type (``crm.customer.v1`` unless configured otherwise), the
message key the aggregate id (so one aggregate's events stay in order on one
partition), the value the CloudEvents envelope of ``events.public``.

One batch = read up to ``batch_size`` stored events after the last one sent, with their
envelopes (built by PostgreSQL for the common case, see ``Envelopes.read``), and send
them with an idempotent producer (``acks=all``). A batch's position is recorded in
``crm_kafka_tracking`` only once the broker acknowledged every record of it and of all
batches before it; up to ``max_pending`` batches are in flight meanwhile, and while
catching up the next batch is read on a second connection as the current one is sent.
A crash or a broker failure before a position is recorded sends those events again:
delivery is at-least-once, and consumers dedupe by the envelope's ``id`` (the event
id), see ``feeds.kafka_consumer``.

An event that cannot be published is parked (``crm_kafka_parked``) and the feed goes
on: one that cannot be decoded or turned into its envelope (a batch whose envelopes fail
is split in halves down to the event at fault), or whose record the producer or the broker
refuses (too large). A text holding a lone surrogate, which UTF-8 cannot encode, is sent
with U+FFFD in its place. A broker or database that fails parks nothing: the batch is sent
again after a pause that doubles up to ``retry_max_seconds``.

Leadership: the publisher holds a session advisory lock; a second publisher waits and
takes over when the first one's connection dies, so two never publish at once.
``republish`` sends a range of the log again without touching the tracked position.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.rows import dict_row

from events.base import all_event_types
from events.codec import EventCodec, dump_fields
from events.public import CONTENT_TYPE, EnvelopeWriter
from projections.follow import (EVENT, MOMENT, Backoff, FollowerStats, LogFollower, Moment, apply_splitting, classify,
                                clean, clean_text)
from projections.store import lag_seconds

log = structlog.get_logger("crm.kafka")

SETUP = [
    "CREATE TABLE IF NOT EXISTS crm_kafka_tracking ("
    " name text PRIMARY KEY,"
    " position bigint NOT NULL DEFAULT 0,"
    " updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS crm_kafka_parked ("
    " id bigserial PRIMARY KEY,"
    " name text NOT NULL,"
    " position bigint NOT NULL,"
    " topic text NOT NULL,"
    " aggregate_id text NOT NULL,"
    " error text NOT NULL,"
    " parked_at timestamptz NOT NULL DEFAULT now())",
]
_HEADERS = [("content-type", CONTENT_TYPE.encode())]


def default_topic(aggregate_type: str) -> str:
    return f"crm.{aggregate_type}.v1"


@dataclass(frozen=True)
class FeedConfig:
    """Where and how events are published (built from settings by the composition root)."""

    bootstrap_servers: str
    #: aggregate type -> topic; types not named get ``crm.<type>.v1``
    topics: dict[str, str] = field(default_factory=dict)
    #: topics that carry personal fields (all others leave them out)
    personal_topics: frozenset[str] = frozenset()
    source: str = "/crm-core"
    schema_base_url: str = "urn:crm-core:schemas"
    client_id: str = "crm-publisher"
    #: extra kafka-python producer options (tests and benchmarks)
    producer_options: dict[str, Any] = field(default_factory=dict)

    def topic_for(self, aggregate_type: str) -> str:
        return self.topics.get(aggregate_type) or default_topic(aggregate_type)

    def all_topics(self) -> list[str]:
        types = sorted({cls.aggregate_type for cls in all_event_types().values()})
        return [self.topic_for(t) for t in types]


class KeyPartitioner:
    """kafka-python's default partitioner (murmur2 of the key, as the Java client), with
    each key's partition remembered: an aggregate's events repeat its key, and the pure
    Python murmur2 is a noticeable part of a send."""

    def __init__(self, size: int = 500_000):
        from kafka.partitioner.default import DefaultPartitioner

        self._default = DefaultPartitioner()
        self._known: dict[tuple[bytes, int], Any] = {}
        self._size = size

    def __call__(self, key: bytes | None, all_partitions: list[Any], available: list[Any]) -> Any:
        if key is None:
            return self._default(key, all_partitions, available)
        hit = self._known.get((key, len(all_partitions)))
        if hit is None:
            if len(self._known) >= self._size:
                self._known.clear()
            hit = self._known[(key, len(all_partitions))] = self._default(key, all_partitions, available)
        return hit


def new_producer(config: FeedConfig) -> Any:
    """A kafka-python producer: idempotent, ``acks=all``, batching with a short linger."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "partitioner": KeyPartitioner(),
        # kafka-python's idempotent producer allows one request in flight per broker.
        "max_in_flight_requests_per_connection": 1,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        # A 30 s request timeout: with short ones kafka-python was seen re-sending
        # hundreds of records after a broker stall.
        "request_timeout_ms": 30_000,
        "delivery_timeout_ms": 120_000,
    }
    options.update(config.producer_options)
    return KafkaProducer(**options)


@dataclass
class _Pending:
    """A batch sent and not yet recorded."""

    position: int  # its last event's position
    events: int
    futures: list[Any]
    failed: list[tuple[dict[str, Any], str]]
    #: the message of each future
    messages: list[Message] = field(default_factory=list)


class PublishFailed(Moment):
    """The broker did not acknowledge every record of a batch."""


@dataclass
class PublisherStats(FollowerStats):
    """The runner's counters, and the batches the broker did not acknowledge."""

    failures: int = 0


@dataclass(frozen=True)
class Message:
    position: int
    topic: str
    key: bytes
    value: bytes
    #: the event's type (for parking a record the broker refuses)
    event_type: str = ""

    def row(self) -> dict[str, Any]:
        """The stored event's columns that parking records."""
        return {"notification_id": self.position, "topic": self.event_type or self.topic,
                "originator_id": self.key.decode()}


#: (events read, last position read, messages, rows not publishable)
_Read = tuple[int, int, list[Message], list[tuple[dict[str, Any], str]]]


@dataclass(frozen=True)
class FeedStatus:
    name: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    parked: int
    updated_at: datetime | None


class Envelopes:
    """Turns stored rows into messages. Most events need no decryption: without a
    personal-data topic, an event in its current version is published from its
    stored document's clear part; older versions are upcast by the codec, and
    personal-data topics open the sealed part."""

    def __init__(self, config: FeedConfig, codec: EventCodec):
        self.config = config
        self.codec = codec
        self.writer = EnvelopeWriter(source=config.source, schema_base_url=config.schema_base_url)
        self._types = all_event_types()
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        self._sql: str | None = None
        #: build the common envelopes in PostgreSQL (False: all in Python, as ``messages``)
        self.server_side = True
        self._types_param = ""

    def messages(self, rows: list[dict[str, Any]],
                 topics: frozenset[str] | None = None) -> tuple[list[Message], list[tuple[dict[str, Any], str]]]:
        """The messages of ``rows`` (only to ``topics`` if given) and the rows that
        could not be published, with the reason. Rows whose envelopes fail are split in
        halves down to the row at fault."""
        try:
            return self._messages(rows, topics)
        except Exception as e:
            if classify(e) == MOMENT:
                raise
            first = e
        out: list[Message] = []
        failed: list[tuple[dict[str, Any], str]] = []

        def apply(part: Any) -> None:
            built, unpublishable = self._messages(list(part), topics)
            out.extend(built)
            failed.extend(unpublishable)

        def park(row: dict[str, Any], error: BaseException) -> None:
            failed.append((row, f"{type(error).__name__}: {error}"))

        apply_splitting(rows, apply, park, failed=first)
        return out, failed

    def _messages(self, rows: list[dict[str, Any]],
                  topics: frozenset[str] | None) -> tuple[list[Message], list[tuple[dict[str, Any], str]]]:
        out: list[Message] = []
        failed: list[tuple[dict[str, Any], str]] = []
        slow: list[tuple[int, dict[str, Any], dict[str, Any], str]] = []
        for row in rows:
            try:
                cls = self._types[row["topic"]]
            except KeyError:
                failed.append((row, f"unknown event type {row['topic']!r}"))
                continue
            topic = self.config.topic_for(cls.aggregate_type)
            if topics is not None and topic not in topics:
                continue
            try:
                doc = json.loads(bytes(row["state"]))
            except ValueError as e:
                failed.append((row, f"not JSON: {e}"))
                continue
            personal = topic in self.config.personal_topics
            if (personal and doc.get("sealed")) or int(doc.get("version", 1)) != cls.class_version:
                slow.append((len(out), row, doc, topic))
                out.append(Message(0, "", b"", b""))  # placeholder, keeps log order
                continue
            out.append(self._message(row, doc, doc["data"], topic, personal=personal))
        if slow:
            decoded = self.codec.decode_many([
                (_uuid(r["originator_id"]), int(r["originator_version"]), r["topic"], bytes(r["state"]))
                for _, r, _, _ in slow
            ])
            drop: set[int] = set()
            for (index, row, doc, topic), event in zip(slow, decoded, strict=True):
                if isinstance(event, Exception):
                    failed.append((row, f"cannot decode: {event}"))
                    drop.add(index)
                    continue
                data = dump_fields(type(event), event.payload())
                out[index] = self._message(row, doc, data, topic,
                                           personal=topic in self.config.personal_topics,
                                           erased=event.personal_data_erased)
            if drop:
                out = [m for i, m in enumerate(out) if i not in drop]
        return out, failed

    def _message(self, row: dict[str, Any], doc: dict[str, Any], data: dict[str, Any],
                 topic: str, *, personal: bool, erased: bool = False) -> Message:
        aggregate_id = str(row["originator_id"])
        position = int(row["notification_id"])
        envelope = self.writer.envelope(position, aggregate_id, int(row["originator_version"]),
                                        doc, data, personal=personal, erased=erased)
        try:
            value = self._dumps(envelope).encode()
        except UnicodeEncodeError:  # a lone surrogate in a text: U+FFFD in its place
            value = self._dumps(clean(envelope)).encode()
        return Message(position, topic, aggregate_id.encode(), value, row["topic"])


    # -- envelopes built by PostgreSQL ---------------------------------------------------
    def _type_table(self) -> str:
        """Per event type: aggregate type, personal fields, subject field, version, topic
        and whether the topic carries personal data (a parameter of ``read``)."""
        return json.dumps([
            {"type": name, "agg": cls.aggregate_type, "personal": list(cls.personal_fields),
             "subject": cls.subject_field, "version": cls.class_version,
             "topic": self.config.topic_for(cls.aggregate_type),
             "personal_topic": self.config.topic_for(cls.aggregate_type) in self.config.personal_topics}
            for name, cls in self._types.items()
        ])

    def read(self, conn: psycopg.Connection[Any], after: int, limit: int,
             topics: frozenset[str] | None = None, events_table: str = "crm_events",
             ) -> tuple[int, int, list[Message], list[tuple[dict[str, Any], str]]]:
        """Read up to ``limit`` stored events after ``after`` and build their messages:
        (events read, last position read, messages, rows not publishable).

        The common case -- an event in its type's current version for a topic without
        personal data -- is turned into its envelope by the database server (the same
        envelope as ``EnvelopeWriter``, its keys in jsonb order), which parses and
        writes the JSON on another core than this process's. Every other event comes
        back in stored form and goes through ``messages``."""
        if not self.server_side:
            stored = read_events(conn, after, limit, events_table)
            built, unpublishable = self.messages(stored, topics)
            return len(stored), int(stored[-1]["notification_id"]) if stored else after, built, unpublishable
        if self._sql is None:
            self._sql = self._envelope_sql(events_table)
            self._types_param = self._type_table()
        params = {"source": self.config.source, "base": self.config.schema_base_url,
                  "types": self._types_param, "after": after, "limit": limit}
        try:
            with conn.transaction():
                rows = conn.execute(self._sql, params, prepare=True).fetchall()
        except psycopg.DataError:
            # A stored event that is not JSON: this batch the slow way, which parks it.
            stored = read_events(conn, after, limit, events_table)
            built, unpublishable = self.messages(stored, topics)
            last = int(stored[-1]["notification_id"]) if stored else after
            return len(stored), last, built, unpublishable
        if not rows:
            return 0, after, [], []
        out: list[Message] = []
        failed: list[tuple[dict[str, Any], str]] = []
        slow: list[dict[str, Any]] = []
        slow_at: list[int] = []
        for row in rows:
            if row["envelope"] is not None:
                if topics is None or row["kafka_topic"] in topics:
                    out.append(Message(int(row["notification_id"]), row["kafka_topic"],
                                       str(row["originator_id"]).encode(), row["envelope"].encode(),
                                       row["topic"]))
            else:
                slow_at.append(len(out))
                slow.append(row)
        if slow:
            built, failed = self.messages(slow, topics)
            # Keep log order: the slow rows' messages go back where they were read.
            by_position = {m.position: m for m in built}
            merged: list[Message] = []
            it = iter(out)
            cursor = 0
            for index, row in zip(slow_at, slow, strict=True):
                while cursor < index:
                    merged.append(next(it))
                    cursor += 1
                m = by_position.get(int(row["notification_id"]))
                if m is not None:
                    merged.append(m)
            merged.extend(it)
            out = merged
        return len(rows), int(rows[-1]["notification_id"]), out, failed

    @staticmethod
    def _envelope_sql(events_table: str) -> str:
        return f"""
WITH t AS (
  SELECT * FROM jsonb_to_recordset(%(types)s::jsonb) AS t(type text, agg text, personal text[],
    subject text, version int, topic text, personal_topic bool)
), e AS (
  SELECT notification_id, originator_id, originator_version, topic, state,
         convert_from(state, 'UTF8')::jsonb AS d
  FROM "{events_table}" WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s
)
SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, t.topic AS kafka_topic,
  CASE WHEN fast THEN NULL ELSE e.state END AS state,
  CASE WHEN fast THEN jsonb_build_object(
    'specversion', '1.0', 'id', d->'event_id', 'source', %(source)s::text,
    'type', 'crm.' || e.topic, 'subject', e.originator_id::text, 'time', d->'occurred_at',
    'datacontenttype', 'application/json',
    'dataschema', %(base)s::text || '/' || e.topic || '/' || t.version, 'dataversion', t.version,
    'logposition', e.notification_id, 'aggregatetype', t.agg,
    'aggregateversion', e.originator_version, 'correlationid', d->'correlation_id',
    'causationid', d->'causation_id',
    'customerid', CASE WHEN t.agg = 'customer' THEN to_jsonb(e.originator_id::text)
                       WHEN t.subject IS NOT NULL THEN coalesce(d->'data'->t.subject, 'null')
                       ELSE 'null'::jsonb END,
    'recordedat', d->'recorded_at', 'actorid', d#>'{{actor,id}}', 'actorrole', d#>'{{actor,role}}',
    'personaldata', CASE WHEN cardinality(t.personal) = 0 THEN 'none' ELSE 'omitted' END,
    'data', (d->'data') - t.personal)::text END AS envelope
FROM e LEFT JOIN t ON t.type = e.topic,
  LATERAL (SELECT t.type IS NOT NULL AND NOT t.personal_topic
                  AND coalesce((e.d->>'version')::int, 1) = t.version AS fast) f
ORDER BY e.notification_id"""


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def send(producer: Any, messages: Iterable[Message], *, timeout: float = 150.0) -> int:
    """Send and wait until the broker acknowledged every message; raises PublishFailed."""
    futures = [producer.send(m.topic, value=m.value, key=m.key, headers=_HEADERS)
               for m in messages]
    if not futures:
        return 0
    try:
        producer.flush(timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- kafka-python raises its own timeout types
        raise PublishFailed(f"flush failed: {type(e).__name__}: {e}") from e
    failed = [f for f in futures if not f.is_done or f.failed()]
    if failed:
        first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
        raise PublishFailed(f"{len(failed)} of {len(futures)} records not acknowledged: {first}")
    return len(futures)


def setup(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_projection_setup'))")
        for statement in SETUP:
            conn.execute(statement)
        conn.execute("INSERT INTO crm_kafka_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                     (name,))


def read_events(conn: psycopg.Connection[Any], after: int, limit: int,
                events_table: str = "crm_events") -> list[dict[str, Any]]:
    return list(conn.execute(
        f'SELECT notification_id, originator_id, originator_version, topic, state'
        f' FROM "{events_table}" WHERE notification_id > %s ORDER BY notification_id LIMIT %s',
        (after, limit),
        prepare=True,
    ).fetchall())


class KafkaPublisher(LogFollower):
    """Publishes the event log to Kafka from its tracked position, batch by batch (in the
    ``LogFollower`` frame)."""

    def __init__(self, conninfo: str, codec: EventCodec, config: FeedConfig, *,
                 name: str = "kafka", batch_size: int = 5000, poll_seconds: float = 1.0,
                 events_table: str = "crm_events", max_pending: int = 3,
                 producer_factory: Callable[[FeedConfig], Any] = new_producer,
                 retry_max_seconds: float = 30.0):
        self.conninfo = conninfo
        self.config = config
        self.name = name
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.events_table = events_table
        self.envelopes = Envelopes(config, codec)
        self.stats: PublisherStats = PublisherStats()
        self._producer_factory = producer_factory
        self._producer: Any = None
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._ready = False
        #: batches sent and not yet recorded, oldest first; ``_sent_to`` the last sent
        self._pending: deque[_Pending] = deque()
        self._sent_to = 0
        self.max_pending = max_pending
        self._ahead: tuple[int, Future[_Read]] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: psycopg.Connection[dict[str, Any]] | None = None
        self.flush_timeout = 150.0  # longer than the producer's delivery timeout
        #: pauses after a failure of the broker or the database: poll_seconds, doubling
        self.backoff = Backoff(poll_seconds, retry_max_seconds)

    # -- connection, leadership, producer -------------------------------------------
    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            if not self._ready:
                setup(self.conninfo, self.name)
                self._ready = True
            self._conn = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
            self.stats.is_leader = False
        return self._conn

    def try_lead(self) -> bool:
        """Take the publisher's leadership if free (held until the connection closes)."""
        if self.stats.is_leader and self._conn is not None and not self._conn.closed:
            return True
        row = self.connect().execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS ok",
                                     ("crm_kafka_publisher:" + self.name,)).fetchone()
        self.stats.is_leader = bool(row and row["ok"])
        return self.stats.is_leader

    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self._producer_factory(self.config)
        return self._producer

    def drop_producer(self) -> None:
        """Close the producer (after a failure, a fresh one starts clean)."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as e:  # noqa: BLE001 -- closing a broken producer may fail too
                log.warning("closing the Kafka producer failed", error=str(e))
            self._producer = None

    def close(self) -> None:
        self._pending.clear()  # not recorded: whoever leads next sends them again
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None
        self.drop_producer()
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        self.stats.is_leader = False

    def position(self) -> int:
        row = self.connect().execute("SELECT position FROM crm_kafka_tracking WHERE name = %s",
                                     (self.name,)).fetchone()
        return int(row["position"]) if row else 0

    # -- one batch ------------------------------------------------------------------
    def run_batch(self) -> int:
        """Send the next batch; the number of stored events it covered.

        Batches are pipelined: while the broker acknowledges one, the next is read and
        sent. A batch's position is recorded once every record of it (and of every
        batch before it) is acknowledged; at most ``max_pending`` batches wait for
        that. When the log is read to its end, everything sent is flushed and recorded.
        A failed acknowledgement drops the producer and everything not yet recorded:
        the next batch starts again from the recorded position (at-least-once).
        """
        if not self.try_lead():
            raise RuntimeError(f"another publisher leads {self.name}")
        started = time.perf_counter()
        conn = self.connect()
        if not self._pending:
            self._sent_to = self.position()
        count, last, messages, failed = self._read(conn, self._sent_to)
        if count == self.batch_size:
            self._read_ahead(last)  # catching up: the next batch is read while this one is sent
        if count:
            producer = self.producer()
            futures: list[Any] = []
            sent: list[Message] = []
            for m in messages:
                try:
                    futures.append(producer.send(m.topic, value=m.value, key=m.key, headers=_HEADERS))
                    sent.append(m)
                except Exception as e:
                    if classify(e) == EVENT:  # this record is refused (too large...)
                        failed.append((m.row(), f"{type(e).__name__}: {e}"))
                        continue
                    self._abandon()
                    raise PublishFailed(f"send failed: {type(e).__name__}: {e}") from e
            self._pending.append(_Pending(last, count, futures, failed, sent))
            self._sent_to = last
        if count < self.batch_size:
            self._settle(conn, everything=True)  # at the end of the log: record it all
        else:
            self._settle(conn, everything=False)
        if count:
            self.stats.last_batch_size = count
            self.stats.last_batch_seconds = time.perf_counter() - started
        return count

    def _read(self, conn: psycopg.Connection[Any], after: int) -> _Read:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            start, future = ahead
            result: _Read = future.result()
            # Used only if it follows on and is a full batch (at the log's end, read again).
            if start == after and result[0] == self.batch_size:
                return result
        return self.envelopes.read(conn, after, self.batch_size, events_table=self.events_table)

    def _read_ahead(self, after: int) -> None:
        """Read (and build) the batch after ``after`` on a second connection, in a thread:
        the database server builds its envelopes on another core meanwhile."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-read-{self.name}")
        if self._reader_conn is None or self._reader_conn.closed:
            self._reader_conn = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
        conn = self._reader_conn
        self._ahead = (after, self._reader.submit(
            self.envelopes.read, conn, after, self.batch_size, events_table=self.events_table))

    def _abandon(self) -> None:
        self.stats.failures += 1
        self._pending.clear()
        self.drop_producer()

    def _settle(self, conn: psycopg.Connection[Any], *, everything: bool) -> None:
        """Record the position of the oldest batches whose records are all acknowledged;
        waits for them if ``everything`` or if too many batches are pending."""
        if everything and self._pending:
            try:
                self.producer().flush(timeout=self.flush_timeout)
            except Exception as e:  # noqa: BLE001 -- kafka-python raises its own timeout types
                self._abandon()
                raise PublishFailed(f"flush failed: {type(e).__name__}: {e}") from e
        done: list[_Pending] = []
        while self._pending:
            batch = self._pending[0]
            must_wait = everything or len(self._pending) > self.max_pending
            if not must_wait and batch.futures and not (batch.futures[-1].is_done
                                                        and all(f.is_done for f in batch.futures)):
                break
            for f in batch.futures:
                if not f.is_done:
                    try:
                        f.get(timeout=self.flush_timeout)
                    except Exception:  # noqa: BLE001 -- checked below
                        pass
            bad = [i for i, f in enumerate(batch.futures) if not f.is_done or f.failed()]
            refused = [i for i in bad if batch.futures[i].is_done and i < len(batch.messages)
                       and classify(batch.futures[i].exception) == EVENT]
            if len(refused) < len(bad):
                first = batch.futures[bad[0]]
                reason = first.exception if first.is_done else "not acknowledged in time"
                self._abandon()
                raise PublishFailed(f"{len(bad)} of {len(batch.futures)} records not "
                                    f"acknowledged: {reason}")
            for i in refused:  # the broker (or the producer) refused these records: parked
                error = batch.futures[i].exception
                batch.failed.append((batch.messages[i].row(), f"{type(error).__name__}: {error}"))
            done.append(self._pending.popleft())
        if not done:
            return
        last = done[-1].position
        failed = [f for b in done for f in b.failed]
        with conn.transaction():
            if failed:
                self._park(conn, failed)
            conn.execute("UPDATE crm_kafka_tracking SET position = GREATEST(position, %s),"
                         " updated_at = now() WHERE name = %s", (last, self.name), prepare=True)
        self.stats.batches += len(done)
        self.stats.events += sum(len(b.futures) for b in done)
        self.stats.position = last

    def _park(self, conn: psycopg.Connection[Any], failed: list[tuple[dict[str, Any], str]]) -> None:
        """An event that cannot be published is recorded (and the feed goes on): it is
        reported by `crm projections status` and /metrics and can be republished."""
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO crm_kafka_parked (name, position, topic, aggregate_id, error)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(self.name, int(r["notification_id"]), clean_text(str(r["topic"])),
                  clean_text(str(r["originator_id"])), clean_text(error[:2000])) for r, error in failed],
            )
        self.stats.parked += len(failed)
        for r, error in failed:
            log.error("event not publishable; parked", position=int(r["notification_id"]),
                      topic=clean_text(str(r["topic"])), error=clean_text(error))

    def catch_up(self) -> int:
        """Publish until the log's head; the position reached (recorded)."""
        while self.run_batch() > 0:
            pass
        return self.position()

    def advance(self, stop: threading.Event) -> bool:
        return self.run_batch() >= self.batch_size

    def recover(self, error: Exception) -> None:
        """What was sent and not recorded is already dropped (``_abandon``); the
        connection is kept unless it was lost (and the leadership with it)."""
        if self._conn is not None and self._conn.closed:
            self.stats.is_leader = False


# -- republish ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RepublishSummary:
    events: int  # stored events read
    published: int  # messages acknowledged
    position: int  # last position covered
    seconds: float


def republish(conninfo: str, codec: EventCodec, config: FeedConfig, *, start: int,
              end: int | None = None, topics: Iterable[str] | None = None,
              batch_size: int = 5000, progress: Callable[[int, int], None] | None = None,
              events_table: str = "crm_events",
              producer_factory: Callable[[FeedConfig], Any] = new_producer) -> RepublishSummary:
    """Publish the events at positions ``start``..``end`` (the head now if not given)
    again, to all topics or only ``topics``. The live publisher's position is not
    touched; consumers see these as duplicates of what they already have (same ids)."""
    started = time.perf_counter()
    envelopes = Envelopes(config, codec)
    wanted = frozenset(topics) if topics else None
    producer = producer_factory(config)
    read = published = 0
    position = max(0, start - 1)
    try:
        with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
            if end is None:
                row = conn.execute(f'SELECT max(notification_id) AS m FROM "{events_table}"').fetchone()
                end = int((row or {}).get("m") or 0)
            if progress is not None:
                progress(position, end)
            while position < end:
                count, last, messages, failed = envelopes.read(
                    conn, position, min(batch_size, end - position), wanted, events_table)
                if not count:
                    break
                for r, error in failed:
                    log.error("event not publishable; skipped", position=int(r["notification_id"]),
                              error=error)
                published += send(producer, messages)
                read += count
                position = last
                if progress is not None:
                    progress(position, end)
    finally:
        producer.close(timeout=10)
    return RepublishSummary(read, published, position, time.perf_counter() - started)


# -- status ------------------------------------------------------------------------------
def feed_status(conn: psycopg.Connection[Any], name: str = "kafka",
                events_table: str = "crm_events") -> FeedStatus:
    """The publisher's position, lag (events and seconds) and parked events, read on
    ``conn`` (a dict-row connection)."""
    head_row = conn.execute(f'SELECT max(notification_id) AS m FROM "{events_table}"').fetchone()
    head = int((head_row or {}).get("m") or 0)
    exists = conn.execute("SELECT to_regclass('crm_kafka_tracking') IS NOT NULL AS ok").fetchone()
    if not (exists and exists["ok"]):
        return FeedStatus(name, 0, head, head, 0.0, 0, None)
    row = conn.execute(
        "SELECT position, updated_at, (SELECT count(*) FROM crm_kafka_parked p WHERE p.name = t.name)"
        " AS parked FROM crm_kafka_tracking t WHERE name = %s", (name,)).fetchone()
    position = int(row["position"]) if row else 0
    waited = lag_seconds(conn, events_table, position) if position < head else 0.0
    return FeedStatus(name, position, head, head - position, waited,
                      int(row["parked"]) if row else 0, row["updated_at"] if row else None)


@dataclass
class KafkaFeed:
    """The publisher as part of a process: its thread (if this process runs it) and
    its status, for `crm serve`, /metrics and `crm projections status`."""

    publisher: KafkaPublisher

    def start(self) -> None:
        self.publisher.start("kafka-publisher")
        log.info("kafka publisher started", topics=self.publisher.config.all_topics())

    def stop(self) -> None:
        self.publisher.stop(30)  # closes it also when this process only used it directly

    def status(self, conn: psycopg.Connection[Any] | None = None) -> FeedStatus:
        if conn is None:
            with psycopg.connect(self.publisher.conninfo, autocommit=True, row_factory=dict_row) as own:
                return feed_status(own, self.publisher.name, self.publisher.events_table)
        return feed_status(conn, self.publisher.name, self.publisher.events_table)


# -- the public contract, for the read API (which may not import events) ---------------------
def public_schemas() -> list[dict[str, Any]]:
    """Every public event type's schema versions kept in the repository."""
    from events.public import public_type, stored_schemas

    types = all_event_types()
    out = []
    for (type_name, version), _ in sorted(stored_schemas().items()):
        cls = types.get(type_name)
        out.append({
            "type": type_name,
            "version": version,
            "cloudevents_type": public_type(cls) if cls else f"crm.{type_name}",
            "aggregate_type": cls.aggregate_type if cls else None,
            "current": bool(cls and cls.class_version == version),
            "personal_fields": list(cls.personal_fields) if cls else [],
        })
    return out


def public_schema(type_name: str, version: int) -> dict[str, Any] | None:
    from events.public import load_schema

    if not type_name.isidentifier():
        return None
    return load_schema(type_name, version)
