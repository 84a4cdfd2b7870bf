"""Kafka publication: how fast the publisher moves the event log to a Kafka-protocol
broker, beside a plain producer sending the same bytes, and how long its lag takes to
drain after the broker stalls for 30 s under a write load.

The broker is librdkafka's mock cluster (``confluent-kafka``) in a subprocess. The log
is generated as in ``bench.projection_catchup`` (realistic histories, personal data
sealed, COPY into ``crm_events``).

``ours``
    ``KafkaPublisher.catch_up`` from position 0 to the head: read batches of 5,000
    stored events, build each CloudEvents envelope, send with kafka-python (idempotent,
    ``acks=all``), wait for every acknowledgement, record the position.
``baseline``
    A plain kafka-python producer with the same options sending the same envelopes,
    already encoded in memory (no database, no JSON), then ``flush``: the client's own
    ceiling on this machine. ours/baseline is what reading, decoding, envelope building
    and per-batch acknowledgement cost on top.
``stall``
    The publisher follows the log (a thread, LISTEN/NOTIFY) while one client writes
    commands at a steady rate; the broker is stopped (SIGSTOP) for 30 s and resumed.
    Reported: the backlog at the resume and the time from the resume until the
    publisher's recorded position passes the head as it was at the resume, and until
    the lag is back under one batch.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.projection_catchup import _Load, generate
from bench.write_throughput import environment, log, throwaway_database
from commands import HANDLERS
from commands.application import CommandService, CrmApplication
from crm.bootstrap import postgres_env
from feeds.kafka import (
    Envelopes,
    FeedConfig,
    KafkaFeed,
    KafkaPublisher,
    new_producer,
    read_events,
    send,
)
from tests.kafka_broker import MockBroker


@dataclass(frozen=True)
class Settings:
    events: int = 200_000
    reps: int = 1
    stall_seconds: float = 30.0
    write_rate: float = 200.0  # commands per second during the stall case
    batch_size: int = 5000
    seed: int = 20261123
    server: str | None = None
    embedded: bool = False


FULL = Settings()
QUICK = Settings(events=20_000, stall_seconds=5.0)


def _config(broker: MockBroker) -> FeedConfig:
    return FeedConfig(broker.address, schema_base_url="http://127.0.0.1:8000/api/v1/schemas")


def run_ours(url: str, app: CrmApplication, broker: MockBroker, name: str,
             batch_size: int) -> dict[str, Any]:
    publisher = KafkaPublisher(url, app.codec, _config(broker), name=name, batch_size=batch_size)
    try:
        started = time.perf_counter()
        position = publisher.catch_up()
        seconds = time.perf_counter() - started
    finally:
        publisher.close()
    return {"events": position, "seconds": seconds, "rate": position / seconds,
            "batches": publisher.stats.batches}


def encoded(url: str, app: CrmApplication, broker: MockBroker) -> list[Any]:
    """Every event's message, built once for the baseline."""
    envelopes = Envelopes(_config(broker), app.codec)
    out: list[Any] = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        position = 0
        while rows := read_events(conn, position, 20_000):
            messages, _ = envelopes.messages(rows)
            out += messages
            position = int(rows[-1]["notification_id"])
    return out


def run_baseline(messages: list[Any], broker: MockBroker) -> dict[str, Any]:
    producer = new_producer(_config(broker))
    try:
        started = time.perf_counter()
        sent = send(producer, messages, timeout=600)
        seconds = time.perf_counter() - started
    finally:
        producer.close(timeout=10)
    return {"events": sent, "seconds": seconds, "rate": sent / seconds}


