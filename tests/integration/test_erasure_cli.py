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


@pytest.fixture
def restored_url(database_url: str) -> Iterator[str]:
    url = fresh_database(database_url, database_url.rsplit("/", 1)[1] + "_cli")
    yield url
    drop_database(database_url, url)


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
