"""Erasure of one customer's personal data, searched for byte by byte afterwards in every
store: every PostgreSQL table of every schema (a data-only pg_dump, and the raw pages of
every relation, which also hold dead row versions and freed space), the DuckDB file,
the Parquet exports, and every record on the Kafka topics (a real Kafka-protocol
broker). Another customer's data is untouched. Then backups: restore and rebuild give
the same read tables, the chain verifies, and a restore after a later erasure keeps the
key destroyed."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pyarrow.parquet as pq
import pytest

import projections
from aggregates.customer import Customer
from aggregates.errors import PersonalDataErased
from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import Principal, Request, WriteResult
from crm.backup import backup, find_tool, libpq_args, rebuild_read_models, restore_archive
from analytics import sandbox
from replay.audit import verify_chain, write_checkpoint
from replay.state import Replayer
from replay.timeline import TimelineQuery, timeline
from tests.conftest import settings_for
from tests.kafka_broker import MockBroker, read_all

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("no_kafka_tracking")]

REP = Principal("rep-1", "sales_rep")
DATA_ADMIN = Principal("dpo-1", "data_admin")
TOPICS = ["crm.customer.v1", "crm.opportunity.v1", "crm.interaction.v1",
          "crm.service_request.v1", "crm.task.v1"]
#: The erased customer's personal values (unusual, so a hit cannot be a coincidence).
GONE_NAME = "Zyxwvut Quellbrunn-Ockhamsted"
GONE_EMAIL = "qz7.ockhamsted@vanishing-erasure.test"
GONE_PHONE = "+41 79 555 01 37"
GONE_CONTACT_PERSON = "Brunhilde Xanthoria"
#: The other customer's, which must survive.
KEPT_NAME = "Yolanda Brightwater-Kempe"
KEPT_EMAIL = "yb.kempe@still-here.test"


def run(system: Any, command: Any, who: Principal = REP, target: UUID | None = None,
        version: int | None = None, key: str | None = None) -> WriteResult:
    result: WriteResult = system.commands.execute(command, Request(
        who, correlation_id="corr-erasure", target=target, expected_version=version, idempotency_key=key))
    return result


@dataclass
class History:
    gone: UUID
    kept: UUID
    gone_opportunity: UUID


def make_history(system: Any) -> History:
    """Two customers, each with personal data in every kind of record."""
    ids: dict[str, UUID] = {}
    for label, name, email in (("gone", GONE_NAME, GONE_EMAIL), ("kept", KEPT_NAME, KEPT_EMAIL)):
        r = run(system, cc.RegisterCustomer(
            kind="person", name=name, contacts=[
                cc.ContactIn(kind="email", value=email),
                cc.ContactIn(kind="phone", value=GONE_PHONE if label == "gone" else "+41 44 000 00 00",
                             person_name=GONE_CONTACT_PERSON if label == "gone" else None)],
            source="web", owner_id="rep-1", lifecycle_stage="customer"), key=f"register-{label}")
        cid = ids[label] = r.id
        run(system, cc.ChangeCustomerDetails(name=f"{name} Jr", industry="retail"), target=cid, version=1)
        run(system, cc.ChangeCustomerDetails(name=name), target=cid, version=2)
        run(system, cc.RecordPurchase(order_id=f"SO-{label}", amount=Decimal("120.00"), currency="EUR"),
            target=cid)
        run(system, ci.LogInteraction(customer_id=cid, channel="call", direction="outbound",
                                      subject=f"Call with {name}", body=f"{name} wants a demo",
                                      participants=[name]))
        opp = run(system, co.OpenOpportunity(customer_id=cid, title=f"Licence for {name}",
                                             amount=Decimal("900.00"), currency="EUR"))
        ids[f"{label}-opportunity"] = opp.id
        sr = run(system, cs.OpenServiceRequest(customer_id=cid, channel="email", type="question",
                                               subject=f"{name} asks about invoices",
                                               description=f"Mail from {email}"))
        run(system, cs.CommentOnServiceRequest(body=f"Called {name} back"), target=sr.id)
        run(system, ct.CreateTask(title=f"Send {name} the offer", description=f"to {email}",
                                  due_at=datetime.now(UTC) + timedelta(days=2),
                                  related_type="customer", related_id=cid))
    return History(ids["gone"], ids["kept"], ids["gone-opportunity"])


def catch_up_everything(system: Any, *, kafka: bool = True) -> None:
    for p in projections.ALL:
        system.read.runner(p).catch_up()
    system.analytics.catch_up()
    if system.kafka is not None and kafka:
        system.kafka.publisher.catch_up()


# -- searching ---------------------------------------------------------------------------
def forms(value: str) -> list[bytes]:
    """The ways a value can appear in bytes: as is, lower case, as hex (bytea output),
    JSON-escaped, and the phone's digits alone."""
    out = {value.encode(), value.lower().encode(), value.encode().hex().encode(),
           json.dumps(value).encode()[1:-1]}
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) >= 8:
        out.add(digits.encode())
    return sorted(out)


