"""Every log follower tells a bad event from a bad moment, on a real PostgreSQL, DuckDB
and Kafka-protocol broker.

Events PostgreSQL cannot hold as they are (NUL, lone surrogates in texts) are written to
the log here the way an installation may already hold them: encoded by the CRM's own
codec (sealed personal fields and all), without the commands' validation, and inserted
into the event store. The read models show their records (the unholdable characters
replaced by U+FFFD); an event whose data no cleaning can make fit is parked alone, found
by splitting its batch, and the rest of the batch applies; a lost database connection is
retried with a growing, capped pause and parks nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.rows import dict_row

import projections
from commands import customer as cc
from commands import opportunity as co
from commands import service_request as cs
from commands.application import Principal, Request
from projections.customers import CustomerList
from projections.follow import EVENT, MOMENT, Backoff, apply_splitting, classify, clean
from projections.runner import BatchRunner
from tests.conftest import METRICS_AUTH

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")
AGENT = Principal("agent-7", "service_agent")
NUL = "Poi\x00son"
SURROGATE = "Half \ud800 pair"
REPLACED = "\ufffd"


# -- helpers -----------------------------------------------------------------------------------
def run(system: Any, command: Any, who: Principal = REP, target: UUID | None = None) -> Any:
    return system.commands.execute(command, Request(who, correlation_id="corr-followers", target=target))


def store_copy(system: Any, database_url: str, source: UUID, **changes: Any) -> UUID:
    """Store a copy of ``source``'s first event as a new aggregate's, with ``changes`` to
    its fields, encoded by the codec without any validation; the new aggregate's id."""
    event = next(iter(system.app.events.get(source)))
    new_id = uuid4()
    meta = dataclasses.replace(event.meta, event_id=uuid4(), command_id=uuid4())
    copy = object.__new__(type(event))
    object.__setattr__(copy, "__dict__", {**event.__dict__, "originator_id": new_id, "meta": meta,
                                          **changes})
    topic, state = system.app.codec.encode(copy)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO crm_events (originator_id, originator_version, topic, state)"
                     " VALUES (%s, 1, %s, %s)", (new_id, topic, state))
    return new_id


def register(system: Any, name: str) -> UUID:
    result = run(system, cc.RegisterCustomer.model_validate({"kind": "company", "name": name}))
    return UUID(str(result.id))


def unholdable_history(system: Any, database_url: str) -> dict[str, UUID]:
    """Good records around customers, a deal and a request whose texts hold NUL and
    lone surrogates, and a later good record."""
    ids = {"before": register(system, "Before GmbH")}
    ids["nul"] = store_copy(system, database_url, ids["before"], name=NUL, industry="chem\x00")
    ids["surrogate"] = store_copy(system, database_url, ids["before"], name=SURROGATE,
                                  tags=("a\ud83d", "b"))
    deal = run(system, co.OpenOpportunity.model_validate(
        {"customer_id": ids["before"], "title": "Deal", "amount": "100", "currency": "EUR"}))
    ids["deal"] = store_copy(system, database_url, UUID(str(deal.id)), title="Deal \x00 two")
    request = run(system, cs.OpenServiceRequest.model_validate(
        {"customer_id": ids["before"], "channel": "email", "type": "incident", "priority": "normal",
         "subject": "Cannot sign in"}), AGENT)
    ids["request"] = store_copy(system, database_url, UUID(str(request.id)),
                                subject="Sign\x00in", description="lone \udc00 low")
    ids["after"] = register(system, "After AG")
    return ids


def one(database_url: str, sql: str, *params: Any) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


