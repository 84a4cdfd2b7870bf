"""The one-page benchmark report, from small made-up benchmark documents (no benchmark
runs here: only the writer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report


def _docs() -> dict[str, dict[str, Any]]:
    def case(ours: float, base: float, limit: float) -> dict[str, Any]:
        return {"ours": {"median": ours, "commands_per_transaction": 12.5},
                "baseline": {"median": base}, "limit": {"median": limit}}

    timed = {"p50_ms": 2.0, "p95_ms": 3.0}
    return {
        "write": {"cases": {"1": case(500, 700, 50_000), "64": case(2000, 200, 50_000)}},
        "catchup": {
            "subset": {"events": 5000, "ours": {"median": 10_000}, "baseline": {"median": 500},
                       "limit": {"median": 14_000}},
            "full": {"events": 50_000, "events_per_second": 9000},
            "all_projections": [{"projection": "customers", "events": 50_000, "seconds": 5.0,
                                 "events_per_second": 10_000},
                                {"projection": "tasks", "events": 50_000, "seconds": 1.0,
                                 "events_per_second": 50_000}],
            "lag": {"lag_p99_ms": 60, "lag_p50_ms": 20, "commands_per_second": 480},
        },
        "analytics": {"catch_up": {"duckdb": {"events": 50_000, "events_per_second": 30_000},
                                   "postgres_read_model": {"events_per_second": 10_000}},
                      "kpi_queries": {"events": 500_000, "scan_ms": 20.0,
                                      "kpis": {"pipeline": {"median_ms": 40.0}}}},
        "kafka": {"log": {"events": 20_000}, "ours_events_per_second": 12_000,
                  "baseline_events_per_second": 24_000,
                  "stall": {"drain_seconds": 0.5, "stall_seconds": 5.0}},
        "replay": {"customers": [{"events": 10_000, "as_of": timed, "baseline_repository_get": timed,
                                  "timeline_page_100": {"first": timed, "last": timed}}],
                   "verify": {"events": 50_000, "events_per_second": 100_000}},
        "load": {"runs": [{
            "workers": 2,
            "ceilings": [{"label": "bare FastAPI app, GET /health", "requests_per_second": 4000.0},
                         {"label": "crm, GET /health", "requests_per_second": 3000.0}],
            "phases": [
                {"rate": 500.0, "achieved_rate": 499.0, "meets_goal": True, "lag": {"drain_seconds": 0.1},
                 "overall": {"p50_ms": 5.0, "p99_ms": 40.0, "errors": 0, "conflicts": 3}},
                {"rate": 1000.0, "achieved_rate": 990.0, "meets_goal": False, "lag": {"drain_seconds": 0.2},
                 "overall": {"p50_ms": 9.0, "p99_ms": 80.0, "errors": 0, "conflicts": 3}},
            ]}]},
    }


def test_every_item_stands_beside_its_comparison_with_the_ratio(tmp_path: Path) -> None:
    summary = report.summarize(_docs(), quick=True, started_at="2026-11-23T15:00:00")
    rows = {(r["item"], r["against"]): r for r in summary["rows"]}
    write64 = rows[("command append, 64 client(s)", "eventsourcing default application")]
    assert write64["ratio"] == 10.0 and "12.5 commands per transaction" in write64["note"]
    rebuild = rows[("rebuild of all 2 read models from 50,000 events",
                    "ProjectionRunner, estimated from its measured rate")]
    assert rebuild["figure"] == 6.0 and rebuild["other"] == 200.0 and rebuild["ratio"] == 33.333
    kpi = rows[("KPI kpi_pipeline on 500,000 events", "limit: plain scan of fact_events")]
    assert kpi["ratio"] == 2.0
    assert rows[("read API (mixed load), achieved at 1000/s offered, 2 workers",
                 "HTTP ceiling: bare FastAPI app /health, closed loop")]["ratio"] == 0.247
    assert rows[("read API (mixed load), highest rate meeting the goal, 2 workers", "goal")]["figure"] == 500.0
    assert rows[("our /health, closed loop, 2 workers", "bare FastAPI app /health, closed loop")]["ratio"] == 0.75
    assert {r["item"].split(" (")[0].split(",")[0] for r in summary["rows"]} >= {
        "command append", "projection catch-up into PostgreSQL", "DuckDB catch-up", "Kafka publication",
        "as-of rebuild of a customer of 10", "read API"}

    md_path, json_path = tmp_path / "report.md", tmp_path / "report.json"
    report.write(summary, md_path, json_path)
    md = md_path.read_text()
    assert "| command append, 64 client(s) | 2,000 | commands/s | eventsourcing default application " \
           "| 200 | 10.00 |" in md
    assert json.loads(json_path.read_text())["rows"] == summary["rows"]


def test_benchmarks_that_did_not_run_are_left_out() -> None:
    docs = _docs()
    summary = report.summarize({"kafka": docs["kafka"]}, quick=False, started_at="t")
    assert [r["item"] for r in summary["rows"]] == [
        "Kafka publication (20,000 events)", "Kafka lag drained after a broker stall"]
    assert "| — |" not in report.markdown(summary).split("Kafka publication")[1].splitlines()[0]
