"""Load test of the running system: ``.venv/bin/python -m bench.load [--rates R1,R2,..]
[--duration S] [--workers N1,N2,..] [--profile]``.

A throw-away PostgreSQL database is seeded (sales reps, their customers, an opportunity
each) through ``CommandService``; ``crm serve --workers N`` (uvicorn, projections running
in the parent process) is started on loopback against it; then a second process drives
it with a bounded async aiohttp load generator at each rate in turn (open loop: request
*i* is due at start + i/rate, and its latency is counted from then, so a slow server
cannot hide behind a slower client) for a fixed duration, stopping after the first rate
the server cannot keep up with (under 90 % of it achieved). The mix:

* 70 % reads: customer list (30), search by name (15), a customer (15), the
  opportunity list of a customer (10);
* 25 % writes: customer details changed with If-Match (10), an interaction logged
  (10), an opportunity moved to another stage with If-Match (5: one stage back or any
  stage forward, the moves the pipeline allows), each on a record with
  no other write of the generator in flight (as a person edits one record at a time);
  a 409 is answered by re-reading the record and trying again (counted as conflicts,
  not errors);
* 5 % customer timelines.

Every user has a token of its own (several sales reps; the per-caller rate limit is set
high so it does not shape the load). During the run ``/ready`` is polled every 100 ms
for each read model's lag; after the load stops, until every lag is zero (the drain).
Before the mix, the ceilings in the same run: 32 closed-loop clients of the same
generator on a bare FastAPI app served by uvicorn as ``crm serve`` serves (the HTTP
stack's limit, ``bench/bare_app.py``), on our ``/health`` and on one list read. The
cores used by each part (workers, the parent's read-model runners, PostgreSQL, the
generator, other processes, idle) are read from /proc at each rate.
With ``--profile`` ``py-spy record --gil`` samples the server's processes while the
generator runs (the ceilings and every rate): the top frames and the share of each part
are in the report, the raw samples beside it. The report goes to
``bench/reports/load-<timestamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from bench.write_throughput import environment, log, percentile, throwaway_database

T = TypeVar("T")
REPORTS = Path(__file__).resolve().parent / "reports"
MIX: tuple[tuple[str, int], ...] = (
    ("list", 30), ("search", 15), ("detail", 15), ("opportunities", 10),
    ("change_details", 10), ("log_interaction", 10), ("change_stage", 5),
    ("timeline", 5),
)
WRITES = {"change_details", "log_interaction", "change_stage"}
STAGES = ("qualification", "needs_analysis", "proposal", "negotiation")
NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken")


@dataclass(frozen=True)
class Settings:
    rates: tuple[float, ...] = (1000.0,)  # requests/s, one after the other (until one saturates)
    duration: float = 30.0  # seconds of load at each rate
    warmup: float = 5.0  # seconds at the same rate before, not counted
    workers: tuple[int, ...] = (2,)  # uvicorn worker processes; a server for each
    users: int = 8  # sales reps, each with a token
    customers: int = 400  # seeded, spread over the users
    max_in_flight: int = 256  # the generator's bound on open requests
    profile: bool = False  # run the server under py-spy
    server: str | None = None
    embedded: bool = False


QUICK = Settings(rates=(100.0, 200.0), duration=8.0, warmup=2.0, customers=120)
#: the sweep up to the goal; it stops after the first rate the server cannot keep up with
FULL = Settings(rates=(100.0, 200.0, 300.0, 400.0, 700.0, 1000.0), duration=20.0)


# -- seeding and serving ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(url: str, data_dir: Path, port: int, workers: int) -> dict[str, str]:
    return {
        **os.environ,
        "CRM_DATABASE_URL": url,
        "CRM_DATA_DIR": str(data_dir),
        "CRM_MASTER_KEY": secrets.token_hex(32),
        "CRM_JWT_SECRET": secrets.token_hex(32),
        "CRM_PORT": str(port),
        "CRM_WORKERS": str(workers),
        "CRM_LOG_LEVEL": "warning",
        "CRM_LOG_FORMAT": "json",
        # every user's own limit, far above what one user sends here
        "CRM_RATE_LIMIT_PER_SECOND": "100000",
        "CRM_RATE_LIMIT_BURST": "100000",
        "CRM_KAFKA_BOOTSTRAP_SERVERS": "",
        "CRM_ANALYTICS_ENABLED": "false",
        "CRM_AUTOMATION_ENABLED": "false",
    }


def seed(env: dict[str, str], settings: Settings) -> dict[str, Any]:
    """Users, their customers and an opportunity each; returns what the driver needs."""
    from commands import customer as cc
    from commands import opportunity as co
    from commands.application import Principal, Request
    from crm import bootstrap
    from crm.settings import Settings as CrmSettings

    crm_settings = CrmSettings.model_validate({k[4:].lower(): v for k, v in env.items()
                                               if k.startswith("CRM_")})
    system = bootstrap.build(crm_settings)
    try:
        users = [f"load-rep-{u}" for u in range(settings.users)]
        tokens = {u: system.tokens.issue(u, "sales_rep", ttl=timedelta(hours=2)) for u in users}
        records: dict[str, list[dict[str, Any]]] = {u: [] for u in users}
        lock = threading.Lock()

        def make(i: int) -> None:
            user = users[i % len(users)]
            principal = Principal(user, "sales_rep")
            name = f"{NAMES[i % len(NAMES)]} Load{i:05d}"
            customer = system.commands.execute(cc.RegisterCustomer(
                kind="person", name=name, owner_id=user,
                contacts=[cc.ContactIn(kind="email", value=f"load{i}.{secrets.token_hex(3)}@example.org")],
            ), Request(principal, correlation_id=f"seed-{i}"))
            opportunity = system.commands.execute(co.OpenOpportunity(
                customer_id=customer.id, title=f"Deal {i}", amount=Decimal(1000), currency="EUR",
                owner_id=user,
            ), Request(principal, correlation_id=f"seed-{i}"))
            with lock:
                records[user].append({"id": str(customer.id), "version": customer.version,
                                      "name": name, "opportunity": str(opportunity.id),
                                      "opportunity_version": opportunity.version,
                                      "stage": STAGES[0]})

        def make_all(k: int) -> None:
            for i in range(k, settings.customers, 8):
                make(i)

        threads = [threading.Thread(target=make_all, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        head = system.app.recorder.max_notification_id()
    finally:
        system.close()
    return {"tokens": tokens, "records": records, "head": head}


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 180.0, path: str = "/ready") -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base}{path}", timeout=2.0)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("the server did not become ready")


# -- the load generator (the second process) ---------------------------------------------------
@dataclass
class Outcome:
    kind: str
    status: int
    seconds: float  # from the time it was due
    service_seconds: float  # from the time it was sent
    conflicts: int = 0
    error: str | None = None


@dataclass
class Phase:
    """The mix at one rate."""

    rate: float
    outcomes: list[Outcome] = field(default_factory=list)
    lag_samples: list[tuple[float, int, float]] = field(default_factory=list)  # t, events, s
    drain_seconds: float | None = None
    sent_seconds: float = 0.0
    counted_from: float = 0.0  # time.time() when the counted part began, and ended
    counted_to: float = 0.0
    late: int = 0  # requests started more than 10 ms after they were due


@dataclass
class Ceiling:
    """A closed loop of 32 clients on one path, as fast as it answers."""

    label: str
    requests_per_second: float
    p50_ms: float


@dataclass
class DriveResult:
    phases: list[Phase] = field(default_factory=list)
    ceilings: list[Ceiling] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # versions as left


class _Client:
    """The load generator's HTTP client: aiohttp (httpx's AsyncClient costs ~8 ms of CPU a
    request here and became the bottleneck at ~120 requests/s; aiohttp ~0.5 ms)."""

    def __init__(self, base: str, max_connections: int):
        import aiohttp

        self.base = base
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections),
            timeout=aiohttp.ClientTimeout(total=30.0))

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      json_body: Any = None, timeout: float | None = None
                      ) -> tuple[int, dict[str, str], bytes]:
        import aiohttp

        data = None if json_body is None else json.dumps(json_body).encode()
        h = dict(headers or {})
        if data is not None:
            h["Content-Type"] = "application/json"
        async with self.session.request(
                method, self.base + path, headers=h, data=data,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None) as r:
            body = await r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}, body

    async def close(self) -> None:
        await self.session.close()


CLIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)


async def _drive(config: dict[str, Any]) -> DriveResult:
    import aiohttp

    errors: tuple[type[BaseException], ...] = (*CLIENT_ERRORS, aiohttp.ClientError)
    poll_errors: tuple[type[BaseException], ...] = (*errors, ValueError)
    base, duration, warmup = config["base"], config["duration"], config["warmup"]
    tokens: dict[str, str] = config["tokens"]
    records: dict[str, list[dict[str, Any]]] = config["records"]
    users = sorted(tokens)
    rng = random.Random(20261123)
    kinds = [k for k, w in MIX for _ in range(w)]
    result = DriveResult()
    bound = asyncio.Semaphore(config["max_in_flight"])
    client = _Client(base, config["max_in_flight"])
    try:
        get = client.request

        async def call(kind: str, user: str, record: dict[str, Any]) -> tuple[int, int]:
            """One request of the mix; (final status, conflicts met)."""
            h = {"Authorization": f"Bearer {tokens[user]}"}
            cid = record["id"]
            if kind == "list":
                r = await get("GET", f"/api/v1/customers?owner_id={user}&limit=20", h)
            elif kind == "search":
                r = await get("GET", f"/api/v1/customers?q={record['name'].split()[0]}&limit=20", h)
            elif kind == "detail":
                r = await get("GET", f"/api/v1/customers/{cid}/current", h)
            elif kind == "opportunities":
                r = await get("GET", f"/api/v1/opportunities?customer_id={cid}&limit=20", h)
            elif kind == "timeline":
                r = await get("GET", f"/api/v1/customers/{cid}/timeline", h)
            elif kind == "log_interaction":
                r = await get("POST", "/api/v1/interactions", h, {
                    "customer_id": cid, "channel": "call", "direction": "outbound",
                    "subject": "Follow-up", "duration_minutes": 5})
            else:
                conflicts = 0
                for _ in range(5):
                    if kind == "change_details":
                        path, version_key = f"/api/v1/customers/{cid}", "version"
                        body = {"industry": f"industry {rng.randrange(1000)}"}
                        r = await get("PATCH", path, {**h, "If-Match": f'"{record[version_key]}"'}, body)
                    else:
                        path = f"/api/v1/opportunities/{record['opportunity']}"
                        version_key = "opportunity_version"
                        at = STAGES.index(record["stage"])  # the pipeline's moves: one back, any forward
                        stage = rng.choice([*STAGES[max(at - 1, 0):at], *STAGES[at + 1:]])
                        r = await get("POST", f"{path}/stage", {**h, "If-Match": f'"{record[version_key]}"'},
                                      {"stage": stage})
                        if r[0] < 300:
                            record["stage"] = stage
                    if r[0] != 409:
                        if r[0] < 300 and "etag" in r[1]:
                            record[version_key] = int(r[1]["etag"].strip('"'))
                        return r[0], conflicts
                    conflicts += 1  # re-read the record, then try again on its version
                    current = await get("GET", f"{path}/current", h)
                    if current[0] == 200:
                        record[version_key] = int(current[1]["etag"].strip('"'))
                        if kind == "change_stage":
                            record["stage"] = json.loads(current[2]).get("stage", record["stage"])
                return r[0], conflicts
            return r[0], 0

        editing: set[str] = set()  # records with a write in flight

        async def one(phase: Phase, due: float, counted: bool) -> None:
            kind = rng.choice(kinds)
            user = rng.choice(users)
            record = rng.choice(records[user])
            if kind in WRITES:  # a person edits a record once at a time: another one if busy
                for _ in range(10):
                    if record["id"] not in editing:
                        break
                    record = rng.choice(records[user])
                editing.add(record["id"])
            try:
                await send(phase, kind, user, record, due, counted)
            finally:
                if kind in WRITES:
                    editing.discard(record["id"])

        async def send(phase: Phase, kind: str, user: str, record: dict[str, Any], due: float,
                       counted: bool) -> None:
            async with bound:
                sent = time.perf_counter()
                if sent - due > 0.010:
                    phase.late += counted
                try:
                    status, conflicts = await call(kind, user, record)
                    error = None if status < 400 else f"HTTP {status}"
                except errors as e:
                    status, conflicts, error = 0, 0, f"{type(e).__name__}: {e}"
                done = time.perf_counter()
            if counted:
                phase.outcomes.append(Outcome(kind, status, done - due, done - sent, conflicts, error))

        async def lag() -> tuple[int, float] | None:
            """The largest lag of the read models (events, seconds), or None before any."""
            status, _, body = await get("GET", "/ready", timeout=5.0)
            projections = json.loads(body).get("projections", [])
            if not projections:
                return None
            return (max(p["lag_events"] for p in projections),
                    max(p["lag_seconds"] for p in projections))

        async def closed_loop(label: str, url: str, seconds: float, headers: dict[str, str]) -> Ceiling:
            times: list[float] = []
            end = time.perf_counter() + seconds

            async def ask() -> None:
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    async with client.session.get(url, headers=headers) as r:
                        await r.read()
                        if r.status == 200:
                            times.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(ask() for _ in range(32)))
            return Ceiling(label, round(len(times) / (time.perf_counter() - t0), 1),
                           round(percentile(times, 50) * 1e3, 2))

        # The ceilings in the same run, before the mix: as fast as 32 clients can ask,
        # the bare ASGI app under the same uvicorn settings (the HTTP stack's limit on this
        # machine), our /health (no database, no token), and one authenticated list read.
        seconds = config.get("ceiling_seconds", 3.0)
        if config.get("bare_base"):
            result.ceilings.append(await closed_loop(
                "bare FastAPI app, GET /health", config["bare_base"] + "/health", seconds, {}))
        result.ceilings.append(await closed_loop("crm, GET /health", base + "/health", seconds, {}))
        user = users[0]
        result.ceilings.append(await closed_loop(
            "crm, GET /api/v1/customers (a list of 20)", f"{base}/api/v1/customers?owner_id={user}&limit=20",
            seconds, {"Authorization": f"Bearer {tokens[user]}"}))

        for rate in config["rates"]:
            phase = Phase(rate)
            result.phases.append(phase)
            stop_polling = asyncio.Event()
            started = time.perf_counter()

            async def poll_lag(phase: Phase, started: float, stop: asyncio.Event) -> None:
                while not stop.is_set():
                    try:
                        seen = await lag()
                        if seen is not None:
                            phase.lag_samples.append((time.perf_counter() - started, *seen))
                    except poll_errors:
                        pass
                    await asyncio.sleep(0.1)

            poller = asyncio.create_task(poll_lag(phase, started, stop_polling))
            tasks: list[asyncio.Task[None]] = []
            total = int(rate * (warmup + duration))
            warm = int(rate * warmup)
            for i in range(total):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(phase, due, i >= warm)))
            await asyncio.gather(*tasks)
            load_end = time.perf_counter()
            phase.sent_seconds = load_end - (started + warmup)
            phase.counted_to = time.time()
            phase.counted_from = phase.counted_to - phase.sent_seconds
            # the drain: until every read model has caught up with the log
            while time.perf_counter() - load_end < 60:
                seen = await lag()
                if seen is not None and seen[0] == 0:
                    phase.drain_seconds = time.perf_counter() - load_end
                    break
                await asyncio.sleep(0.02)
            stop_polling.set()
            await poller
            if len(phase.outcomes) < 0.9 * rate * phase.sent_seconds:
                break  # saturated: a higher rate would only queue longer
            await asyncio.sleep(1.0)  # let the server settle before the next rate
    finally:
        await client.close()
    result.records = records
    return result


def drive_main(config_path: str, out_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    result = asyncio.run(_drive(config))
    Path(out_path).write_text(json.dumps(asdict(result)))


_BOILERPLATE = ("threading.py", "<module>", "multiprocessing/", "uvicorn/_", "uvicorn/server.py",
                "uvicorn/supervisors", "asyncio/runners.py", "anyio/_backends", "sniffio")


# -- profile summary --------------------------------------------------------------------------
#: Where a sample is, by the first of these found in its stack (py-spy frame text).
PARTS = (
    ("read models (projection runners)", ("projections/runner.py", "projections/service.py")),
    ("endpoints (route code in the threadpool)", ("_run_sync_endpoint",)),
    ("authentication (dependencies)", ("solve_dependencies",)),
    ("HTTP stack (uvicorn, middleware, routing)", ("run_asgi", "data_received", "httptools_impl")),
)


def top_frames(raw_path: Path, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The frames most often on top of the stack (self) and anywhere in it (inclusive), in
    percent of the samples, from py-spy's raw (collapsed) output; and the share of each
    of ``PARTS``."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    endpoints: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [f for f in stack.split(";") if not f.startswith(("process ", " spawn_main"))]
        if not frames:
            continue
        own[frames[-1]] += k
        for f in set(frames):
            anywhere[f] += k
        part = next((name for name, marks in PARTS if any(m in stack for m in marks)), "other")
        parts[part] += k
        at = next((i for i, f in enumerate(frames) if f.startswith("_run_sync_endpoint")), None)
        if at is not None and at + 1 < len(frames):
            endpoints[frames[at + 1].split(" (")[0]] += k
    if not total:
        return {"self": [], "inclusive": [], "parts": [], "endpoints": []}
    return {
        "parts": [(f, round(100 * c / total, 1)) for f, c in parts.most_common()],
        "endpoints": [(f, round(100 * c / total, 1)) for f, c in endpoints.most_common(10)],
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(n)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in anywhere.most_common(4 * n)
                      if not any(b in f for b in _BOILERPLATE)][:n],
    }


# -- where the CPU goes -------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_snapshot(server: int, driver: int, bare: int) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each process, with its part: the server's workers and
    its parent process (the read models' runners), PostgreSQL, the load generator, the
    bare app, everything else; and the machine's idle time as pid 0 (from /proc; Linux)."""
    procs: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        procs[int(entry)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)

    def root_of(pid: int) -> int | None:
        for _ in range(64):
            if pid in (server, driver, bare):
                return pid
            if pid <= 1 or pid not in procs:
                return None
            pid = procs[pid][1]
        return None

    out: dict[int, tuple[str, float]] = {}
    for pid, (comm, _, used) in procs.items():
        root = root_of(pid)
        if root == server:
            part = "crm workers" if pid != server else "crm parent (read models)"
        elif root == driver:
            part = "load generator"
        elif root == bare:
            part = "bare app"
        elif comm == "postgres":
            part = "PostgreSQL"
        else:
            part = "other processes"
        out[pid] = (part, used)
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    out[0] = ("idle", (int(cpu[3]) + int(cpu[4])) / _TICK)
    return out


