"""Bounds on analysts' access to the DuckDB analytics database: the size of a result,
memory with several large queries at once, the slots for queries, no automatic
extensions, and Parquet exports confined to the exports directory by name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pyarrow.ipc as ipc
import pytest

from analytics.erasure import recorded_exports
from tests.e2e.test_http import serving
from tests.integration.test_analytics import ROOT, Log, small_history

pytestmark = pytest.mark.postgres
SQL = "/api/v1/analytics/sql"
EXPORT = "/api/v1/analytics/export"
#: 10,000 rows of 50,000 bytes: a 500 MB result
WIDE = "SELECT repeat('x', 50000) AS s FROM range(10000)"
MiB = 1024 * 1024


@pytest.fixture
def analytics(make_system: Callable[..., Any], database_url: str) -> Callable[..., Any]:
    """analytics(**settings) -> a System whose analytics file holds the small history."""
    def make(**overrides: Any) -> Any:
        system = make_system(**overrides)
        log = Log(database_url, system.app.codec)
        system.ids = small_history(log)
        log.close()
        system.analytics.catch_up()
        return system
    return make


@contextmanager
def client_of(system: Any, role: str = "analyst") -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer " + system.tokens.issue(f"{role}-1", role)}
    with serving(system.http_app()) as base, \
            httpx.Client(base_url=base, timeout=120, headers=headers) as client:
        yield client


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# -- the size of a result ------------------------------------------------------------------
def test_a_result_past_the_size_limit_is_refused_naming_the_limit(analytics: Any) -> None:
    system = analytics()
    with client_of(system) as client:
        for fmt in ("json", "csv", "arrow"):
            r = client.post(SQL, json={"sql": WIDE, "format": fmt})
            assert r.status_code == 422, (fmt, r.status_code, len(r.content))
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert problem["type"].endswith("/result-too-large") and problem["field"] == "sql"
            assert problem["limit_bytes"] == 16 * MiB
            assert "larger than 16 MiB" in problem["detail"] and fmt in problem["detail"]
        # the slot and the connection are free again: an ordinary query answers
        r = client.post(SQL, json={"sql": "SELECT count(*) AS n FROM purchases"})
        assert r.status_code == 200 and r.json()["rows"] == [{"n": 5}]
        # a result of 1 MB is well within the limit, whole, with its length
        r = client.post(SQL, json={"sql": "SELECT i, repeat('y', 1000) AS s FROM range(1000) t(i)"})
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
        body = r.json()
        assert body["row_count"] == 1000 and body["truncated"] is False
        assert [row["i"] for row in body["rows"]] == list(range(1000))
        assert r.headers["x-truncated"] == "false" and r.headers["x-log-position"] == "31"


def test_the_size_limit_counts_the_encoded_body(analytics: Any) -> None:
    limit = 50_000
    system = analytics(analytics_max_result_bytes=limit)

    def rows(n: int) -> str:  # each row {"s":"y...y"} in JSON: 108 bytes and a comma
        return f"SELECT repeat('y', 100) AS s FROM range({n})"

    with client_of(system) as client:
        for fmt, fits, too_many in (("json", 400, 470), ("csv", 480, 500), ("arrow", 300, 600)):
            r = client.post(SQL, json={"sql": rows(fits), "format": fmt})
            assert r.status_code == 200, (fmt, r.text[:300])
            assert len(r.content) <= limit and int(r.headers["content-length"]) == len(r.content)
            if fmt == "json":
                assert r.json()["row_count"] == fits
            elif fmt == "csv":
                assert len(r.text.splitlines()) == fits + 1
            else:
                assert ipc.open_stream(io.BytesIO(r.content)).read_all().num_rows == fits
            r = client.post(SQL, json={"sql": rows(too_many), "format": fmt})
            assert r.status_code == 422, (fmt, r.status_code)
            assert r.json()["limit_bytes"] == limit and "48.8281 KiB" in r.json()["detail"]
        # the row limit applies first: 100 of 100,000 rows fit, and the answer says so
        r = client.post(SQL, json={"sql": rows(100_000), "max_rows": 100})
        assert r.status_code == 200 and r.json()["row_count"] == 100
        assert r.json()["truncated"] is True and r.headers["x-truncated"] == "true"
        # exactly max_rows rows: not truncated (batches of 256 rows: 512 is two whole ones)
        r = client.post(SQL, json={"sql": "SELECT * FROM range(512)", "max_rows": 512})
        assert r.json()["row_count"] == 512 and r.json()["truncated"] is False


def test_customers_are_revealed_in_every_group_of_a_long_result(analytics: Any) -> None:
    system = analytics()
    ids = {str(i) for i in system.ids.values()}
    # 3 customers x 1,500 rows: encoded (and looked up) in several groups of rows
    sql = ("SELECT k.customer_key, r.range AS n FROM (SELECT DISTINCT customer_key FROM"
           " purchases) k, range(1500) r ORDER BY n, k.customer_key")
    with client_of(system, "admin") as client:
        r = client.post(SQL, json={"sql": sql, "reveal_customers": True})
        assert r.status_code == 200, r.text
        rows = r.json()["rows"]
        assert len(rows) == 4500 and r.json()["truncated"] is False
        assert {row["customer_id"] for row in rows} == ids
        assert all(row["customer_name"] is None or isinstance(row["customer_name"], str)
                   for row in rows)
        r = client.post(SQL, json={"sql": sql, "reveal_customers": True, "max_rows": 3000,
                                   "format": "csv"})
        lines = r.text.splitlines()
        assert lines[0] == "customer_key,n,customer_id,customer_name" and len(lines) == 3001
        assert {line.split(",")[2] for line in lines[1:]} == ids
        assert r.headers["x-truncated"] == "true"
        # no rows: the columns still, revealed ones too
        r = client.post(SQL, json={"sql": sql.replace("ORDER BY", "WHERE false ORDER BY"),
                                   "reveal_customers": True})
        assert [c["name"] for c in r.json()["columns"]] == [
            "customer_key", "n", "customer_id", "customer_name"]
        assert r.json()["rows"] == []
        r = client.post(SQL, json={"sql": "SELECT 1 AS n", "reveal_customers": True})
        assert r.status_code == 400 and r.json()["field"] == "reveal_customers"


def test_several_large_queries_at_once_keep_the_process_memory_bounded(
        make_system: Callable[..., Any]) -> None:
    # Waiting for a slot may take as long as the query time limit: long enough here that
    # every query runs, however slow the machine.
    system = make_system(analytics_query_timeout_seconds=120)
    system.analytics.catch_up()
    statuses: list[int] = []
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    with client_of(system) as client:
        assert client.post(SQL, json={"sql": "SELECT 1"}).status_code == 200  # warmed up
        before = rss_mib()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def ask(fmt: str) -> None:
            statuses.append(client.post(SQL, json={"sql": WIDE, "format": fmt}).status_code)

        askers = [threading.Thread(target=ask, args=(fmt,))
                  for fmt in ("json", "csv", "arrow", "json", "csv", "arrow")]
        for t in askers:
            t.start()
        for t in askers:
            t.join(300)
        done.set()
        watcher.join()
    assert statuses == [422] * 6
    # Each query holds at most one DuckDB vector (2,048 rows: 100 MB here) and its batch
    # being encoded; two run at once. Before the limits one such query took 1.4 GB.
    assert peak[0] - before < 400, f"RSS grew by {peak[0] - before:.0f} MiB"


# -- slots for queries -------------------------------------------------------------------------
def test_queries_beyond_the_slots_wait_then_get_503(analytics: Any) -> None:
    system = analytics(analytics_max_concurrent_queries=1, analytics_query_timeout_seconds=1)
    with client_of(system) as client:
        with system.analytics.query_slot(0):  # the one slot, taken
            r = client.post(SQL, json={"sql": "SELECT 1 AS x"})
            assert r.status_code == 503 and r.json()["type"].endswith("/analytics-busy")
            assert r.headers["retry-after"] == "1"
            assert client.post(EXPORT, json={"name": "busy"}).status_code == 503
            # the KPI, lifetime-value and report routes run queries too: the same slots
            for path in ("/api/v1/analytics/kpis/win_rate", "/api/v1/analytics/kpis/rfm",
                         "/api/v1/analytics/clv", "/api/v1/analytics/report"):
                assert client.get(path).status_code == 503, path
        assert not (system.settings.data_dir / "exports" / "busy").exists()
        # a query that finds the slot taken waits for it (up to the time limit)
        answers: list[httpx.Response] = []
        with system.analytics.query_slot(0):
            asker = threading.Thread(
                target=lambda: answers.append(client.post(SQL, json={"sql": "SELECT 1 AS x"})))
            asker.start()
            time.sleep(0.3)
        asker.join(60)
        assert answers[0].status_code == 200 and answers[0].json()["rows"] == [{"x": 1}]


# -- no extensions ----------------------------------------------------------------------------
def test_duckdb_installs_and_loads_no_extension(analytics: Any) -> None:
    system = analytics()
    with client_of(system) as client:
        r = client.post(SQL, json={"sql": "SELECT current_setting('autoinstall_known_extensions') AS i,"
                                          " current_setting('autoload_known_extensions') AS l"})
        assert r.status_code == 200 and r.json()["rows"] == [{"i": False, "l": False}]
        refused = {
            "SELECT * FROM read_csv_auto('http://127.0.0.1:9/x.csv')": "file and network access",
            "SELECT * FROM read_parquet('s3://bucket/x.parquet')": "file and network access",
            "INSTALL httpfs": "extensions cannot be loaded",
            "FORCE INSTALL spatial": "extensions cannot be loaded",
            "LOAD httpfs": "extensions cannot be loaded",
            "SELECT ST_Point(1, 2)": "extensions are not installed or loaded here",
            "SELECT * FROM sqlite_scan('x.db', 't')": "extensions are not installed or loaded here",
        }
        for sql, why in refused.items():
            r = client.post(SQL, json={"sql": sql})
            assert r.status_code == 400 and why in r.json()["detail"], (sql, r.text)


# -- exports by name ------------------------------------------------------------------------
def test_exports_are_named_and_land_in_the_exports_directory(analytics: Any, tmp_path: Path) -> None:
    system = analytics()
    exports = system.settings.data_dir / "exports"
    with client_of(system) as client:
        r = client.post(EXPORT, json={"name": "q1-2026.v2"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "q1-2026.v2" and body["position"] == 31
        assert Path(body["directory"]) == (exports / "q1-2026.v2").resolve()
        files = sorted(p.name for p in (exports / "q1-2026.v2").iterdir())
        assert "manifest.json" in files and "fact_events.parquet" in files
        # recorded in the exports' ledger, where an erasure finds the files
        found = recorded_exports(system.analytics.config.exports_ledger)
        assert {p.name for p in found} == {f for f in files if f.endswith(".parquet")}

        outside = tmp_path / "outside"
        bad = {
            "../outside": "not a path", str(outside): "not a path", "a/b": "not a path",
            "a\\b": "not a path", "..": "'..' is not allowed", "a..b": "'..' is not allowed",
            "a\x00b": "control character U+0000", "a\nb": "control characters",
            ".": "letters, digits", ".hidden": "letters, digits", "": "at least 1 character",
            "x" * 101: "at most 100 characters",
        }
        for name, why in bad.items():
            r = client.post(EXPORT, json={"name": name})
            assert r.status_code == 422, (name, r.status_code)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["field"] == "name" and why in r.json()["detail"], (name, r.json())
        # the old form, a directory, is no longer taken
        r = client.post(EXPORT, json={"directory": str(outside)})
        assert r.status_code == 422 and r.json()["field"] in {"name", "directory"}
        # a symbolic link put in the exports directory does not lead out of it
        outside.mkdir()
        (exports / "link").symlink_to(outside)
        r = client.post(EXPORT, json={"name": "link"})
        assert r.status_code == 422 and r.json()["field"] == "name"
        assert "leads out of the exports directory" in r.json()["detail"]
        assert list(outside.iterdir()) == []
        assert sorted(p.name for p in exports.iterdir()) == ["link", "q1-2026.v2"]
        # a manager may query but not export
    with client_of(system, "manager") as client:
        assert client.post(EXPORT, json={"name": "mine"}).status_code == 403


def test_exports_directory_is_a_setting(analytics: Any, tmp_path: Path) -> None:
    system = analytics(analytics_exports_dir=tmp_path / "shared-exports")
    with client_of(system, "admin") as client:
        r = client.post(EXPORT, json={"name": "nightly"})
        assert r.status_code == 200, r.text
    assert (tmp_path / "shared-exports" / "nightly" / "manifest.json").exists()
    assert not (system.settings.data_dir / "exports").exists()


def test_crm_commands_export_by_name_and_keep_the_limits(analytics: Any, database_url: str) -> None:
    system = analytics()
    data_dir = system.settings.data_dir
    system.analytics.close()  # no process owns the file: the commands open it themselves
    env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_DATA_DIR": str(data_dir),
           "CRM_MASTER_KEY": "5e" * 32, "CRM_LOG_FORMAT": "console"}

    def crm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crm.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    out = crm("analytics", "export", "from-the-cli")
    assert out.returncode == 0, out.stderr
    assert str((data_dir / "exports" / "from-the-cli").resolve()) in out.stdout
    manifest = json.loads((data_dir / "exports" / "from-the-cli" / "manifest.json").read_text())
    assert manifest["position"] == 31
    out = crm("analytics", "export", "../escape")
    assert out.returncode == 2 and "not a path" in out.stderr
    assert not (data_dir / "escape").exists()
    out = crm("sql", "-f", "csv", "SELECT current_setting('autoinstall_known_extensions') AS i,"
                                  " current_setting('autoload_known_extensions') AS l")
    assert out.returncode == 0 and out.stdout.split() == ["i,l", "False,False"], out.stderr
    out = crm("sql", WIDE)
    assert out.returncode == 1 and "larger than 16 MiB" in out.stderr
    out = crm("sql", "SELECT 7 AS n")
    assert out.returncode == 0 and json.loads(out.stdout)["rows"] == [{"n": 7}]
