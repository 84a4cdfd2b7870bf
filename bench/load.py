"""Load test of the running system: ``.venv/bin/python -m bench.load [--rate R] [--duration S]``.

A throw-away PostgreSQL database is seeded (sales reps, their customers, an opportunity
each) through ``CommandService``; ``crm serve --workers N`` (uvicorn, projections running
in the parent process) is started on loopback against it; then a second process drives
it with a bounded async httpx load generator at a fixed rate (open loop: request *i* is
due at start + i/rate, and its latency is counted from then, so a slow server cannot
hide behind a slower client) for a fixed duration. The mix:

* 70 % reads: customer list (30), search by name (15), a customer (15), the
  opportunity list of a customer (10);
* 25 % writes: customer details changed with If-Match (10), an interaction logged
  (10), an opportunity moved to another stage with If-Match (5); a 409 is answered by
  re-reading the record and trying again (counted as conflicts, not errors);
* 5 % customer timelines.

Every user has a token of its own (several sales reps; the per-caller rate limit is set
high so it does not shape the load). During the run ``/ready`` is polled every 100 ms
for each read model's lag; after the load stops, until every lag is zero (the drain).
With ``--profile`` the server runs under ``py-spy record`` and the top frames are in
the report. The report goes to ``bench/reports/load-<timestamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
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
from typing import Any

from bench.write_throughput import environment, log, percentile, throwaway_database

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
    rate: float = 1000.0  # requests/s
    duration: float = 30.0  # seconds of load
    warmup: float = 5.0  # seconds at the same rate before, not counted
    workers: int = 2  # uvicorn worker processes
    users: int = 8  # sales reps, each with a token
    customers: int = 400  # seeded, spread over the users
    max_in_flight: int = 256  # the generator's bound on open requests
    profile: bool = False  # run the server under py-spy
    server: str | None = None
    embedded: bool = False


QUICK = Settings(rate=200.0, duration=10.0, warmup=2.0, customers=120)
FULL = Settings()


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


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base}/ready", timeout=2.0)
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
class DriveResult:
    outcomes: list[Outcome] = field(default_factory=list)
    lag_samples: list[tuple[float, int, float]] = field(default_factory=list)  # t, events, s
    drain_seconds: float | None = None
    sent_seconds: float = 0.0
    late: int = 0  # requests started more than 10 ms after they were due
    health_rate: float = 0.0  # closed-loop /health requests/s before the mix
    health_p50_ms: float = 0.0


async def _drive(config: dict[str, Any]) -> DriveResult:
    import httpx

    base, rate, duration, warmup = config["base"], config["rate"], config["duration"], config["warmup"]
    tokens: dict[str, str] = config["tokens"]
    records: dict[str, list[dict[str, Any]]] = config["records"]
    users = sorted(tokens)
    rng = random.Random(20261123)
    kinds = [k for k, w in MIX for _ in range(w)]
    result = DriveResult()
    limits = httpx.Limits(max_connections=config["max_in_flight"],
                          max_keepalive_connections=config["max_in_flight"])
    bound = asyncio.Semaphore(config["max_in_flight"])
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:

        async def call(kind: str, user: str, record: dict[str, Any]) -> tuple[int, int]:
            """One request of the mix; (final status, conflicts met)."""
            h = {"Authorization": f"Bearer {tokens[user]}"}
            cid = record["id"]
            if kind == "list":
                r = await client.get(f"/api/v1/customers?owner_id={user}&limit=20", headers=h)
            elif kind == "search":
                r = await client.get(f"/api/v1/customers?q={record['name'].split()[0]}&limit=20", headers=h)
            elif kind == "detail":
                r = await client.get(f"/api/v1/customers/{cid}/current", headers=h)
            elif kind == "opportunities":
                r = await client.get(f"/api/v1/opportunities?customer_id={cid}&limit=20", headers=h)
            elif kind == "timeline":
                r = await client.get(f"/api/v1/customers/{cid}/timeline", headers=h)
            elif kind == "log_interaction":
                r = await client.post("/api/v1/interactions", headers=h, json={
                    "customer_id": cid, "channel": "call", "direction": "outbound",
                    "subject": "Follow-up", "duration_minutes": 5})
            else:
                conflicts = 0
                for _ in range(5):
                    if kind == "change_details":
                        path, version_key = f"/api/v1/customers/{cid}", "version"
                        body = {"industry": f"industry {rng.randrange(1000)}"}
                        r = await client.patch(path, json=body, headers={
                            **h, "If-Match": f'"{record[version_key]}"'})
                    else:
                        path = f"/api/v1/opportunities/{record['opportunity']}"
                        version_key = "opportunity_version"
                        stage = rng.choice([s for s in STAGES if s != record["stage"]])
                        r = await client.post(f"{path}/stage", json={"stage": stage}, headers={
                            **h, "If-Match": f'"{record[version_key]}"'})
                        if r.status_code < 300:
                            record["stage"] = stage
                    if r.status_code != 409:
                        if r.status_code < 300 and "etag" in r.headers:
                            record[version_key] = int(r.headers["etag"].strip('"'))
                        return r.status_code, conflicts
                    conflicts += 1  # re-read the record, then try again on its version
                    current = await client.get(f"{path}/current", headers=h)
                    if current.status_code == 200:
                        record[version_key] = int(current.headers["etag"].strip('"'))
                        if kind == "change_stage":
                            record["stage"] = current.json().get("stage", record["stage"])
                return r.status_code, conflicts
            return r.status_code, 0

        async def one(due: float, counted: bool) -> None:
            kind = rng.choice(kinds)
            user = rng.choice(users)
            record = rng.choice(records[user])
            async with bound:
                sent = time.perf_counter()
                if sent - due > 0.010:
                    result.late += counted
                try:
                    status, conflicts = await call(kind, user, record)
                    error = None if status < 400 else f"HTTP {status}"
                except httpx.HTTPError as e:
                    status, conflicts, error = 0, 0, f"{type(e).__name__}: {e}"
                done = time.perf_counter()
            if counted:
                result.outcomes.append(Outcome(kind, status, done - due, done - sent, conflicts, error))

        stop_polling = asyncio.Event()
        started = time.perf_counter()

        async def poll_lag() -> None:
            while not stop_polling.is_set():
                try:
                    r = await client.get("/ready", timeout=5.0)
                    projections = r.json().get("projections", [])
                    events = max((p["lag_events"] for p in projections), default=0)
                    seconds = max((p["lag_seconds"] for p in projections), default=0.0)
                    result.lag_samples.append((time.perf_counter() - started, events, seconds))
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.1)

        # The ceiling of the HTTP stack on this machine, before the mix: /health (no
        # database, no token) as fast as 32 clients can ask for it, for a few seconds.
        health: list[float] = []
        ceiling_end = time.perf_counter() + config.get("ceiling_seconds", 3.0)

        async def ask_health() -> None:
            while time.perf_counter() < ceiling_end:
                t = time.perf_counter()
                r = await client.get("/health")
                if r.status_code == 200:
                    health.append(time.perf_counter() - t)

        t_ceiling = time.perf_counter()
        await asyncio.gather(*(ask_health() for _ in range(32)))
        result.health_rate = len(health) / (time.perf_counter() - t_ceiling)
        result.health_p50_ms = percentile(health, 50) * 1e3
        started = time.perf_counter()
        poller = asyncio.create_task(poll_lag())
        tasks: list[asyncio.Task[None]] = []
        total = int(rate * (warmup + duration))
        warm = int(rate * warmup)
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, i >= warm)))
        await asyncio.gather(*tasks)
        load_end = time.perf_counter()
        result.sent_seconds = load_end - (started + warmup)
        # the drain: until every read model has caught up with the log
        while time.perf_counter() - load_end < 60:
            r = await client.get("/ready", timeout=5.0)
            projections = r.json().get("projections", [])
            if projections and all(p["lag_events"] == 0 for p in projections):
                result.drain_seconds = time.perf_counter() - load_end
                break
            await asyncio.sleep(0.02)
        stop_polling.set()
        await poller
    return result


def drive_main(config_path: str, out_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    result = asyncio.run(_drive(config))
    Path(out_path).write_text(json.dumps(asdict(result)))


# -- profile summary --------------------------------------------------------------------------
def top_frames(raw_path: Path, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The frames most often on top of the stack (self) and anywhere in it (inclusive), in
    percent of the samples, from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in set(frames):
            anywhere[f] += k
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(n)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in anywhere.most_common(n)
                      if "threading.py" not in f and "<module>" not in f][:n],
    }


# -- the run --------------------------------------------------------------------------------------
def measure(settings: Settings) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="crm-load-") as tmp, \
            throwaway_database(settings.server, embedded_only=settings.embedded) as db:
        port = _free_port()
        env = _env(db.url, Path(tmp) / "data", port, settings.workers)
        log(f"seeding {settings.customers} customers of {settings.users} users")
        t0 = time.perf_counter()
        seeded = seed(env, settings)
        seed_seconds = time.perf_counter() - t0
        command = [sys.executable, "-m", "crm.cli", "serve", "--workers", str(settings.workers),
                   "--port", str(port)]
        profile_path = Path(tmp) / "server.pyspy"
        if settings.profile:
            pyspy = Path(sys.executable).with_name("py-spy")
            command = [str(pyspy), "record", "--subprocesses", "--nonblocking", "-r", "100", "-f", "raw",
                       "-o", str(profile_path), "--", *command]
        base = f"http://127.0.0.1:{port}"
        log(f"starting {' '.join(command[-6:])} on {base}")
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(Path(tmp) / "server.log", "wb"),  # noqa: SIM115
                                  start_new_session=True)
        try:
            _wait_ready(base, server)
            config = {"base": base, "rate": settings.rate, "duration": settings.duration,
                      "warmup": settings.warmup, "max_in_flight": settings.max_in_flight,
                      "tokens": seeded["tokens"], "records": seeded["records"]}
            config_path, out_path = Path(tmp) / "drive.json", Path(tmp) / "result.json"
            config_path.write_text(json.dumps(config))
            log(f"driving {settings.rate:.0f} requests/s for {settings.warmup:.0f}+"
                f"{settings.duration:.0f} s")
            load_during: list[float] = []
            driver = subprocess.Popen([sys.executable, "-m", "bench.load", "--drive",
                                       str(config_path), str(out_path)])
            while driver.poll() is None:
                load_during.append(os.getloadavg()[0])
                time.sleep(1.0)
            if driver.returncode != 0:
                raise RuntimeError(f"the load generator failed ({driver.returncode})")
            result = json.loads(out_path.read_text())
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        server_log = (Path(tmp) / "server.log").read_text(errors="replace")[-4000:]
        profile = top_frames(profile_path) if settings.profile and profile_path.exists() else None
        server_info = {"where": db.where, "version": db.server_version}
    return _document(settings, result, seeded["head"], seed_seconds, started_at, load_before,
                     load_during, profile, server_info, server_log)


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


def _document(settings: Settings, result: dict[str, Any], seeded_head: int | None, seed_seconds: float,
              started_at: datetime, load_before: tuple[float, float, float], load_during: list[float],
              profile: dict[str, Any] | None, server: dict[str, str], server_log: str) -> dict[str, Any]:
    outcomes = result["outcomes"]
    by_kind = {k: _stats([o for o in outcomes if o["kind"] == k]) for k, _ in MIX}
    overall = _stats(outcomes)
    errors = Counter(o["error"] for o in outcomes if o["error"])
    lag = result["lag_samples"]
    doc = {
        "benchmark": "load",
        "started_at": started_at.isoformat(timespec="seconds"),
        "settings": asdict(settings) | {"server": None},
        "environment": environment(server),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "during_1min_mean": round(statistics.mean(load_during), 2) if load_during else None},
        "seeded": {"events": seeded_head, "seconds": round(seed_seconds, 1)},
        "achieved_rate": round(len(outcomes) / result["sent_seconds"], 1) if result["sent_seconds"] else None,
        "late_starts": result["late"],
        "ceiling": {"health_requests_per_second": round(result["health_rate"], 1),
                    "health_p50_ms": round(result["health_p50_ms"], 2)},
        "overall": overall,
        "reads": _stats([o for o in outcomes if o["kind"] not in WRITES]),
        "writes": _stats([o for o in outcomes if o["kind"] in WRITES]),
        "by_kind": by_kind,
        "errors": dict(errors.most_common(10)),
        "lag": {
            "samples": len(lag),
            "max_events": max((s[1] for s in lag), default=None),
            "p99_events": percentile([float(s[1]) for s in lag], 99) if lag else None,
            "max_seconds": max((s[2] for s in lag), default=None),
            "drain_seconds": None if result["drain_seconds"] is None else round(result["drain_seconds"], 3),
        },
        "goals": {"rate": 1000, "p99_ms": 50, "errors": 0, "drain_seconds": 1.0},
        "profile": profile,
    }
    if errors:
        doc["server_log_tail"] = server_log
    return doc


def markdown(doc: dict[str, Any]) -> str:
    s, o, lag = doc["settings"], doc["overall"], doc["lag"]
    la = doc["load_average"]
    lines = [
        f"# Load test ({doc['started_at']})", "",
        f"`crm serve --workers {s['workers']}` on loopback, {s['users']} users with their own "
        f"tokens, {doc['seeded']['events']:,} events seeded; {s['rate']:.0f} requests/s offered for "
        f"{s['duration']:.0f} s after {s['warmup']:.0f} s of warm-up (at most {s['max_in_flight']} "
        f"in flight); latency from the time each request was due. Load average before "
        f"{la['before'][0]:.1f}, during {la['during_1min_mean']}.", "",
        "| | requests | p50 ms | p95 ms | p99 ms | max ms | errors | 409 re-tried |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, st in (("all", o), ("reads", doc["reads"]), ("writes", doc["writes"]),
                      *doc["by_kind"].items()):
        lines.append(f"| {label} | {st['requests']:,} | {st['p50_ms']} | {st['p95_ms']} | {st['p99_ms']} "
                     f"| {st['max_ms']} | {st['errors']} | {st['conflicts']} |")
    lines += [
        "",
        f"Achieved {doc['achieved_rate']} requests/s (goal 1,000 with p99 < 50 ms and no errors); "
        f"{doc['late_starts']} requests started more than 10 ms late. The HTTP stack's ceiling in "
        f"the same run: {doc['ceiling']['health_requests_per_second']:,.0f} requests/s of `/health` "
        f"(32 clients, closed loop, p50 {doc['ceiling']['health_p50_ms']} ms). Projection lag during the run: "
        f"max {lag['max_events']} events / {lag['max_seconds']} s; drained "
        f"{lag['drain_seconds']} s after the load stopped (goal 1 s).",
    ]
    if doc["errors"]:
        lines += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in doc["errors"].items())]
    if doc.get("profile"):
        lines += ["", "Server profile (py-spy, all worker processes, % of samples):", "",
                  "| self | % | inclusive | % |", "|---|---:|---|---:|"]
        own, incl = doc["profile"]["self"], doc["profile"]["inclusive"]
        for i in range(max(len(own), len(incl))):
            a = own[i] if i < len(own) else ("", "")
            b = incl[i] if i < len(incl) else ("", "")
            lines.append(f"| `{a[0]}` | {a[1]} | `{b[0]}` | {b[1]} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--drive", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="200 requests/s for 10 s")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--profile", action="store_true", help="run the server under py-spy")
    parser.add_argument("--server", help="maintenance URL of the PostgreSQL server")
    args = parser.parse_args(argv)
    if args.drive:
        drive_main(*args.drive)
        return 0
    settings = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("rate", "duration", "workers", "users", "customers", "server")
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
