"""`crm customers erase`, `crm backup`, `crm restore` (and `crm audit verify` after it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aggregates.customer import Customer
from commands import customer as cc
from commands.application import Principal, Request
from crm.bootstrap import build
from tests.conftest import JWT_SECRET, MASTER_KEY, settings_for
from tests.integration.test_erasure import drop_database, fresh_database

pytestmark = pytest.mark.postgres


@dataclass
class Done:
    exit_code: int
    output: str


def crm(args: list[str], env: dict[str, str]) -> Done:
    """The command line in its own process (it configures logging for itself)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    done = subprocess.run([sys.executable, "-m", "crm.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=300)
    return Done(done.returncode, done.stdout + done.stderr)


def env_for(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {"CRM_DATABASE_URL": url, "CRM_MASTER_KEY": MASTER_KEY, "CRM_JWT_SECRET": JWT_SECRET,
            "CRM_DATA_DIR": str(data_dir), "CRM_KEY_CACHE_SECONDS": "0.2", "CRM_LOG_FORMAT": "json",
            "CRM_DB_POOL_SIZE": "2", **extra}


def _scratch_database(database_url: str, suffix: str) -> Iterator[str]:
    url = fresh_database(database_url, database_url.rsplit("/", 1)[1] + suffix)
    yield url
    drop_database(database_url, url)


@pytest.fixture
def restored_url(database_url: str) -> Iterator[str]:
    yield from _scratch_database(database_url, "_cli")


def test_erase_backup_and_restore_from_the_command_line(
        make_system: Callable[..., Any], database_url: str, restored_url: str, tmp_path: Path) -> None:
    system = make_system()
    cid = system.commands.execute(
        cc.RegisterCustomer(kind="person", name="Ottoline Pferdekamp",
                            contacts=[cc.ContactIn(kind="email", value="op@cli-erase.test")]),
        Request(Principal("rep-1", "sales_rep"), correlation_id="corr-cli")).id
    env = env_for(database_url, tmp_path / "data")
    archive = tmp_path / "before.backup"
    done = crm(["backup", str(archive)], env)
    assert done.exit_code == 0, done.output
    assert archive.stat().st_size > 0

    assert crm(["customers", "erase", str(cid)], env).exit_code == 2  # --reason
    done = crm(["customers", "erase", str(cid), "--reason", "GDPR art. 17",
                               "--reference", "DSR-5", "--actor", "dpo-7"], env)
    assert done.exit_code == 0, done.output
    receipt = json.loads(done.output[done.output.index("{\n"):done.output.rindex("\n}") + 2])
    assert receipt["event"]["actor"] == {"id": "dpo-7", "role": "data_admin"}
    assert receipt["key"]["destroyed_now"] is True
    assert "Ottoline" not in done.output
    unknown = crm(["customers", "erase", "00000000-0000-0000-0000-000000000001",
                                  "--reason", "x"], env)
    assert unknown.exit_code == 1 and "no customer" in unknown.output

    # Restore the earlier backup elsewhere: without the ledger it refuses ...
    target = env_for(restored_url, tmp_path / "restored")
    done = crm(["restore", str(archive)], target)
    assert done.exit_code == 2 and "erasure ledger" in done.output
    with psycopg.connect(restored_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('crm_events')").fetchone() == (None,)
    # ... with it (and the audit signing key, which this bundle does not hold, supplied by
    # hand), the customer erased after the backup stays erased.
    target["CRM_ERASURE_LEDGER_PATH"] = str(tmp_path / "data" / "erasure-ledger.jsonl")
    done = crm(["restore", str(archive)], target)
    assert done.exit_code == 2 and "audit signing key" in done.output, done.output
    (tmp_path / "restored").mkdir(exist_ok=True)
    shutil.copy(tmp_path / "data" / "audit-signing.key", tmp_path / "restored" / "audit-signing.key")
    done = crm(["restore", str(archive)], target)
    assert done.exit_code == 0, done.output
    assert "1 erased customers' keys destroyed again" in done.output
    restored = build(settings_for(restored_url, tmp_path / "restored"))
    try:
        customer = restored.app.load(Customer, cid)
        assert (customer.name, customer.personal_data_erased) == (None, True)
        with psycopg.connect(restored_url, autocommit=True) as conn:
            row = conn.execute("SELECT name, personal_data_erased FROM crm_read.customers").fetchone()
        assert row == (None, True)
    finally:
        restored.close()
    done = crm(["audit", "verify"], target)
    assert done.exit_code == 0 and "the chain is intact" in done.output
    # A second restore into a database with events is refused.
    done = crm(["restore", str(archive)], target)
    assert done.exit_code == 1 and "already holds events" in done.output


@pytest.fixture
def second_url(database_url: str) -> Iterator[str]:
    yield from _scratch_database(database_url, "_cli2")


def test_a_bundle_restores_onto_a_new_machine_and_keeps_later_erasures(
        pg_env: dict[str, str], database_url: str, restored_url: str, second_url: str,
        tmp_path: Path) -> None:
    """System A keeps its keys in its data directory (none in the environment): the
    bundle must carry them, or the restore must name the one it lacks."""
    from crm.settings import Settings

    source = tmp_path / "a"
    system = build(Settings(database_url=database_url, data_dir=source, db_pool_size=2))
    try:
        ids = [system.commands.execute(
            cc.RegisterCustomer(kind="person", name=name,
                                contacts=[cc.ContactIn(kind="email", value=f"{name.lower()}@bundle.test")]),
            Request(Principal("rep-1", "sales_rep"), correlation_id=f"corr-{name}")).id
            for name in ("Erasmus", "Keepsake")]
    finally:
        system.close()
    env = {"CRM_DATABASE_URL": database_url, "CRM_DATA_DIR": str(source), "CRM_LOG_FORMAT": "json",
           "CRM_KEY_CACHE_SECONDS": "0.2", "CRM_DB_POOL_SIZE": "2"}
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    first = tmp_path / "first.crm"
    done = crm(["backup", str(first), "--include-keys", "--passphrase-file", str(passphrase)], env)
    assert done.exit_code == 0 and "keys included" in done.output, done.output
    done = crm(["customers", "erase", str(ids[0]), "--reason", "GDPR art. 17"], env)
    assert done.exit_code == 0, done.output
    second = tmp_path / "second.crm"
    done = crm(["backup", str(second)], env)
    assert done.exit_code == 0 and "keys NOT included" in done.output, done.output
    assert "1 erased customers in the ledger" in done.output

    new = {"CRM_DATABASE_URL": restored_url, "CRM_DATA_DIR": str(tmp_path / "b"), "CRM_LOG_FORMAT": "json",
           "CRM_DB_POOL_SIZE": "2"}
    # The newer bundle holds no keys: the restore names what it lacks, and changes nothing.
    done = crm(["restore", str(second), "--newest"], new)
    assert done.exit_code == 2, done.output
    assert "missing the master key" in done.output and "audit signing key" in done.output, done.output
    # The older one, with no ledger newer than itself: refused.
    done = crm(["restore", str(first), "--passphrase-file", str(passphrase)], new)
    assert done.exit_code == 2 and "no current erasure ledger" in done.output, done.output
    # A wrong passphrase: refused.
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    done = crm(["restore", str(first), "--ledger", str(second), "--passphrase-file", str(wrong)], new)
    assert done.exit_code == 2 and "passphrase does not open" in done.output, done.output
    with psycopg.connect(restored_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('crm_events')").fetchone() == (None,)
    assert not (tmp_path / "b" / "master.key").exists()

    # The backup from before the erasure, with the newer bundle's ledger: one command.
    done = crm(["restore", str(first), "--ledger", str(second), "--passphrase-file", str(passphrase)], new)
    assert done.exit_code == 0, done.output
    assert "1 erased customers' keys destroyed again" in done.output
    assert (tmp_path / "b" / "master.key").read_text() == (source / "master.key").read_text()
    assert done.output.count("installed ") == 3  # master key, audit signing key, JWT secret
    restored = build(Settings(database_url=restored_url, data_dir=tmp_path / "b", db_pool_size=2))
    try:
        erased, kept = (restored.app.load(Customer, i) for i in ids)
        assert (erased.name, erased.personal_data_erased) == (None, True)
        assert kept.name == "Keepsake"  # readable: the master key came with the bundle
    finally:
        restored.close()
    assert "GDPR" not in (tmp_path / "b" / "erasure-ledger.jsonl").read_text()
    assert str(ids[0]) in (tmp_path / "b" / "erasure-ledger.jsonl").read_text()
    done = crm(["audit", "verify"], new)
    assert done.exit_code == 0 and "the chain is intact" in done.output, done.output

    # The current ledger alone (the file of system A) does the same for a plain restore of
    # the old bundle elsewhere; keys supplied by the environment must be the backup's.
    other = {"CRM_DATABASE_URL": second_url, "CRM_DATA_DIR": str(tmp_path / "c"), "CRM_LOG_FORMAT": "json",
             "CRM_DB_POOL_SIZE": "2", "CRM_MASTER_KEY": "ab" * 32,
             "CRM_ERASURE_LEDGER_PATH": str(source / "erasure-ledger.jsonl")}
    done = crm(["restore", str(first), "--passphrase-file", str(passphrase)], other)
    assert done.exit_code == 2 and "master key here (CRM_MASTER_KEY" in done.output, done.output
    other["CRM_MASTER_KEY"] = (source / "master.key").read_text().strip()
    done = crm(["restore", str(first), "--passphrase-file", str(passphrase)], other)
    assert done.exit_code == 0 and "1 erased customers' keys destroyed again" in done.output, done.output
