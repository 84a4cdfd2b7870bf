"""`crm serve` on the embedded PostgreSQL as real processes: a server killed with SIGKILL
does not keep the embedded server alive for good, a second server on the same data
directory is refused, and SIGTERM ends the process within its bound whatever the
database does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.test_outage import free_port
from tests.integration.test_projection_ops import ROOT, crm_command

pytestmark = pytest.mark.postgres

#: CRM_SHUTDOWN_TIMEOUT_SECONDS is 8; the brief bound a stop must keep is 10 s.
STOP_BOUND = 10.0


def serve_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({"CRM_DATA_DIR": str(data_dir), "CRM_LOG_FORMAT": "json", "CRM_LOG_LEVEL": "info",
                "CRM_DB_POOL_SIZE": "2"})
    return env


class Serve:
    def __init__(self, data_dir: Path, name: str):
        self.port = free_port()
        self.log = data_dir.parent / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(crm_command("serve", "--port", str(self.port)), cwd=ROOT,
                                         env=serve_env(data_dir), stdout=out, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"crm serve exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"crm serve did not come up: {self.log.read_text()[-3000:]}")

    def stop(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("crm serve did not stop within 60 s of SIGTERM") from None
        return code, time.monotonic() - started


def postmaster(data_dir: Path) -> psutil.Process | None:
    try:
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
        proc = psutil.Process(pid)
    except (OSError, ValueError, psutil.Error):
        return None
    return proc if proc.status() != psutil.STATUS_ZOMBIE else None


def servers_of(data_dir: Path) -> list[psutil.Process]:
    """Every postgres process whose command line names this data directory."""
    pgdata = str((data_dir / "postgres").resolve())
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and pgdata in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def gone_within(proc: psutil.Process, seconds: float) -> bool:
    try:
        proc.wait(seconds)
    except psutil.TimeoutExpired:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    return True


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: a pytest session started meanwhile makes its parent
    # 0700 again, and the embedded server runs as a user of its own when we are root.
    root = Path(tempfile.mkdtemp(prefix="crm-life-"))
    path = root / "data"
    yield path
    for proc in servers_of(path):  # nothing left behind, whatever the test did
        try:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except psutil.Error:
            pass
    shutil.rmtree(root, ignore_errors=True)


def test_killed_server_then_a_graceful_stop_stops_the_embedded_postgres(data_dir: Path) -> None:
    first = Serve(data_dir, "first")
    first.wait_healthy()
    server = postmaster(data_dir)
    assert server is not None
    first.proc.kill()  # SIGKILL: its PID stays in the wheel's handle file
    first.proc.wait()
    assert server.is_running()  # nobody stopped it

    second = Serve(data_dir, "second")
    second.wait_healthy()
    assert postmaster(data_dir) is not None and postmaster(data_dir).pid == server.pid  # adopted
    assert "forgot handles of processes that are gone" in second.log.read_text()

    # A second server on the same data directory is refused, with the reason.
    third = Serve(data_dir, "third")
    assert third.proc.wait(timeout=60) != 0
    out = third.log.read_text()
    assert "crm.lock" in out and f"pid {second.proc.pid}" in out, out
    assert httpx.get(f"http://127.0.0.1:{second.port}/health", timeout=5).status_code == 200

    code, seconds = second.stop()
    assert code == 0, second.log.read_text()[-3000:]
    assert seconds < STOP_BOUND
    assert gone_within(server, 10), "the embedded postgres is still running"
    assert servers_of(data_dir) == []
    assert "embedded postgres stopped" in second.log.read_text()


def test_sigterm_ends_the_server_in_time_when_the_database_hangs(data_dir: Path) -> None:
    serve = Serve(data_dir, "serve")
    serve.wait_healthy()
    server = postmaster(data_dir)
    assert server is not None
    server.suspend()  # SIGSTOP: no new connection is answered, pg_ctl stop waits for good
    try:
        code, seconds = serve.stop()
    finally:
        server.resume()
    assert seconds < STOP_BOUND, f"took {seconds:.1f} s: {serve.log.read_text()[-3000:]}"
    # pg_ctl stop waits for the stopped server: the watchdog ends the process (its
    # handle taken out on the way); the next server starts, and stops the postgres.
    assert "stop took too long: exiting now" in serve.log.read_text()
    again = Serve(data_dir, "again")
    again.wait_healthy()
    code, _ = again.stop()
    assert code == 0
    assert gone_within(server, 10)
    assert servers_of(data_dir) == []