def _cpu_between(samples: list[tuple[float, dict[int, tuple[str, float]]]], start: float,
                 end: float) -> dict[str, float]:
    """Cores used by each part between two times (the samples nearest inside them); a
    process that began between them counts from its start, one that ended is left out."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return {}
    (t0, a), (t1, b) = inside[0], inside[-1]
    used: Counter[str] = Counter()
    for pid, (part, seconds) in b.items():
        used[part] += max(0.0, seconds - (a[pid][1] if pid in a else 0.0))
    return {k: round(v / (t1 - t0), 2) for k, v in used.items()}


# -- the run --------------------------------------------------------------------------------------
def _start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "wb"),  # noqa: SIM115
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run_workers(settings: Settings, workers: int, env: dict[str, str], tmp: Path,
                 seeded: dict[str, Any]) -> dict[str, Any]:
    """One server with ``workers`` processes (and the bare app beside it) through every rate."""
    port, bare_port = _free_port(), _free_port()
    env = env | {"CRM_PORT": str(port), "CRM_WORKERS": str(workers)}
    command = [sys.executable, "-m", "crm.cli", "serve", "--workers", str(workers), "--port", str(port)]
    profile_path = tmp / f"server-{workers}.pyspy"
    base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    log(f"starting {' '.join(command[-6:])} on {base}, the bare app on {bare_base}")
    log_path = tmp / f"server-{workers}.log"
    server = _start(command, env, log_path)
    bare = _start([sys.executable, "-m", "bench.bare_app", str(bare_port), str(workers)], env,
                  tmp / f"bare-{workers}.log")
    try:
        _wait_ready(base, server)
        _wait_ready(bare_base, bare, path="/health")
        config = {"base": base, "bare_base": bare_base, "rates": list(settings.rates),
                  "duration": settings.duration, "warmup": settings.warmup,
                  "max_in_flight": settings.max_in_flight,
                  "tokens": seeded["tokens"], "records": seeded["records"]}
        config_path, out_path = tmp / "drive.json", tmp / "result.json"
        config_path.write_text(json.dumps(config))
        log(f"driving {', '.join(f'{r:.0f}' for r in settings.rates)} requests/s, each for "
            f"{settings.warmup:.0f}+{settings.duration:.0f} s, {workers} worker(s)")
        load_during: list[float] = []
        driver = subprocess.Popen([sys.executable, "-m", "bench.load", "--drive",
                                   str(config_path), str(out_path)])
        profiler = None
        if settings.profile:  # the server's processes while the mix runs (not its start-up)
            pyspy = Path(sys.executable).with_name("py-spy")
            profiler = subprocess.Popen(
                [str(pyspy), "record", "--pid", str(server.pid), "--subprocesses", "--nonblocking",
                 "--gil", "-r", "100", "-f", "raw", "-o", str(profile_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu_samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        while driver.poll() is None:
            load_during.append(os.getloadavg()[0])
            cpu_samples.append((time.time(), _cpu_snapshot(server.pid, driver.pid, bare.pid)))
            time.sleep(0.5)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        if driver.returncode != 0:
            raise RuntimeError(f"the load generator failed ({driver.returncode})")
        result: dict[str, Any] = json.loads(out_path.read_text())
    finally:
        _stop(bare)
        _stop(server)
    result["workers"] = workers
    seeded["records"] = result.pop("records")  # the next server's run starts from these versions
    for phase in result["phases"]:
        phase["cpu_cores"] = _cpu_between(cpu_samples, phase["counted_from"], phase["counted_to"])
    result["load_during_1min_mean"] = round(statistics.mean(load_during), 2) if load_during else None
    result["profile"] = top_frames(profile_path) if settings.profile and profile_path.exists() else None
    if result["profile"] is not None:  # the raw samples beside the report, for a closer look
        REPORTS.mkdir(parents=True, exist_ok=True)
        kept = REPORTS / f"load-profile-{datetime.now().strftime('%Y%m%d-%H%M%S')}-w{workers}.txt"
        shutil.copyfile(profile_path, kept)
        result["profile"]["raw"] = str(kept.relative_to(REPORTS.parent.parent))
    result["server_log_tail"] = log_path.read_text(errors="replace")[-4000:]
    return result


def measure(settings: Settings) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="crm-load-") as tmp, \
            throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        env = _env(db.url, Path(tmp) / "data", 0, 1)
        log(f"seeding {settings.customers} customers of {settings.users} users")
        t0 = time.perf_counter()
        seeded = seed(env, settings)
        seed_seconds = time.perf_counter() - t0
        runs = [_run_workers(settings, w, env, Path(tmp), seeded) for w in settings.workers]
        server_info = {"where": db.where, "version": db.server_version}
    return _document(settings, runs, seeded["head"], seed_seconds, started_at, load_before, server_info)


def _stats(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [o["seconds"] for o in outcomes]
    return {
        "requests": len(outcomes),
        "p50_ms": round(percentile(secs, 50) * 1e3, 1),
        "p95_ms": round(percentile(secs, 95) * 1e3, 1),
        "p99_ms": round(percentile(secs, 99) * 1e3, 1),
        "max_ms": round(max(secs, default=float("nan")) * 1e3, 1),
        "errors": sum(1 for o in outcomes if o["error"]),
        "conflicts": sum(o["conflicts"] for o in outcomes),
    }


GOALS = {"rate": 1000, "p99_ms": 50, "errors": 0, "drain_seconds": 1.0}


def _phase_doc(phase: dict[str, Any]) -> dict[str, Any]:
    outcomes = phase["outcomes"]
    lag = phase["lag_samples"]
    overall = _stats(outcomes)
    achieved = round(len(outcomes) / phase["sent_seconds"], 1) if phase["sent_seconds"] else None
    drain = None if phase["drain_seconds"] is None else round(phase["drain_seconds"], 3)
    return {
        "rate": phase["rate"],
        "achieved_rate": achieved,
        "late_starts": phase["late"],
        "overall": overall,
        "reads": _stats([o for o in outcomes if o["kind"] not in WRITES]),
        "writes": _stats([o for o in outcomes if o["kind"] in WRITES]),
        "by_kind": {k: _stats([o for o in outcomes if o["kind"] == k]) for k, _ in MIX},
        "errors": dict(Counter(o["error"] for o in outcomes if o["error"]).most_common(10)),
        "lag": {
            "samples": len(lag),
            "max_events": max((s[1] for s in lag), default=None),
            "p99_events": percentile([float(s[1]) for s in lag], 99) if lag else None,
            "max_seconds": max((s[2] for s in lag), default=None),
            "drain_seconds": drain,
        },
        "cpu_cores": phase.get("cpu_cores", {}),
        "meets_goal": bool(overall["p99_ms"] < GOALS["p99_ms"] and overall["errors"] == 0
                           and achieved is not None and achieved >= 0.98 * phase["rate"]
                           and drain is not None and drain <= GOALS["drain_seconds"]),
    }


def _document(settings: Settings, runs: list[dict[str, Any]], seeded_head: int | None, seed_seconds: float,
              started_at: datetime, load_before: tuple[float, float, float],
              server: dict[str, str]) -> dict[str, Any]:
    out_runs = []
    for run in runs:
        phases = [_phase_doc(p) for p in run["phases"]]
        doc_run: dict[str, Any] = {
            "workers": run["workers"],
            "load_during_1min_mean": run["load_during_1min_mean"],
            "ceilings": run["ceilings"],
            "phases": phases,
            "best_rate_meeting_goal": max((p["rate"] for p in phases if p["meets_goal"]), default=None),
            "profile": run["profile"],
        }
        if any(p["errors"] for p in phases):
            doc_run["server_log_tail"] = run["server_log_tail"]
        out_runs.append(doc_run)
    return {
        "benchmark": "load",
        "started_at": started_at.isoformat(timespec="seconds"),
        "settings": asdict(settings) | {"server": None},
        "environment": environment(server),
        "load_average_before": [round(x, 2) for x in load_before],
        "seeded": {"events": seeded_head, "seconds": round(seed_seconds, 1)},
        "goals": GOALS,
        "runs": out_runs,
    }


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        f"# Load test ({doc['started_at']})", "",
        f"`crm serve` on loopback, {s['users']} users with their own tokens, "
        f"{doc['seeded']['events']:,} events seeded; each rate offered for {s['duration']:.0f} s after "
        f"{s['warmup']:.0f} s of warm-up (open loop, at most {s['max_in_flight']} in flight; latency from "
        f"the time each request was due), by an aiohttp generator in a second process on the same "
        f"2 cores. Load average before {doc['load_average_before'][0]:.1f}. Goal: "
        f"{GOALS['rate']:,} requests/s with p99 < {GOALS['p99_ms']} ms, no errors, lag drained within "
        f"{GOALS['drain_seconds']:.0f} s.", "",
    ]
    for run in doc["runs"]:
        w = run["workers"]
        lines += [f"## {w} worker{'s' if w > 1 else ''}", "",
                  "Ceilings (32 clients, closed loop, same generator, same run):", "",
                  "| | requests/s | p50 ms | vs the bare app |", "|---|---:|---:|---:|"]
        bare = next((c["requests_per_second"] for c in run["ceilings"] if c["label"].startswith("bare")), None)
        for c in run["ceilings"]:
            ratio = f"{c['requests_per_second'] / bare:.2f}" if bare else ""
            lines.append(f"| {c['label']} | {c['requests_per_second']:,.0f} | {c['p50_ms']} | {ratio} |")
        lines += ["", "The mix at each rate:", "",
                  "| offered /s | achieved /s | p50 ms | p95 ms | p99 ms | max ms | errors | 409 re-tried "
                  "| late starts | max lag (events / s) | drained in s | goal met |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
        for p in run["phases"]:
            o, lag = p["overall"], p["lag"]
            lines.append(
                f"| {p['rate']:.0f} | {p['achieved_rate']} | {o['p50_ms']} | {o['p95_ms']} | {o['p99_ms']} "
                f"| {o['max_ms']} | {o['errors']} | {o['conflicts']} | {p['late_starts']} "
                f"| {lag['max_events']} / {lag['max_seconds']} | {lag['drain_seconds']} "
                f"| {'yes' if p['meets_goal'] else 'no'} |")
        parts = ("crm workers", "crm parent (read models)", "PostgreSQL", "load generator", "other processes", "idle")
        lines += ["", "Where the 2 cores went at each rate (cores busy, from /proc):", "",
                  "| offered /s | " + " | ".join(parts) + " |", "|---:|" + "---:|" * len(parts)]
        for p in run["phases"]:
            lines.append(f"| {p['rate']:.0f} | " + " | ".join(str(p["cpu_cores"].get(k, "")) for k in parts) + " |")
        lines += ["", f"Highest rate meeting the goal: {run['best_rate_meeting_goal'] or 'none'}"
                      f" (load average during: {run['load_during_1min_mean']}).", ""]
        top = run["phases"][-1] if run["phases"] else None
        if top:
            lines += [f"By kind at {top['rate']:.0f}/s:", "",
                      "| | requests | p50 ms | p95 ms | p99 ms | max ms | errors | 409 re-tried |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for label, st in (("reads", top["reads"]), ("writes", top["writes"]), *top["by_kind"].items()):
                lines.append(f"| {label} | {st['requests']:,} | {st['p50_ms']} | {st['p95_ms']} | "
                             f"{st['p99_ms']} | {st['max_ms']} | {st['errors']} | {st['conflicts']} |")
            lines.append("")
        for p in run["phases"]:
            if p["errors"]:
                lines.append(f"Errors at {p['rate']:.0f}/s: "
                             + "; ".join(f"{k}: {v}" for k, v in p["errors"].items()))
        if run.get("profile"):
            lines += ["", "Server profile (py-spy --gil: samples holding the GIL, all worker processes, "
                      "while the generator ran, % of samples):", ""]
            lines.append("; ".join(f"{name} {share} %" for name, share in run["profile"].get("parts", [])))
            lines += ["", "Endpoints: " + "; ".join(f"`{name}` {share} %"
                                                 for name, share in run["profile"].get("endpoints", []))]
            lines += ["", "| self | % | inclusive | % |", "|---|---:|---|---:|"]
            own, incl = run["profile"]["self"], run["profile"]["inclusive"]
            for i in range(max(len(own), len(incl))):
                a = own[i] if i < len(own) else ("", "")
                b = incl[i] if i < len(incl) else ("", "")
                lines.append(f"| `{a[0]}` | {a[1]} | `{b[0]}` | {b[1]} |")
        lines.append("")
    return "\n".join(lines)


def _numbers(kind: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    def parse(text: str) -> tuple[T, ...]:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--drive", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="200 requests/s for 10 s")
    parser.add_argument("--rate", "--rates", dest="rates", type=_numbers(float),
                        help="requests/s; several (200,400,700,1000) sweep them one after the other")
    parser.add_argument("--duration", type=float, help="seconds at each rate")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each rate")
    parser.add_argument("--workers", type=_numbers(int), help="worker processes; several: a server for each")
    parser.add_argument("--users", type=int)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--profile", action="store_true", help="run the server under py-spy")
    parser.add_argument("--server", help="maintenance URL of the PostgreSQL server")
    args = parser.parse_args(argv)
    if args.drive:
        drive_main(*args.drive)
        return 0
    settings = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("rates", "duration", "warmup", "workers", "users", "customers",
                                               "server")
                 if getattr(args, k) is not None}
    settings = Settings(**(asdict(settings) | overrides | {"profile": args.profile}))
    doc = measure(settings)
    md = markdown(doc)
    REPORTS.mkdir(parents=True, exist_ok=True)
    stem = REPORTS / f"load-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
