"""The one-page benchmark report: every figure beside the baseline or limit measured in
the same run, and their ratio; ``bench/report.md`` and ``bench/report.json``.

``summarize`` takes the documents of the single benchmarks (as ``bench.run`` collects
them; any may be missing) and returns rows of: item, our figure, what it is compared
with, that figure, the ratio, and the unit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPORT_MD = Path(__file__).resolve().parent / "report.md"
REPORT_JSON = Path(__file__).resolve().parent / "report.json"


def _row(item: str, figure: float | None, unit: str, against: str, other: float | None,
         ratio: float | None = None, note: str = "") -> dict[str, Any]:
    if ratio is None and figure is not None and other:
        ratio = figure / other
    return {"item": item, "figure": figure, "unit": unit, "against": against, "other": other,
            "ratio": None if ratio is None else round(ratio, 3), "note": note}


def _write_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for clients, case in doc["cases"].items():
        ours, base, limit = case["ours"]["median"], case["baseline"]["median"], case["limit"]["median"]
        per_tx = case["ours"].get("commands_per_transaction")
        cached = case["ours"].get("records_from_cache")
        note = "; ".join(n for n in (
            f"{per_tx} commands per transaction" if per_tx else "",
            f"{100 * cached:.0f} % of records from the cache" if cached is not None else "") if n)
        rows.append(_row(f"command append, {clients} client(s)", ours, "commands/s",
                         "eventsourcing default application", base, note=note))
        rows.append(_row(f"command append, {clients} client(s)", ours, "commands/s",
                         "limit: raw executemany", limit))
    return rows


def _catchup_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    sub, full = doc["subset"], doc["full"]
    rows = [
        _row(f"projection catch-up into PostgreSQL (customers, {sub['events']:,} events)",
             sub["ours"]["median"], "events/s", "eventsourcing ProjectionRunner",
             sub["baseline"]["median"]),
        _row(f"projection catch-up into PostgreSQL (customers, {sub['events']:,} events)",
             sub["ours"]["median"], "events/s", "limit: raw batched inserts", sub["limit"]["median"]),
        _row(f"customer list over the whole log ({full['events']:,} events)",
             full["events_per_second"], "events/s", "limit: raw batched inserts", sub["limit"]["median"]),
    ]
    every = doc.get("all_projections") or []
    if every:
        events = every[0]["events"]
        seconds = sum(r["seconds"] for r in every)
        baseline_rate = sub["baseline"]["median"]
        estimate = len(every) * events / baseline_rate if baseline_rate else None
        rows.append(_row(
            f"rebuild of all {len(every)} read models from {events:,} events", seconds, "s",
            "ProjectionRunner, estimated from its measured rate", estimate,
            ratio=(estimate / seconds) if estimate and seconds else None,
            note="ratio: times faster; " + ", ".join(
                f"{r['projection']} {r['events_per_second']:,.0f}/s" for r in every)))
    lag = doc.get("lag")
    if lag:
        rows.append(_row("read-model lag under writes, p99", lag["lag_p99_ms"], "ms",
                         "p50", lag["lag_p50_ms"],
                         note=f"{lag['commands_per_second']:.0f} commands/s"))
    return rows


def _analytics_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    c, k = doc["catch_up"], doc["kpi_queries"]
    rows = [_row(f"DuckDB catch-up ({c['duckdb']['events']:,} events)", c["duckdb"]["events_per_second"],
                 "events/s", "PostgreSQL customer list, same log", c["postgres_read_model"]["events_per_second"])]
    scan = k.get("scan_ms")
    for name, t in k["kpis"].items():
        rows.append(_row(f"KPI kpi_{name} on {k['events']:,} events", t["median_ms"], "ms",
                         "limit: plain scan of fact_events", scan,
                         note="star generated directly in DuckDB (SQL over range)"))
    return rows


def _kafka_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [_row(f"Kafka publication ({doc['log']['events']:,} events)", doc["ours_events_per_second"],
                 "events/s", "plain kafka-python producer, pre-encoded", doc["baseline_events_per_second"])]
    stall = doc.get("stall") or {}
    drain = stall.get("drain_seconds")
    if drain is not None:
        rows.append(_row("Kafka lag drained after a broker stall", drain, "s", "stall", stall.get("stall_seconds")))
    return rows


def _replay_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in doc["customers"]:
        rows.append(_row(f"as-of rebuild of a customer of {r['events']:,} events, p50", r["as_of"]["p50_ms"],
                         "ms", "eventsourcing repository.get, p50", r["baseline_repository_get"]["p50_ms"]))
        rows.append(_row(f"timeline first page, customer of {r['events']:,} events, p50",
                         r["timeline_page_100"]["first"]["p50_ms"], "ms", "last page, p50",
                         r["timeline_page_100"]["last"]["p50_ms"]))
    v = doc["verify"]
    rows.append(_row(f"audit verify ({v['events']:,} events)", v["events_per_second"], "events/s", "", None))
    return rows


def _load_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in doc["runs"]:
        w = run["workers"]
        ceilings = {c["label"].split(",")[0]: c for c in run["ceilings"]}
        bare = ceilings.get("bare FastAPI app", {}).get("requests_per_second")
        health = ceilings.get("crm", {}).get("requests_per_second")
        phases = run["phases"]
        best = max((p for p in phases if p["meets_goal"]), key=lambda p: p["rate"], default=None)
        top = phases[-1] if phases else None
        tried = ", ".join(f"{p['rate']:.0f}" for p in phases)
        rows.append(_row(f"read API (mixed load), highest rate meeting the goal, {w} workers",
                         best["rate"] if best else 0.0, "requests/s", "goal", 1000.0,
                         note=f"p99 < 50 ms, no errors, drained within 1 s; rates tried: {tried}"))
        if top is not None:
            o = top["overall"]
            rows.append(_row(f"read API (mixed load), achieved at {top['rate']:.0f}/s offered, {w} workers",
                             top["achieved_rate"], "requests/s", "HTTP ceiling: bare FastAPI app /health, closed loop",
                             bare, note=f"p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms, {o['errors']} errors"))
            rows.append(_row(f"read-model lag drained after {top['rate']:.0f}/s, {w} workers",
                             top["lag"]["drain_seconds"], "s", "goal", 1.0))
        rows.append(_row(f"our /health, closed loop, {w} workers", health, "requests/s",
                         "bare FastAPI app /health, closed loop", bare))
    return rows


SECTIONS = (("write", _write_rows), ("catchup", _catchup_rows), ("analytics", _analytics_rows),
            ("kafka", _kafka_rows), ("replay", _replay_rows), ("load", _load_rows))


def summarize(docs: dict[str, dict[str, Any]], *, quick: bool, started_at: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name, make in SECTIONS:
        if name in docs:
            rows.extend(make(docs[name]))
    return {"started_at": started_at, "quick": quick, "load_average": list(os.getloadavg()),
            "rows": rows, "benchmarks": docs}


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:,.2f}" if abs(x) >= 1 else f"{x:.3g}"


def markdown(summary: dict[str, Any]) -> str:
    la = summary["load_average"]
    lines = [
        f"# Benchmark report ({summary['started_at']}{', quick' if summary['quick'] else ''})", "",
        f"Every figure beside what it is compared with, measured in the same run. Load average at "
        f"the end: {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1/5/15 min) on {os.cpu_count()} CPUs.", "",
        "| item | ours | unit | compared with | its figure | ratio | note |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for r in summary["rows"]:
        lines.append(f"| {r['item']} | {_fmt(r['figure'])} | {r['unit']} | {r['against']} "
                     f"| {_fmt(r['other'])} | {_fmt(r['ratio'])} | {r['note']} |")
    lines.append("")
    return "\n".join(lines)


def write(summary: dict[str, Any], md_path: Path = REPORT_MD, json_path: Path = REPORT_JSON) -> None:
    import json

    md_path.write_text(markdown(summary))
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
