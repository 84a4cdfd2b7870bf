"""Run the benchmarks and write a report: ``.venv/bin/python -m bench.run [--quick] [--only NAME]``.

The one-page report of what ran -- each figure beside the baseline or limit measured in
the same run, and the ratio -- goes to ``bench/report.md`` and ``bench/report.json``;
each benchmark's own report to ``bench/reports/`` (git-ignored) as Markdown and JSON,
and its Markdown is printed. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from bench import (
    analytics_catchup,
    kafka_publish,
    load,
    projection_catchup,
    replay_audit,
    report,
    write_throughput,
)

REPORTS = Path(__file__).resolve().parent / "reports"
#: --only names -> (report file stem, what it measures)
BENCHMARKS = {
    "write": ("write_throughput", "commands/s of the write side"),
    "catchup": ("projection_catchup", "read-model catch-up events/s and projection lag"),
    "kafka": ("kafka_publish", "Kafka publication events/s and lag drain after a broker stall"),
    "replay": ("replay_audit", "timeline and as-of latency; audit verify events/s"),
    "analytics": ("analytics_catchup", "DuckDB catch-up events/s beside PostgreSQL; KPI query times"),
    "load": ("load", "the running server under a mixed HTTP load: requests/s, latency, lag"),
}


def _terminate(signum: int, frame: Any) -> NoReturn:
    # Unwind normally, so the throw-away database is dropped.
    raise SystemExit(128 + signum)


def _write_report(stem_name: str, quick: bool, doc: dict[str, Any], md: str) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = REPORTS / f"{stem_name}-{stamp}{'-quick' if quick else ''}"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    print(md)
    print(f"report: {stem.with_suffix('.md')} and .json", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                        help="run only this benchmark (repeatable); default: all of them: "
                        + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 300 commands per write case instead of 3,000; "
                        "50,000 events instead of 1,000,000 for the catch-up")
    parser.add_argument("--commands", type=int, help="write: commands per case (overrides --quick)")
    parser.add_argument("--events", type=int,
                        help="catchup and replay: events in the generated log (overrides --quick)")
    parser.add_argument("--reps", type=int, help="repetitions (median is reported; >= 3)")
    parser.add_argument("--server", help="maintenance URL of the PostgreSQL server to create the "
                        f"throw-away database in (default {write_throughput.DEFAULT_SERVER}, "
                        "else an embedded server)")
    parser.add_argument("--embedded", action="store_true",
                        help="use an embedded server even if one answers at 127.0.0.1:5432")
    args = parser.parse_args(argv)
    only = args.only or list(BENCHMARKS)

    settings = write_throughput.QUICK if args.quick else write_throughput.FULL
    if args.commands is not None:
        if args.commands < 3 * max(settings.clients):
            parser.error(f"--commands must be at least {3 * max(settings.clients)}")
        settings = dataclasses.replace(settings, commands=args.commands)
    catchup = projection_catchup.QUICK if args.quick else projection_catchup.FULL
    if args.events is not None:
        if args.events < 1000:
            parser.error("--events must be at least 1000")
        catchup = dataclasses.replace(catchup, events=args.events)
    if args.reps is not None:
        if args.reps < 3:
            parser.error("--reps must be at least 3")
        settings = dataclasses.replace(settings, reps=args.reps)
        catchup = dataclasses.replace(catchup, reps=args.reps)
    if args.server and args.embedded:
        parser.error("--server and --embedded exclude each other")
    if args.server:
        settings = dataclasses.replace(settings, server=args.server)
        catchup = dataclasses.replace(catchup, server=args.server)
    if args.embedded:
        settings = dataclasses.replace(settings, embedded=True)
        catchup = dataclasses.replace(catchup, embedded=True)

    replay = replay_audit.QUICK if args.quick else replay_audit.FULL
    if args.events is not None:
        replay = dataclasses.replace(replay, events=args.events)
    if args.server or args.embedded:
        replay = dataclasses.replace(replay, server=args.server, embedded=args.embedded)

    # The rebuild of every read model runs over the whole log.
    catchup = dataclasses.replace(catchup, all_events=catchup.events)

    signal.signal(signal.SIGTERM, _terminate)
    started_at = datetime.now().isoformat(timespec="seconds")
    docs: dict[str, dict[str, Any]] = {}
    if "write" in only:
        doc = docs["write"] = write_throughput.measure(settings)
        doc["settings"]["quick"] = args.quick
        _write_report(BENCHMARKS["write"][0], args.quick, doc, write_throughput.markdown(doc))
    if "catchup" in only:
        doc = docs["catchup"] = projection_catchup.measure(catchup)
        doc["settings"]["quick"] = args.quick
        _write_report(BENCHMARKS["catchup"][0], args.quick, doc, projection_catchup.markdown(doc))
    if "kafka" in only:
        kafka = kafka_publish.QUICK if args.quick else kafka_publish.FULL
        kafka = dataclasses.replace(kafka, server=args.server, embedded=args.embedded)
        doc = docs["kafka"] = kafka_publish.measure(kafka)
        doc["settings"]["quick"] = args.quick
        _write_report(BENCHMARKS["kafka"][0], args.quick, doc, kafka_publish.markdown(doc))
    if "replay" in only:
        doc = docs["replay"] = replay_audit.measure(replay)
        doc["settings"]["quick"] = args.quick
        _write_report(BENCHMARKS["replay"][0], args.quick, doc, replay_audit.markdown(doc))
    if "analytics" in only:
        analytics = analytics_catchup.QUICK if args.quick else analytics_catchup.FULL
        if args.events is not None:
            analytics = dataclasses.replace(analytics, events=catchup.events)
        if args.reps is not None:
            analytics = dataclasses.replace(analytics, reps=args.reps)
        analytics = dataclasses.replace(analytics, server=catchup.server, embedded=catchup.embedded)
        doc = docs["analytics"] = analytics_catchup.measure(analytics)
        doc["settings"]["quick"] = args.quick
        _write_report(BENCHMARKS["analytics"][0], args.quick, doc, analytics_catchup.markdown(doc))
    if "load" in only:
        load_settings = load.QUICK if args.quick else load.FULL
        load_settings = dataclasses.replace(load_settings, server=args.server, embedded=args.embedded)
        doc = docs["load"] = load.measure(load_settings)
        doc["settings"]["quick"] = args.quick
        _write_report(BENCHMARKS["load"][0], args.quick, doc, load.markdown(doc))
    summary = report.summarize(docs, quick=args.quick, started_at=started_at)
    report.write(summary)
    print(report.markdown(summary))
    print(f"report: {report.REPORT_MD} and {report.REPORT_JSON.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