GONE = [GONE_NAME, GONE_EMAIL, GONE_PHONE, GONE_CONTACT_PERSON]


def hits(data: bytes, values: list[str]) -> dict[str, int]:
    lowered = data.lower()
    found: dict[str, int] = {}
    for v in values:
        n = sum(lowered.count(f.lower()) for f in forms(v))
        if n:
            found[v] = n
    return found


def pg_dump_data(database_url: str) -> bytes:
    tool = find_tool("pg_dump", database_url, embedded=False)
    done = subprocess.run([str(tool), "--data-only", *libpq_args(database_url)], capture_output=True, check=True)
    return done.stdout


def raw_pages(database_url: str) -> tuple[bytes, int]:
    """Every page of every table, index and TOAST table of the database's own schemas,
    raw (live rows, dead row versions and free space alike); and how many relations."""
    chunks: list[bytes] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        rels = conn.execute(
            "SELECT c.oid::regclass::text, pg_relation_size(c.oid) / current_setting('block_size')::int"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'i', 't', 'm') AND c.relpersistence = 'p'"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        for rel, blocks in rels:
            for block in range(int(blocks or 0)):
                row = conn.execute("SELECT get_raw_page(%s, %s)", (rel, block)).fetchone()
                assert row is not None
                chunks.append(bytes(row[0]))
    return b"".join(chunks), len(rels)


@pytest.fixture
def system(make_system: Callable[..., Any], broker: MockBroker) -> Any:
    return make_system(kafka_bootstrap_servers=broker.address, key_cache_seconds=0.2,
                       erasure_kafka_wait_seconds=30, erasure_vacuum_full=True)


