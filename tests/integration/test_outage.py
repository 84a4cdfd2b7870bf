"""A database outage under a running `crm serve`: reads and writes answer 503 with
Retry-After within a bound, /ready says "not ready" at once, /health stays alive, and the
service resumes by itself when the database is back."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from api.auth import JwtSettings, TokenIssuer
from tests.conftest import JWT_SECRET
from tests.integration.test_erasure import drop_database, fresh_database
from tests.integration.test_projection_ops import ROOT, crm_command, crm_env

pytestmark = pytest.mark.postgres

C = "/api/v1/customers"
#: Generous: the settings bound the wait to 2 s (pool checkout, connect); a loaded
#: machine may add to it.
OUTAGE_BOUND = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


def take_down(url: str) -> None:
    """No new connection to the database, and every open one cut."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def bring_back(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def outage_url(database_url: str) -> Iterator[str]:
    url = fresh_database(database_url, database_url.rsplit("/", 1)[1] + "_outage")
    yield url
    bring_back(url)
    drop_database(database_url, url)


def wait_for(base: str, path: str, status: int, proc: subprocess.Popen[bytes], timeout: float,
             **kwargs: object) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"crm serve exited with {proc.returncode}"
        try:
            r = httpx.get(f"{base}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]
            if r.status_code == status:
                return r
            last = (r.status_code, r.text[:300])
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{path} did not answer {status} within {timeout} s: {last!r}")


def timed(method: str, url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
    return r, time.monotonic() - started


def assert_unavailable(r: httpx.Response, elapsed: float) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["type"].endswith("/database-unavailable")
    assert elapsed < OUTAGE_BOUND, f"answered after {elapsed:.1f} s"


def test_outage_answers_503_quickly_and_service_resumes(outage_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(crm_command("serve", "--port", str(port)), cwd=ROOT,
                                env=crm_env(outage_url, tmp_path / "data"), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(base, "/health", 200, proc, 60)
        issuer = TokenIssuer(JwtSettings(secret=JWT_SECRET, issuer="crm-core", audience="crm-api"))
        headers = {"Authorization": f"Bearer {issuer.issue('rep-1', 'admin')}"}
        r = httpx.post(f"{base}{C}", json={"kind": "person", "name": "Before"}, headers=headers, timeout=30)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        wait_for(base, f"{C}/{cid}", 200, proc, 30, headers=headers)
        wait_for(base, "/ready", 200, proc, 30)

        take_down(outage_url)
        # Every kind of request, twice: the first may meet a cut connection, the second
        # waits for the pool (no connection can be made).
        for _ in range(2):
            assert_unavailable(*timed("GET", f"{base}{C}/{cid}", headers=headers))  # read model
            assert_unavailable(*timed("GET", f"{base}{C}/{cid}/current", headers=headers))  # event store
            assert_unavailable(*timed("POST", f"{base}{C}", headers=headers,
                                      json={"kind": "person", "name": "During"}))
        r, elapsed = timed("GET", f"{base}/ready")
        assert r.status_code == 503 and elapsed < 2.5, (r.status_code, elapsed, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        r, elapsed = timed("GET", f"{base}/health")
        assert r.status_code == 200 and elapsed < 1.0  # liveness only

        bring_back(outage_url)
        deadline = time.monotonic() + 60
        while True:
            r = httpx.post(f"{base}{C}", json={"kind": "person", "name": "After"}, headers=headers, timeout=30)
            if r.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 201, r.text
        after = r.json()["id"]
        wait_for(base, f"{C}/{after}", 200, proc, 60, headers=headers)
        assert httpx.get(f"{base}{C}/{cid}", headers=headers, timeout=10).json()["name"] == "Before"
        wait_for(base, "/ready", 200, proc, 60)
        with psycopg.connect(outage_url, autocommit=True) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT topic FROM crm_events WHERE topic = 'CustomerRegistered'").fetchall()]
        assert len(names) == 2  # the write refused during the outage was not stored
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("crm serve did not stop on SIGTERM") from None