def all_rows(database_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        return list(conn.execute(sql, params).fetchall())


# -- the shared helper ---------------------------------------------------------------------------
def test_classify_tells_the_event_from_the_moment() -> None:
    import duckdb
    from kafka import errors as kafka_errors

    from events.codec import EventDecodeError

    for error in (psycopg.errors.CharacterNotInRepertoire("0x00"), psycopg.errors.NumericValueOutOfRange(),
                  psycopg.errors.StringDataRightTruncation(), psycopg.errors.UniqueViolation(),
                  psycopg.errors.ProgramLimitExceeded("index row size"), psycopg.DataError("NUL"),
                  duckdb.ConversionException("x"), duckdb.InvalidInputException("x"),
                  duckdb.ConstraintException("x"), kafka_errors.MessageSizeTooLargeError("x"),
                  UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
                  EventDecodeError("not JSON"), KeyError("field"), TypeError("orjson")):
        assert classify(error) == EVENT, error
    for error in (psycopg.OperationalError("gone"), psycopg.InterfaceError("closed"),
                  psycopg.errors.AdminShutdown(), psycopg.errors.SerializationFailure(),
                  psycopg.errors.DeadlockDetected(), psycopg.errors.LockNotAvailable(),
                  psycopg.errors.QueryCanceled(), psycopg.errors.UndefinedTable(),
                  psycopg.errors.InFailedSqlTransaction(), duckdb.IOException("disk"),
                  duckdb.OutOfMemoryException("oom"), kafka_errors.NoBrokersAvailable(),
                  kafka_errors.KafkaTimeoutError(), ConnectionResetError(), TimeoutError()):
        assert classify(error) == MOMENT, error


def test_apply_splitting_isolates_the_bad_items_and_applies_the_rest_in_order() -> None:
    applied: list[list[int]] = []
    parked: list[int] = []

    def apply(part: Any) -> None:
        if any(i in (7, 12) for i in part):
            raise ValueError("bad item")
        applied.append(list(part))

    assert apply_splitting(list(range(20)), apply, lambda i, e: parked.append(i)) == 2
    assert parked == [7, 12]
    flat = [i for part in applied for i in part]
    assert flat == [i for i in range(20) if i not in (7, 12)]  # each once, in order
    assert len(applied) <= 2 * 2 * 5  # halving: a few calls per bad item, not one per item

    # An error of the moment stops the splitting at once; what was applied stays applied.
    calls: list[list[int]] = []

    def flaky(part: Any) -> None:
        calls.append(list(part))
        if 3 in part:
            raise psycopg.OperationalError("server closed the connection")

    with pytest.raises(psycopg.OperationalError):
        apply_splitting(list(range(8)), flaky, lambda i, e: parked.append(i))
    assert calls == [list(range(8))] and parked == [7, 12]


def test_backoff_doubles_and_is_capped() -> None:
    backoff = Backoff(0.5, 8.0)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_clean_replaces_what_postgresql_cannot_hold() -> None:
    assert clean({"a\x00": ["x\ud800y", ("ok", 1)], "n": None}) == {
        "a" + REPLACED: ["x" + REPLACED + "y", ("ok", 1)], "n": None}
    text = "plain ünïcödé 😀"
    assert clean(text) is text


# -- the read models ---------------------------------------------------------------------------
def test_read_models_show_records_with_nul_and_lone_surrogates_and_go_on(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    ids = unholdable_history(system, database_url)
    # The status (lag, parked) reads the oldest unapplied event: here one with a NUL in
    # a text in clear (its industry), which PostgreSQL's jsonb refuses.
    nul_position = one(database_url, "SELECT notification_id AS p FROM crm_events WHERE originator_id = %s",
                       ids["nul"])["p"]
    assert system.read.runner(CustomerList).catch_up(stop_at=nul_position - 1) == nul_position - 1
    customers = {s.name: s for s in system.read.status()}["customers"]
    assert customers.lag_events == system.read.store.head() - nul_position + 1
    assert 0 <= customers.lag_seconds < 60
    for p in projections.ALL:
        assert system.read.runner(p).catch_up() == system.read.store.head()
    assert [(s.name, s.parked, s.lag_events) for s in system.read.status()] == [
        (p.name, 0, 0) for p in projections.ALL]
    assert one(database_url, "SELECT name, industry FROM crm_read.customers WHERE id = %s", ids["nul"]) == {
        "name": "Poi" + REPLACED + "son", "industry": "chem" + REPLACED}
    assert one(database_url, "SELECT name, tags FROM crm_read.customers WHERE id = %s", ids["surrogate"]) == {
        "name": "Half " + REPLACED + " pair", "tags": ["a" + REPLACED, "b"]}
    assert one(database_url, "SELECT title FROM crm_read.opportunities WHERE id = %s", ids["deal"]) == {
        "title": "Deal " + REPLACED + " two"}
    assert one(database_url, "SELECT subject FROM crm_read.service_requests WHERE id = %s",
               ids["request"]) == {"subject": "Sign" + REPLACED + "in"}
    assert one(database_url, "SELECT name FROM crm_read.customers WHERE id = %s", ids["after"]) == {
        "name": "After AG"}
    # The activity feed has every event of the log.
    assert one(database_url, "SELECT count(*) AS n FROM crm_read.activities")["n"] == system.read.store.head()


def test_a_value_no_cleaning_fits_is_parked_alone_and_the_rest_of_the_batch_applies(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    before = [register(system, f"Before {i}") for i in range(5)]
    # A name far larger than a btree index entry may be: no row can hold it.
    huge = base64.b64encode(os.urandom(9000)).decode()
    bad = store_copy(system, database_url, before[0], name=huge)
    after = [register(system, f"After {i}") for i in range(5)]
    bad_position = one(database_url, "SELECT notification_id AS p FROM crm_events WHERE originator_id = %s",
                       bad)["p"]
    runner = system.read.runner(CustomerList)
    results: list[Any] = []
    head = system.read.store.head()
    assert runner.catch_up(on_batch=results.append) == head
    batch = [r for r in results if r.events]
    assert [(r.events, r.applied, [p.position for p in r.parked]) for r in batch] == [
        (head, head - 1, [bad_position])]
    listed = {r["id"] for r in all_rows(database_url, "SELECT id FROM crm_read.customers")}
    assert listed == set(before) | set(after)
    parked = all_rows(database_url, "SELECT projection, position, event_type, aggregate_id, error"
                                    " FROM crm_parked_events")
    assert [(p["projection"], p["position"], p["event_type"], p["aggregate_id"]) for p in parked] == [
        ("customers", bad_position, "CustomerRegistered", str(bad))]
    assert parked[0]["error"].startswith("ProgramLimitExceeded: index row")
    status = {s.name: s for s in system.read.status()}
    assert (status["customers"].parked, status["customers"].position) == (1, head)
    # The other read models hold the record (their tables have no such index).
    for p in projections.ALL:
        if p is not CustomerList:
            system.read.runner(p).catch_up()
    assert one(database_url, "SELECT count(*) AS n FROM crm_read.activities WHERE customer_id = %s",
               bad)["n"] == 1


def test_a_lost_connection_is_retried_with_backoff_and_parks_nothing(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    for i in range(3):
        register(system, f"Customer {i}")
    store = system.read.store
    schema = store.active_schema(CustomerList)
    runner = BatchRunner(CustomerList, schema, store.conninfo, system.app.codec,
                         poll_seconds=0.05, retry_max_seconds=0.4)
    delays: list[float] = []
    original = runner.backoff.next_delay

    def recording() -> float:
        delay = original()
        delays.append(delay)
        return delay

    runner.backoff.next_delay = recording  # type: ignore[method-assign]
    # Every connection the runner opens is terminated by the server while it applies a
    # batch (its advisory lock taken, the tracking row locked) -- six times.
    kills = {"left": 6}
    original_apply = runner._apply

    def dying_apply(conn: Any, batch: Any, result: Any) -> Any:
        if kills["left"] > 0:
            kills["left"] -= 1
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return original_apply(conn, batch, result)

    runner._apply = dying_apply  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while store.position(schema) < store.head() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert store.position(schema) == store.head()
    assert kills["left"] == 0
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # doubling, capped
    assert runner.stats.retries == 6 and runner.stats.parked == 0
    assert all_rows(database_url, "SELECT * FROM crm_parked_events") == []
    assert len(all_rows(database_url, "SELECT id FROM crm_read.customers")) == 3


def store_document_copy(database_url: str, source: UUID, drop: tuple[str, ...] = (),
                        **changes: Any) -> tuple[UUID, int]:
    """Store ``source``'s first stored document again as a new aggregate's, with
    ``changes`` to its top-level keys (as a faulty importer might have written it);
    the new aggregate's id and its position."""
    import json

    row = one(database_url, "SELECT topic, state FROM crm_events WHERE originator_id = %s"
                            " AND originator_version = 1", source)
    doc = {**json.loads(bytes(row["state"])), "event_id": str(uuid4()), **changes}
    for key in drop:
        del doc[key]
    new_id = uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        position = conn.execute(
            "INSERT INTO crm_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, 1, %s, %s) RETURNING notification_id",
            (new_id, row["topic"], json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()),
        ).fetchone()
    assert position is not None
    return new_id, int(position[0])


def duck(system: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = system.analytics.cursor()
    try:
        return list(con.execute(sql, list(params)).fetchall())
    finally:
        con.close()


# -- DuckDB ----------------------------------------------------------------------------------------
def test_analytics_takes_unholdable_texts_and_parks_alone_an_event_it_cannot_convert(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    ids = unholdable_history(system, database_url)
    bad, bad_position = store_document_copy(database_url, ids["before"],
                                            occurred_at="2026-13-45T99:00:00+00:00")
    later = register(system, "Later Ltd")
    head = system.read.store.head()
    assert system.analytics.catch_up() == head
    facts = {r[0] for r in duck(system, "SELECT aggregate_id FROM fact_events")}
    assert duck(system, "SELECT count(*) FROM fact_events") == [(head - 1,)]
    assert bad not in facts
    assert {ids["nul"], ids["surrogate"], ids["deal"], ids["request"], ids["after"], later} <= facts
    assert duck(system, "SELECT payload->>'industry', payload->'tags' FROM fact_events"
                        " WHERE aggregate_id = ?", ids["nul"])[0][0] == "chem\x00"
    assert duck(system, "SELECT payload->'tags' FROM fact_events WHERE aggregate_id = ?",
                ids["surrogate"]) == [('["a' + REPLACED + '","b"]',)]
    parked = duck(system, "SELECT position, topic, error FROM analytics_parked")
    assert [(p[0], p[1]) for p in parked] == [(bad_position, "CustomerRegistered")]
    assert parked[0][2].startswith("ConversionException")
    assert system.analytics.stats.parked == 1
    # The keyed tables hold the later customers (derived past the parked event).
    assert duck(system, "SELECT count(*) FROM fact_events WHERE event_type = 'CustomerRegistered'"
                        " AND aggregate_id = ?", later) == [(1,)]


def test_analytics_retries_a_lost_connection_and_parks_nothing(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    for i in range(3):
        register(system, f"Customer {i}")
    analytics = system.analytics
    analytics.config.poll_seconds = 0.05
    analytics.config.retry_max_seconds = 0.2
    assert analytics.catch_up() == system.read.store.head()
    for i in range(3):
        register(system, f"Later {i}")
    # The server ends the projection's connections (as a restart or failover would).
    with psycopg.connect(database_url, autocommit=True) as admin:
        for conn in (analytics._pg, analytics._lock_conn):
            assert conn is not None
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    stop = threading.Event()
    thread = threading.Thread(target=analytics.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while analytics.stats.position < system.read.store.head() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert analytics.stats.position == system.read.store.head()
    assert analytics.stats.parked == 0 and analytics.stats.retries >= 1
    analytics.open()
    assert duck(system, "SELECT count(*) FROM analytics_parked") == [(0,)]
    assert duck(system, "SELECT count(*) FROM fact_events") == [(system.read.store.head(),)]


# -- Kafka -------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_kafka_tracking")
def test_kafka_publishes_unholdable_texts_and_parks_alone_a_record_the_producer_refuses(
        broker: Any, make_system: Callable[..., Any], database_url: str) -> None:
    import json

    from feeds.kafka import FeedConfig, KafkaPublisher
    from tests.kafka_broker import read_all

    system = make_system()
    ids = unholdable_history(system, database_url)
    # A record larger than the producer may send, in the middle of the log.
    big = store_copy(system, database_url, ids["before"], industry="x" * 200_000)
    later = register(system, "Later Ltd")
    head = system.read.store.head()
    big_position = one(database_url, "SELECT notification_id AS p FROM crm_events WHERE originator_id = %s",
                       big)["p"]
    config = FeedConfig(broker.address, producer_options={"max_request_size": 100_000})
    publisher = KafkaPublisher(database_url, system.app.codec, config)
    try:
        assert publisher.catch_up() == head
        assert publisher.stats.parked == 1
    finally:
        publisher.close()
    parked = all_rows(database_url, "SELECT position, topic, aggregate_id, error FROM crm_kafka_parked")
    assert [(p["position"], p["topic"], p["aggregate_id"]) for p in parked] == [
        (big_position, "CustomerRegistered", str(big))]
    assert parked[0]["error"].startswith("MessageSizeTooLargeError")
    records = read_all(broker.address, ["crm.customer.v1", "crm.opportunity.v1", "crm.service_request.v1"])
    by_subject = {r.envelope["subject"]: r.envelope for r in records}
    assert sorted(r.envelope["logposition"] for r in records) == [
        p for p in range(1, head + 1) if p != big_position]
    assert by_subject[str(ids["nul"])]["data"]["industry"] == "chem\x00"  # JSON carries NUL
    assert by_subject[str(ids["surrogate"])]["data"]["tags"] == ["a" + REPLACED, "b"]
    assert str(later) in by_subject and str(ids["after"]) in by_subject
    json.dumps(by_subject[str(ids["surrogate"])])  # valid, UTF-8 encodable


# -- the automation ----------------------------------------------------------------------------------
def test_automation_passes_unholdable_texts_and_parks_alone_an_event_it_cannot_store(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    ids = unholdable_history(system, database_url)
    bad = store_copy(system, database_url, ids["before"], owner_id="rep\x00-1")
    later = register(system, "Later Ltd")
    bad_position = one(database_url, "SELECT notification_id AS p FROM crm_events WHERE originator_id = %s",
                       bad)["p"]
    runner = system.automation()
    head = one(database_url, "SELECT max(notification_id) AS m FROM crm_events")["m"]
    runner.step()  # (its commands append events after ``head``: the SLA of the requests)
    assert one(database_url, "SELECT position FROM crm_automation_tracking")["position"] >= head
    parked = all_rows(database_url, "SELECT position, event_type, error FROM crm_automation_parked")
    assert [(p["position"], p["event_type"]) for p in parked] == [(bad_position, "CustomerRegistered")]
    assert parked[0]["error"].startswith("DataError")
    customers = {r["customer_id"] for r in all_rows(database_url,
                                                      "SELECT customer_id FROM crm_automation_customers")}
    assert customers == {ids["before"], ids["nul"], ids["surrogate"], ids["after"], later}
    assert runner.parked == 1 and runner.retries == 0


def test_projections_status_shows_the_automation_and_exits_1_while_it_has_parked_events(
        make_system: Callable[..., Any], database_url: str, tmp_path: Any) -> None:
    import subprocess

    from tests.integration.test_projection_ops import ROOT, crm_command, crm_env

    system = make_system()
    store_copy(system, database_url, register(system, "Owner Ltd"), owner_id="rep\x00-3")
    system.automation().step()
    for p in projections.ALL:
        system.read.runner(p).catch_up()
    status = subprocess.run(crm_command("projections", "status"), env=crm_env(database_url, tmp_path / "data"),
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "Automation" in status.stdout
    head = system.read.store.head()
    automation = status.stdout[status.stdout.index("Automation"):]
    assert [c.strip() for c in automation.splitlines()[-2].strip("│").split("│")] == [
        str(head), str(head), "0", "0.0", "1"]


def test_automation_retries_a_lost_connection_and_parks_nothing(
        make_system: Callable[..., Any], database_url: str) -> None:
    system = make_system()
    runner = system.automation()
    runner.poll_seconds = 0.05
    runner.backoff = Backoff(0.05, 0.2)
    kills = {"left": 4}
    original = runner._customer

    def dying(conn: Any, event: Any) -> None:
        if kills["left"] > 0:
            kills["left"] -= 1
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        original(conn, event)

    runner._customer = dying  # type: ignore[method-assign]
    for i in range(3):
        register(system, f"Customer {i}")
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(all_rows(
                database_url, "SELECT customer_id FROM crm_automation_customers")) < 3:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert kills["left"] == 0 and runner.retries == 4
    assert len(all_rows(database_url, "SELECT customer_id FROM crm_automation_customers")) == 3
    assert all_rows(database_url, "SELECT * FROM crm_automation_parked") == []


# -- where parking shows -------------------------------------------------------------------------------
def test_ready_and_metrics_show_every_follower_past_the_unholdable_events(
        make_system: Callable[..., Any], database_url: str) -> None:
    from tests.asgi_client import Client

    system = make_system()
    unholdable_history(system, database_url)
    client = Client(system.http_app())
    # Behind (within the bounds), with events PostgreSQL's jsonb refuses first in line.
    before = client.get("/ready")
    assert before.status_code == 200, before.text
    assert before.json()["automation"]["lag_events"] > 0
    assert all(p["lag_events"] > 0 for p in before.json()["projections"])
    for p in projections.ALL:
        system.read.runner(p).catch_up()
    system.automation().step()
    for p in projections.ALL:  # the automation's own commands (SLAs) came after
        system.read.runner(p).catch_up()
    system.automation().step()
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["automation"] == {"position": system.read.store.head(), "lag_events": 0,
                                          "lag_seconds": 0.0, "parked": 0}
    assert all(p["parked"] == 0 and p["lag_events"] == 0 for p in ready.json()["projections"])

    # An event the automation cannot store: parked, shown in /ready and /metrics.
    bad = store_copy(system, database_url, register(system, "Owner Ltd"), owner_id="rep\x00-2")
    for p in projections.ALL:
        system.read.runner(p).catch_up()
    system.automation().step()
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["automation: 1 parked event(s)"]
    body = client.get("/metrics", headers=METRICS_AUTH).text
    assert "crm_automation_parked_events 1" in body
    assert f"crm_automation_position {system.read.store.head()}" in body
    assert 'crm_projection_retries_total{projection="customers"} 0' in body
    assert one(database_url, "SELECT count(*) AS n FROM crm_read.customers WHERE id = %s", bad)["n"] == 1


@pytest.mark.usefixtures("no_kafka_tracking")
def test_kafka_retries_a_lost_database_connection_and_parks_nothing(
        broker: Any, make_system: Callable[..., Any], database_url: str) -> None:
    from feeds.kafka import FeedConfig, KafkaPublisher
    from tests.kafka_broker import read_all

    system = make_system()
    for i in range(3):
        register(system, f"Customer {i}")
    publisher = KafkaPublisher(database_url, system.app.codec, FeedConfig(broker.address),
                               poll_seconds=0.05, retry_max_seconds=0.2)
    try:
        assert publisher.catch_up() == 3
        for i in range(3):
            register(system, f"Later {i}")
        # The server ends the publisher's connection (its leadership lock goes with it).
        assert publisher._conn is not None
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (publisher._conn.info.backend_pid,))
        stop = threading.Event()
        thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while publisher.stats.position < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
        assert publisher.stats.position == 6
        assert publisher.stats.retries >= 1 and publisher.stats.parked == 0
    finally:
        publisher.close()
    assert all_rows(database_url, "SELECT * FROM crm_kafka_parked") == []
    records = read_all(broker.address, ["crm.customer.v1"])
    assert {r.envelope["logposition"] for r in records} == set(range(1, 7))


@pytest.mark.usefixtures("no_kafka_tracking")
def test_kafka_envelopes_of_a_batch_are_split_down_to_the_event_at_fault(
        make_system: Callable[..., Any], database_url: str) -> None:
    """A lone surrogate in the batch sends it through Python; there, a document without
    its data fails: the batch is split, that event parked, every other one built."""
    from feeds.kafka import Envelopes, FeedConfig

    system = make_system()
    ids = unholdable_history(system, database_url)
    bad, bad_position = store_document_copy(database_url, ids["before"], drop=("data",))
    later = register(system, "Later Ltd")
    envelopes = Envelopes(FeedConfig("unused:9092"), system.app.codec)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        count, last, messages, failed = envelopes.read(conn, 0, 1000)
    head = system.read.store.head()
    assert (count, last) == (head, head)
    assert [m.position for m in messages] == [p for p in range(1, head + 1) if p != bad_position]
    assert [(int(r["notification_id"]), error.split(":")[0]) for r, error in failed] == [
        (bad_position, "KeyError")]
    assert str(later).encode() in {m.key for m in messages}