def test_an_erased_customer_is_found_in_no_store_and_the_other_is_untouched(
        system: Any, broker: MockBroker, database_url: str, tmp_path: Path) -> None:
    history = make_history(system)
    catch_up_everything(system)
    exports = tmp_path / "exports"
    con = system.analytics.cursor()
    try:
        sandbox.export_parquet(con, exports, record_to=system.analytics.config.exports_ledger)
    finally:
        con.close()
    # The searches find what is there (before): in the read tables, not in the log's bytes.
    before = pg_dump_data(database_url)
    assert set(hits(before, GONE)) == set(GONE) and set(hits(before, [KEPT_NAME, KEPT_EMAIL])) == {
        KEPT_NAME, KEPT_EMAIL}
    # The runner holds the opportunity's row (with the customer's name) in memory.
    pipeline = system.read.runner(projections.by_name("pipeline"))
    assert any(r and r.get("customer_name") == GONE_NAME
               for r in pipeline._cache["opportunities"].values())

    write_checkpoint(system.app.factory.datastore.get_connection, system.audit_key)
    system.start_kafka()  # the publisher follows the log in its thread from here on
    outcome = system.eraser().erase(history.gone, DATA_ADMIN, reason="GDPR art. 17 request",
                                    request_reference="DSR-0042", correlation_id="corr-erase")
    receipt = outcome.receipt
    assert receipt["status"] == "completed" and not outcome.replayed
    assert receipt["event"]["type"] == "CustomerPersonalDataErased"
    assert receipt["event"]["actor"] == {"id": "dpo-1", "role": "data_admin"}
    assert receipt["event"]["reason"] == "GDPR art. 17 request"
    assert receipt["key"]["destroyed"] and receipt["key"]["destroyed_now"]
    by_table = {s["table"]: s for s in receipt["stores"]}
    assert by_table["crm_email_reservations"]["rows"] == 1
    assert by_table["crm_idempotency"]["rows"] == 1
    assert sum(s["rows"] for t, s in by_table.items() if t.endswith(".interactions")) == 1
    assert sum(s["rows"] for t, s in by_table.items() if t.endswith(".tasks")) == 1
    assert receipt["kafka"]["status"] == "published"
    assert receipt["kafka"]["position"] == receipt["event"]["position"]
    assert receipt["analytics"]["values_found_after"] == 0
    assert receipt["parquet_exports"]["files_searched"] > 0
    assert receipt["parquet_exports"]["values_found_after"] == 0
    assert json.dumps(receipt).lower().count(GONE_NAME.lower()) == 0

    # A change to the customer's opportunity after the erasure: the runner must not write
    # back the row it held in memory.
    opp = system.app.load_any(history.gone_opportunity)
    moved = run(system, co.ChangeOpportunityStage(stage="proposal"), target=opp.id, version=opp.version)
    catch_up_everything(system, kafka=False)
    deadline = time.monotonic() + 30
    while system.kafka.publisher.stats.position < (moved.position or 0):
        assert time.monotonic() < deadline, "the publisher did not publish the last event"
        time.sleep(0.1)

    # The analytics projection applied the later events: the pseudonym's link stays gone.
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM crm_analytics_customers WHERE customer_id = %s",
                            (history.gone,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM crm_analytics_customers WHERE customer_id = %s",
                            (history.kept,)).fetchone() == (1,)
    # PostgreSQL: every table of every schema, through pg_dump, and every raw page.
    dump = pg_dump_data(database_url)
    assert hits(dump, GONE) == {}
    assert set(hits(dump, [KEPT_NAME, KEPT_EMAIL])) == {KEPT_NAME, KEPT_EMAIL}
    pages, relations = raw_pages(database_url)
    assert relations > 50 and len(pages) > 1_000_000
    assert hits(pages, GONE) == {}, "old row versions or freed space still hold the data"
    assert KEPT_NAME in hits(pages, [KEPT_NAME])
    # DuckDB: the file's bytes (and its text cells, in the receipt above).
    duckdb_bytes = system.analytics.config.path.read_bytes()
    assert hits(duckdb_bytes, GONE) == {}
    # Parquet: the files' bytes and their decoded cells.
    files = sorted(exports.glob("*.parquet"))
    assert files
    parquet_bytes = b"".join(f.read_bytes() for f in files)
    decoded = "\n".join(str(pq.read_table(f).to_pylist()) for f in files).encode()
    assert hits(parquet_bytes, GONE) == {} and hits(decoded, GONE) == {}
    # Kafka: every record on every topic, and the erasure event on the customer topic.
    records = read_all(broker.address, TOPICS)
    assert hits(b"\n".join(r.value for r in records), GONE) == {}
    erased = [r.envelope for r in records if r.envelope["type"] == "crm.CustomerPersonalDataErased"]
    assert [(e["subject"], e["data"]) for e in erased] == [(str(history.gone),
                                                            {"request_reference": "DSR-0042"})]
    assert [r.topic for r in records if r.envelope["type"] == "crm.CustomerPersonalDataErased"] == [
        "crm.customer.v1"]

    # The record, its timeline and time travel still work, personal fields erased.
    customer = system.app.load(Customer, history.gone)
    assert (customer.name, customer.contacts, customer.personal_data_erased) == (None, {}, True)
    assert [p["amount"] for p in customer.purchases.values()] == [Decimal("120.00")]
    kept = system.app.load(Customer, history.kept)
    assert kept.name == KEPT_NAME
    replayer = Replayer(system.app.factory.datastore.get_connection, system.app.codec, snapshot_every=2)
    page = timeline(replayer, history.gone, TimelineQuery(limit=1000))
    assert len(page.items) >= 10 and all(i["personal_data_erased"] for i in page.items
                                         if i["type"] in ("CustomerRegistered", "InteractionLogged"))
    assert [i["type"] for i in page.items][-2:] == ["CustomerPersonalDataErased", "OpportunityStageChanged"]
    assert hits(json.dumps(page.items, default=str).encode(), GONE) == {}
    then = replayer.state(history.gone, as_of=datetime.now(UTC) - timedelta(seconds=1))
    assert then is not None and getattr(then, "name", "") is None
    # Changes to the customer's personal data are refused; the audit chain verifies.
    with pytest.raises(PersonalDataErased):
        run(system, cc.AddContact(contact=cc.ContactIn(kind="email", value="new@x.test")),
            target=history.gone)
    report = verify_chain(system.app.factory.datastore.get_connection, system.audit_key.public_key())
    assert not report.findings and (report.events, report.checkpoints) == (20, 1)

    # Erasing again records nothing new; the first receipt stays the stored one.
    head = report.head
    again = system.eraser().erase(history.gone, DATA_ADMIN, reason="asked twice",
                                  correlation_id="corr-erase-2")
    assert again.receipt["event"]["position"] == receipt["event"]["position"]
    assert verify_chain(system.app.factory.datastore.get_connection,
                        system.audit_key.public_key()).head == head
    assert system.eraser().receipt(history.gone) == receipt


