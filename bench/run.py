"""Run the benchmarks and write a report: ``.venv/bin/python -m bench.run [--quick]``.

The report goes to ``bench/reports/`` (git-ignored) as Markdown and JSON, and the
Markdown is printed. Progress goes to stderr.
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

from bench import write_throughput

REPORTS = Path(__file__).resolve().parent / "reports"


def _terminate(signum: int, frame: Any) -> NoReturn:
    # Unwind normally, so the throw-away database is dropped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="300 commands per case instead of 3,000 (a smoke run)")
    parser.add_argument("--commands", type=int, help="commands per case (overrides --quick)")
    parser.add_argument("--reps", type=int, help="repetitions (median is reported; >= 3)")
    parser.add_argument("--server", help="maintenance URL of the PostgreSQL server to create the "
                        f"throw-away database in (default {write_throughput.DEFAULT_SERVER}, "
                        "else an embedded server)")
    parser.add_argument("--embedded", action="store_true",
                        help="use an embedded server even if one answers at 127.0.0.1:5432")
    args = parser.parse_args(argv)

    settings = write_throughput.QUICK if args.quick else write_throughput.FULL
    if args.commands is not None:
        if args.commands < 3 * max(settings.clients):
            parser.error(f"--commands must be at least {3 * max(settings.clients)}")
        settings = dataclasses.replace(settings, commands=args.commands)
    if args.reps is not None:
        if args.reps < 3:
            parser.error("--reps must be at least 3")
        settings = dataclasses.replace(settings, reps=args.reps)
    if args.server and args.embedded:
        parser.error("--server and --embedded exclude each other")
    if args.server:
        settings = dataclasses.replace(settings, server=args.server)
    if args.embedded:
        settings = dataclasses.replace(settings, embedded=True)

    signal.signal(signal.SIGTERM, _terminate)
    doc = write_throughput.measure(settings)
    doc["settings"]["quick"] = args.quick
    md = write_throughput.markdown(doc)

    REPORTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = REPORTS / f"write_throughput-{stamp}{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    print(md)
    print(f"report: {stem.with_suffix('.md')} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