def _tracked(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT position FROM crm_kafka_tracking WHERE name = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def _head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT max(notification_id) FROM crm_events").fetchone()
    return int(row[0] or 0) if row else 0


def run_stall(url: str, app: CrmApplication, broker: MockBroker, settings: Settings) -> dict[str, Any]:
    name = "bench-stall"
    publisher = KafkaPublisher(url, app.codec, _config(broker), name=name,
                               batch_size=settings.batch_size, poll_seconds=0.2)
    with psycopg.connect(url, autocommit=True) as conn:
        publisher.connect()  # its tracking row, then start at the head: only new events count
        conn.execute("UPDATE crm_kafka_tracking SET position = %s WHERE name = %s",
                     (_head(conn), name))
    feed = KafkaFeed(publisher)
    feed.start()
    service = CommandService(app, HANDLERS, email_key=secrets.token_bytes(32))
    client = _Load(service, "stall", settings.seed)
    stop = threading.Event()
    sent = [0]

    def write() -> None:
        interval = 1 / settings.write_rate
        next_at = time.monotonic()
        while not stop.is_set():
            client.step()
            sent[0] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    writer = threading.Thread(target=write, name="stall-writer", daemon=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            writer.start()
            time.sleep(3)
            log(f"stall: broker stopped for {settings.stall_seconds:.0f} s")
            broker.pause()
            try:
                time.sleep(settings.stall_seconds)
                resumed_head = _head(conn)
                backlog = resumed_head - _tracked(conn, name)
            finally:
                broker.resume()
                resumed = time.monotonic()
            caught_up = under_batch = None
            deadline = resumed + 300
            while time.monotonic() < deadline and (caught_up is None or under_batch is None):
                position = _tracked(conn, name)
                now = time.monotonic()
                if caught_up is None and position >= resumed_head:
                    caught_up = now - resumed
                if under_batch is None and _head(conn) - position < settings.batch_size \
                        and position >= resumed_head:
                    under_batch = now - resumed
                time.sleep(0.01)
            stop.set()
            writer.join(30)
            final_lag = _head(conn) - _tracked(conn, name)
    finally:
        stop.set()
        feed.stop()
    log(f"stall: backlog {backlog:,} events, drained in {caught_up} s")
    return {"stall_seconds": settings.stall_seconds, "write_rate": settings.write_rate,
            "commands_sent": sent[0], "backlog_at_resume": backlog,
            "drain_seconds": caught_up, "under_one_batch_seconds": under_batch,
            "lag_after_writes_stopped": final_lag,
            "send_failures": publisher.stats.failures}


def measure(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    kek = secrets.token_bytes(32)
    with throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        app = CrmApplication(postgres_env(db.url, pool_size=4), kek=kek)
        broker = MockBroker()
        try:
            log(f"generating {settings.events:,} events")
            gen = generate(db.url, settings.events, kek, settings.seed)
            log(f"generated {gen.events:,} events in {gen.seconds:.1f} s "
                f"(average stored event {gen.avg_state_bytes:.0f} bytes)")
            messages = encoded(db.url, app, broker)
            avg_value = statistics.fmean(len(m.value) for m in messages)
            ours_runs, base_runs = [], []
            for rep in range(settings.reps):
                base = run_baseline(messages, broker)
                base_runs.append(base)
                log(f"rep {rep + 1} baseline: {base['rate']:,.0f} events/s")
                ours = run_ours(db.url, app, broker, f"bench-{rep}", settings.batch_size)
                ours_runs.append(ours)
                log(f"rep {rep + 1} ours:     {ours['rate']:,.0f} events/s")
            del messages
            stall = run_stall(db.url, app, broker, settings)
        finally:
            broker.stop()
            app.close()
        server = {"where": db.where, "version": db.server_version}
    ours_rate = statistics.median(r["rate"] for r in ours_runs)
    base_rate = statistics.median(r["rate"] for r in base_runs)
    return {
        "benchmark": "kafka_publish",
        "started_at": started_at.isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": asdict(settings),
        "environment": environment(server, broker="librdkafka mock cluster (confluent-kafka)"),
        "log": {"events": gen.events, "avg_state_bytes": round(gen.avg_state_bytes),
                "avg_envelope_bytes": round(avg_value), "types": gen.types},
        "ours": ours_runs,
        "baseline": base_runs,
        "ours_events_per_second": round(ours_rate),
        "baseline_events_per_second": round(base_rate),
        "ours_over_baseline": round(ours_rate / base_rate, 3),
        "stall": stall,
    }


def markdown(doc: dict[str, Any]) -> str:
    s = doc["stall"]
    quick = " (quick)" if doc["settings"].get("quick") else ""
    lines = [
        f"# Kafka publication{quick}",
        "",
        f"{doc['log']['events']:,} generated events (stored {doc['log']['avg_state_bytes']} bytes, "
        f"envelope {doc['log']['avg_envelope_bytes']} bytes on average), one mock broker, "
        f"measured {doc['started_at'][:19]} in {doc['seconds']} s.",
        "",
        "| | events/s |",
        "|---|---:|",
        f"| ours (`KafkaPublisher.catch_up`, batches of {doc['settings']['batch_size']:,}) "
        f"| {doc['ours_events_per_second']:,} |",
        f"| baseline (plain producer, pre-encoded) | {doc['baseline_events_per_second']:,} |",
        f"| ours/baseline | {doc['ours_over_baseline']} |",
        "",
        f"Broker stopped {s['stall_seconds']:.0f} s while {s['write_rate']:.0f} commands/s were "
        f"written: backlog {s['backlog_at_resume']:,} events at the resume, published and "
        f"recorded {s['drain_seconds'] if s['drain_seconds'] is None else round(s['drain_seconds'], 2)} s "
        f"after it (lag under one batch after "
        f"{s['under_one_batch_seconds'] if s['under_one_batch_seconds'] is None else round(s['under_one_batch_seconds'], 2)} s); "
        f"batches sent again: {s['send_failures']}.",
        "",
    ]
    return "\n".join(lines)