def read_tables(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every read model's rows, through the crm_read views, in key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for p in projections.ALL:
            for t in p.tables:
                rows = conn.execute(f'SELECT * FROM crm_read."{t.name}" ORDER BY "{t.key}"').fetchall()
                out[t.name] = [tuple(str(v) for v in r) for r in rows]
    return out


def fresh_database(database_url: str, name: str) -> str:
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url.rsplit("/", 1)[0] + "/" + name


def drop_database(database_url: str, url: str) -> None:
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def test_backup_restore_rebuilds_equal_read_tables_and_keeps_later_erasures(
        make_system: Callable[..., Any], database_url: str, tmp_path: Path) -> None:
    from crm.bootstrap import build

    system = make_system(key_cache_seconds=0.2)
    history = make_history(system)
    catch_up_everything(system)
    original = read_tables(database_url)
    archive = tmp_path / "crm.backup"
    tables = backup(database_url, archive, embedded=False)
    assert {"crm_events", "crm_subject_keys", "crm_event_chain", "crm_chain_checkpoints",
            "crm_idempotency", "crm_email_reservations", "crm_erasures"} <= set(tables)
    assert not {"crm_projections", "crm_projection_tracking", "crm_snapshots"} & set(tables)
    # Erased after the backup was taken: the ledger (in the data directory) remembers.
    system.eraser().erase(history.gone, DATA_ADMIN, reason="erased after the backup",
                          correlation_id="corr-late")
    ledger = system.eraser().ledger
    assert ledger.subjects() == [history.gone]

    first = fresh_database(database_url, database_url.rsplit("/", 1)[1] + "_r1")
    second = fresh_database(database_url, database_url.rsplit("/", 1)[1] + "_r2")
    try:
        # 1. restored and rebuilt with no erasure in the ledger: equal read tables.
        restore_archive(first, archive, embedded=False)
        with psycopg.connect(first, autocommit=True) as conn:  # the log is append-only again
            assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'crm_append_only'"
                                ).fetchone() == (3,)
        empty_ledger = settings_for(first, tmp_path / "data1", key_cache_seconds=0.2)
        restored = build(empty_ledger)
        try:
            assert restored.eraser().reapply_ledger() == []
            rebuild_read_models(restored)
            assert read_tables(first) == original
            report = verify_chain(restored.app.factory.datastore.get_connection,
                                  restored.audit_key.public_key())
            assert not report.findings and report.events == sum(1 for _ in _events(database_url)) - 1
        finally:
            restored.close()
        # 2. restored with the ledger: the key erased after the backup stays destroyed.
        restore_archive(second, archive, embedded=False)
        restored = build(settings_for(second, tmp_path / "data2", key_cache_seconds=0.2,
                                      erasure_ledger_path=ledger.path))
        try:
            receipts = restored.eraser().reapply_ledger()
            assert [r["customer_id"] for r in receipts] == [str(history.gone)]
            rebuild_read_models(restored)
            customer = restored.app.load(Customer, history.gone)
            assert (customer.name, customer.personal_data_erased) == (None, True)
            assert restored.app.load(Customer, history.kept).name == KEPT_NAME
            assert hits(pg_dump_data(second), GONE) == {}
            assert set(hits(pg_dump_data(second), [KEPT_NAME])) == {KEPT_NAME}
            report = verify_chain(restored.app.factory.datastore.get_connection,
                                  restored.audit_key.public_key())
            assert not report.findings
        finally:
            restored.close()
    finally:
        drop_database(database_url, first)
        drop_database(database_url, second)


def _events(database_url: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT notification_id FROM crm_events").fetchall()]


def test_restore_refuses_a_database_that_holds_events(
        make_system: Callable[..., Any], database_url: str, tmp_path: Path) -> None:
    from crm.backup import BackupError

    system = make_system()
    make_history(system)
    archive = tmp_path / "crm.backup"
    backup(database_url, archive, embedded=False)
    with pytest.raises(BackupError, match="already holds events"):
        restore_archive(database_url, archive, embedded=False)
