"""The Kafka feed against a real Kafka-protocol broker (librdkafka's mock cluster in a
subprocess) and a real PostgreSQL, checked with an independent confluent-kafka
consumer: every event delivered, in per-key order, each envelope valid against its
schema; a 30 s broker stall under load; a publisher killed with SIGKILL mid-run;
republish from a position; the reference consumer's dedupe; the schemas over HTTP;
lag in /metrics and `crm projections status`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from psycopg.rows import dict_row
from jsonschema import Draft202012Validator

from bench.projection_catchup import generate
from commands import customer as cc
from commands.application import Principal, Request
from commands.clock import SystemClock
from crm.bootstrap import email_key
from crm.demo import DemoLoader
from events import all_event_types
from events.public import load_schema
from feeds.kafka import Envelopes, FeedConfig, read_events, republish
from feeds.kafka_consumer import SeenIds, consume
from tests.conftest import JWT_SECRET, MASTER_KEY, METRICS_AUTH
from tests.kafka_broker import MockBroker, Record, read_all

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("no_kafka_tracking")]
ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["crm.customer.v1", "crm.opportunity.v1", "crm.interaction.v1",
          "crm.service_request.v1", "crm.task.v1", "crm.user.v1", "crm.team.v1"]


def stored(database_url: str, after: int = 0) -> list[tuple[int, str, str, int]]:
    """(position, event id, aggregate id, aggregate version) of every stored event."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id, convert_from(state, 'UTF8')::jsonb ->> 'event_id',"
            " originator_id::text, originator_version FROM crm_events"
            " WHERE notification_id > %s ORDER BY notification_id", (after,)).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def tracked(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        if conn.execute("SELECT to_regclass('crm_kafka_tracking')").fetchone() == (None,):
            return 0  # the publisher has not set up yet
        row = conn.execute("SELECT position FROM crm_kafka_tracking WHERE name = 'kafka'").fetchone()
    return int(row[0]) if row else 0


def head(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM crm_events").fetchone()
    return int(row[0]) if row else 0


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check_downstream(records: list[Record], expected: list[tuple[int, str, str, int]]) -> dict[str, int]:
    """Every expected event delivered; duplicates identical; per key one partition and
    versions in order (first deliveries). Returns the count of each id."""
    by_id: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_id[r.envelope["id"]].append(r)
    missing = [e for e in expected if e[1] not in by_id]
    assert not missing, f"{len(missing)} events never delivered, e.g. {missing[:3]}"
    assert set(by_id) == {e[1] for e in expected}, "records of events that are not in the log"
    for copies in by_id.values():
        assert len({c.value for c in copies}) == 1, "a duplicate differs from its original"
    partitions: dict[str, set[tuple[str, int]]] = defaultdict(set)
    versions: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        partitions[r.key].add((r.topic, r.partition))
        event_id = r.envelope["id"]
        if event_id not in seen:
            seen.add(event_id)
            versions[r.key].append(r.envelope["aggregateversion"])
    assert all(len(p) == 1 for p in partitions.values()), "an aggregate's events on several partitions"
    for key, vs in versions.items():
        assert vs == sorted(vs), f"aggregate {key}: versions out of order {vs}"
    expected_versions: dict[str, list[int]] = defaultdict(list)
    for _, _, aggregate_id, version in expected:
        expected_versions[aggregate_id].append(version)
    assert dict(versions) == dict(expected_versions)
    return {k: len(v) for k, v in by_id.items()}


def validate(envelope: dict[str, Any]) -> None:
    schema = load_schema(envelope["type"].removeprefix("crm."), envelope["dataversion"])
    assert schema is not None, envelope["type"]
    errors = sorted(Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
                    .iter_errors(envelope), key=str)
    assert not errors, f"{envelope['type']}: {errors[0]}"


def load_demo(system: Any, customers: int = 30) -> None:
    DemoLoader(system.app, email_key(system.settings), SystemClock(), customers=customers).load()


def generated(database_url: str, n: int) -> None:
    """``n`` realistic events written straight into the (empty) log, keys included."""
    generate(database_url, n, bytes.fromhex(MASTER_KEY), seed=7)


def publisher_env(database_url: str, broker: MockBroker, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({
        "CRM_DATABASE_URL": database_url,
        "CRM_MASTER_KEY": MASTER_KEY,
        "CRM_JWT_SECRET": JWT_SECRET,
        "CRM_DATA_DIR": str(tmp_path / "data"),
        "CRM_DB_POOL_SIZE": "2",
        "CRM_KAFKA_BOOTSTRAP_SERVERS": broker.address,
        "CRM_LOG_FORMAT": "json",
        "CRM_LOG_LEVEL": "warning",
        **extra,
    })
    return env


def crm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `crm` command line in a process of its own (it configures logging)."""
    return subprocess.run([sys.executable, "-m", "crm.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# -- delivery and the public contract -------------------------------------------------
@pytest.mark.slow
def test_every_event_is_delivered_in_order_and_valid_against_its_schema(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address)
    load_demo(system)
    expected = stored(database_url)
    publisher = system.kafka.publisher
    assert publisher.catch_up() == expected[-1][0]
    assert tracked(database_url) == expected[-1][0]

    records = read_all(broker.address, TOPICS)
    counts = check_downstream(records, expected)
    assert set(counts.values()) == {1}, "duplicates without any failure"
    types = all_event_types()
    assert len({r.envelope["type"] for r in records}) >= 15, "the demo covers most event types"
    for r in records:
        e = r.envelope
        validate(e)
        cls = types[e["type"].removeprefix("crm.")]
        assert r.topic == f"crm.{cls.aggregate_type}.v1"
        assert r.key == e["subject"]
        assert r.headers["content-type"] == b"application/cloudevents+json"
        assert not set(cls.personal_fields) & set(e["data"]), "personal data on a public topic"
        assert "reason" not in e
        assert e["personaldata"] == ("omitted" if cls.personal_fields else "none")
    # Positions are the log's.
    assert sorted(r.envelope["logposition"] for r in records) == [e[0] for e in expected]


@pytest.mark.slow
def test_a_personal_data_topic_carries_personal_fields(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address,
                         kafka_topics={"customer": "crm.customer-private.v1"},
                         kafka_personal_topics=["crm.customer-private.v1"])
    result = system.commands.execute(
        cc.RegisterCustomer(kind="person", name="Mia Berg",
                            contacts=[cc.ContactIn(kind="email", value="mia@example.org")],
                            source="web", owner_id="rep-1"),
        Request(Principal("rep-1", "sales_rep"), correlation_id="corr-personal"))
    system.kafka.publisher.catch_up()
    records = read_all(broker.address, ["crm.customer-private.v1"])
    assert len(records) == 1
    e = records[0].envelope
    validate(e)
    assert e["subject"] == str(result.id)
    assert e["customerid"] == str(result.id)
    assert e["correlationid"] == "corr-personal"
    assert e["personaldata"] == "included"
    assert e["data"]["name"] == "Mia Berg"
    assert e["data"]["contacts"][0]["value"] == "mia@example.org"


@pytest.mark.slow
def test_envelopes_built_by_postgresql_equal_those_built_in_python(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    load_demo(system, customers=10)
    codec = system.app.codec
    for personal in (frozenset(), frozenset({"crm.opportunity.v1"})):
        envelopes = Envelopes(FeedConfig("unused:9092", personal_topics=personal), codec)
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            rows = read_events(conn, 0, 100_000)
            by_python, failed = envelopes.messages(rows)
            count, last, by_sql, failed_sql = envelopes.read(conn, 0, 100_000)
        assert not failed and not failed_sql
        assert (count, last) == (len(rows), rows[-1]["notification_id"])
        assert [(m.position, m.topic, m.key) for m in by_sql] == \
            [(m.position, m.topic, m.key) for m in by_python]
        for a, b in zip(by_sql, by_python, strict=True):
            assert json.loads(a.value) == json.loads(b.value)
            validate(json.loads(a.value))


@pytest.mark.slow
def test_an_event_that_cannot_be_published_is_parked_and_the_feed_goes_on(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address)
    who = Request(Principal("rep-1", "sales_rep"), correlation_id="corr-parked")
    system.commands.execute(cc.RegisterCustomer(kind="company", name="Before"), who)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO crm_events (originator_id, originator_version, topic, state)"
                     " VALUES (gen_random_uuid(), 1, 'NoSuchEvent', '{}'::bytea)")
    system.commands.execute(cc.RegisterCustomer(kind="company", name="After"), who)
    publisher = system.kafka.publisher
    publisher.batch_size = 1  # the bad event is a batch of its own, with nothing to send
    assert publisher.catch_up() == 3
    status = system.kafka.status()
    assert (status.position, status.lag_events, status.parked) == (3, 0, 1)
    from tests.asgi_client import Client

    ready = Client(system.http_app()).get("/ready")  # a parked event: reported, and not ready
    assert ready.status_code == 503
    assert "kafka: 1 parked event(s)" in ready.json()["reasons"]
    assert ready.json()["kafka"] == {"position": 3, "lag_events": 0, "lag_seconds": 0.0, "parked": 1}
    records = read_all(broker.address, TOPICS)
    assert sorted(r.envelope["logposition"] for r in records) == [1, 3]


# -- faults ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_broker_stalled_for_30_seconds_under_load_loses_nothing(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address)
    system.kafka.publisher.poll_seconds = 0.2
    system.start_kafka()
    stop = threading.Event()
    sent: list[int] = []

    def keep_writing() -> None:
        who = Request(Principal("rep-1", "sales_rep"), correlation_id="corr-stall")
        while not stop.is_set():
            r = system.commands.execute(cc.RegisterCustomer(kind="company", name=f"Stall {len(sent)}",
                                                            source="web", owner_id="rep-1"), who)
            system.commands.execute(cc.TagCustomer(tag="vip"), Request(
                who.principal, correlation_id="corr-stall", target=r.id))
            sent.append(r.position or 0)
            time.sleep(0.02)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        wait_until(lambda: tracked(database_url) > 20, 30, "the publisher to start publishing")
        broker.pause()
        try:
            paused_at = len(sent)
            time.sleep(30)
            assert len(sent) > paused_at + 50, "commands kept coming during the stall"
            assert tracked(database_url) < head(database_url), "the publisher cannot have advanced"
        finally:
            broker.resume()
        time.sleep(3)
    finally:
        stop.set()
        writer.join(30)
    wait_until(lambda: tracked(database_url) == head(database_url), 150, "the lag to drain")
    expected = stored(database_url)
    records = read_all(broker.address, TOPICS, timeout=90)
    counts = check_downstream(records, expected)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"stall: {len(expected)} events, {len(records)} records, {duplicates} duplicates")


@pytest.mark.slow
def test_a_publisher_killed_mid_run_and_restarted_loses_nothing(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str, tmp_path: Path) -> None:
    make_system()  # the tables
    generated(database_url, 8_000)
    expected = stored(database_url)
    env = publisher_env(database_url, broker, tmp_path, CRM_KAFKA_BATCH_SIZE="200")
    cmd = [sys.executable, "-m", "crm.cli", "kafka", "publish"]
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: tracked(database_url) >= 1500 or first.poll() is not None, 60,
                   "the publisher to get going")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        assert first.stderr is not None
        first.stderr.close()
    killed_at = tracked(database_url)
    assert 0 < killed_at < expected[-1][0], f"killed at {killed_at}: not mid-run"
    second = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: tracked(database_url) == expected[-1][0], 120, "the restarted publisher")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    records = read_all(broker.address, TOPICS, timeout=90)
    counts = check_downstream(records, expected)
    # Events after the last recorded position may come twice; none before it.
    again = {event_id for event_id, n in counts.items() if n > 1}
    assert all(pos > killed_at for pos, event_id, _, _ in expected if event_id in again)


# -- republish and the reference consumer ---------------------------------------------
@pytest.mark.slow
def test_republish_from_a_position_and_the_consumer_hands_each_event_on_once(
        broker: MockBroker, make_system: Callable[..., Any], database_url: str,
        tmp_path: Path) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address)
    load_demo(system, customers=10)
    expected = stored(database_url)
    last = system.kafka.publisher.catch_up()
    start = expected[len(expected) // 2][0]

    result = crm(publisher_env(database_url, broker, tmp_path), "kafka", "republish",
                 "--from", str(start), "--topic", "crm.customer.v1")
    assert result.returncode == 0, result.stderr
    assert "republished" in result.stdout
    refused = crm(publisher_env(database_url, broker, tmp_path), "kafka", "republish",
                  "--from", "1", "--topic", "no.such.topic")
    assert refused.returncode == 2 and "unknown topic" in refused.stderr
    assert tracked(database_url) == last, "republish moved the live publisher's position"

    records = read_all(broker.address, TOPICS)
    counts = check_downstream(records, expected)
    aggregate_types = {r.envelope["id"]: r.envelope["aggregatetype"] for r in records}
    again = {pos for pos, event_id, _, _ in expected if counts[event_id] == 2}
    want = {pos for pos, event_id, _, _ in expected
            if pos >= start and aggregate_types[event_id] == "customer"}
    assert again == want and want
    assert max(counts.values()) == 2

    # A republish of a range to every topic, through the function.
    summary = republish(database_url, system.app.codec, system.kafka.publisher.config,
                        start=1, end=5)
    assert (summary.events, summary.published, summary.position) == (5, 5, 5)

    handed: list[dict[str, Any]] = []
    seen = SeenIds(tmp_path / "seen.sqlite", window=100_000)
    try:
        consumed = consume(broker.address, TOPICS, "reference", handed.append, seen=seen,
                           idle_seconds=3)
    finally:
        seen.close()
    assert consumed.handed_on == len(expected)
    assert consumed.duplicates == len(want) + 5
    assert sorted(e["logposition"] for e in handed) == [e[0] for e in expected]
    # Restarted with the same state: nothing new, nothing handed on twice.
    seen = SeenIds(tmp_path / "seen.sqlite", window=100_000)
    try:
        again_summary = consume(broker.address, TOPICS, "reference-2", handed.append, seen=seen,
                                idle_seconds=3)
    finally:
        seen.close()
    assert again_summary.handed_on == 0 and again_summary.duplicates == len(records) + 5

    # The command line: each event once, as JSON lines on stdout.
    out = crm(publisher_env(database_url, broker, tmp_path), "kafka", "consume", "--group", "cli",
              "--idle-timeout", "3")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(e["logposition"] for e in lines) == [e[0] for e in expected]
    assert f"duplicates {len(want) + 5}" in out.stderr


def test_seen_ids_keep_a_bounded_window(tmp_path: Path) -> None:
    seen = SeenIds(tmp_path / "s.sqlite", window=3)
    assert [seen.first_time(i) for i in "abca"] == [True, True, True, False]
    seen.commit()
    assert seen.first_time("d")
    seen.commit()
    assert seen.first_time("a"), "a fell out of the window of 3"
    seen.close()


@contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """The app under uvicorn on a free port, and a client for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            wait_until(lambda: server.started, 15, "uvicorn")
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# -- operations: schemas over HTTP, lag in /metrics and status --------------------------
@pytest.mark.slow
def test_schemas_metrics_and_status(broker: MockBroker, make_system: Callable[..., Any],
                                    database_url: str,
                                    tmp_path: Path) -> None:
    system = make_system(kafka_bootstrap_servers=broker.address)
    load_demo(system, customers=3)
    total = head(database_url)
    auth = {"Authorization": f"Bearer {system.tokens.issue('erp', 'integration')}"}
    with serve(system.http_app()) as client:
        listed = client.get("/api/v1/schemas", headers=auth)
        assert listed.status_code == 200
        items = listed.json()["items"]
        assert {i["type"] for i in items} == set(all_event_types())
        one = client.get(items[0]["href"], headers=auth)
        assert one.status_code == 200
        assert one.headers["content-type"].startswith("application/schema+json")
        Draft202012Validator.check_schema(one.json())
        for path, status in (("/api/v1/schemas/NoSuchEvent/1", 404),
                             ("/api/v1/schemas/CustomerRegistered/99", 404),
                             ("/api/v1/schemas/CustomerRegistered/one", 422),
                             ("/api/v1/schemas/CustomerRegistered/0", 422)):
            r = client.get(path, headers=auth)
            assert r.status_code == status, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        assert client.get("/api/v1/schemas").status_code == 401

        metrics = client.get("/metrics", headers=METRICS_AUTH).text
        assert f'crm_kafka_publisher_lag_events{{publisher="kafka"}} {total}' in metrics
        system.kafka.publisher.catch_up()
        metrics = client.get("/metrics", headers=METRICS_AUTH).text
        assert 'crm_kafka_publisher_lag_events{publisher="kafka"} 0' in metrics
        assert f'crm_kafka_publisher_position{{publisher="kafka"}} {total}' in metrics
        assert f'crm_kafka_publisher_events_published_total{{publisher="kafka"}} {total}' in metrics

    env = publisher_env(database_url, broker, tmp_path)
    status = crm(env, "projections", "status")
    assert "Kafka publisher" in status.stdout and f"{total}" in status.stdout, status.stdout
    schemas = crm(env, "kafka", "schemas")
    assert schemas.returncode == 0 and "match" in schemas.stdout, schemas.stderr


def test_feed_config_topics() -> None:
    config = FeedConfig("127.0.0.1:9092", topics={"customer": "erp.customers"})
    assert config.topic_for("customer") == "erp.customers"
    assert config.topic_for("task") == "crm.task.v1"
    assert sorted(config.all_topics()) == sorted(["erp.customers", *TOPICS[1:], "crm.audit_export.v1",
                                                  "crm.api_key.v1"])
