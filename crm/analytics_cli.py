"""`crm sql` and `crm analytics ...`: analysts' access to the DuckDB analytics database.

DuckDB lets one process hold a database file open for writing and no other process open
it at all meanwhile. So these commands first try to open the file themselves, read-only
(with the same sandbox as the server: no file access, locked configuration, limits):
that works when no process owns it. When a process owns it (``crm serve`` leading the
analytics projection, or ``crm analytics run``), they call that process's HTTP API at
CRM_ANALYTICS_URL (default http://CRM_HOST:CRM_PORT) with a short-lived token signed
with the configured JWT secret -- so the query still runs in the owning process.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from crm.progress import events_progress, stop_on_signals

analytics_app = typer.Typer(help="Analytics (DuckDB): run, rebuild, export, report.",
                            no_args_is_help=True)


class OwnedElsewhere(Exception):
    """Another process holds the analytics file open."""


def _settings() -> Any:
    from crm.logging import configure
    from crm.settings import Settings

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    return settings


def _config(settings: Any) -> Any:
    from crm.bootstrap import analytics_config

    return analytics_config(settings, settings.database_url or "")


def _open_local(settings: Any) -> Any:
    """The analytics file opened read-only and locked down, if no process owns it."""
    import duckdb

    from analytics.store import connect, lock_down

    config = _config(settings)
    path = Path(config.path)
    if not path.exists():
        typer.echo(f"error: no analytics database at {path} yet: run `crm analytics rebuild`, "
                   "`crm analytics run` or `crm serve`", err=True)
        raise typer.Exit(2)
    try:
        db = connect(path, config, read_only=True)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            raise OwnedElsewhere(str(e)) from None
        raise
    lock_down(db)
    return db, config


def _call(settings: Any, method: str, path: str, body: dict[str, Any] | None = None,
          role: str = "analyst") -> tuple[bytes, dict[str, str]]:
    """Call the owning process's API (token signed here); the body and headers."""
    from crm.bootstrap import jwt_settings
    from api.auth import TokenIssuer

    base = settings.analytics_url or f"http://{settings.host}:{settings.port}"
    token = TokenIssuer(jwt_settings(settings)).issue("crm-cli", role, ttl=timedelta(minutes=10))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=settings.analytics_query_timeout_seconds + 30) as r:
            return r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", str(e))
        except ValueError:
            detail = str(e)
        typer.echo(f"error: {detail}", err=True)
        raise typer.Exit(1) from None
    except urllib.error.URLError as e:
        typer.echo(f"error: the analytics file is in use by another process and its API at "
                   f"{base} does not answer ({e.reason}); set CRM_ANALYTICS_URL", err=True)
        raise typer.Exit(1) from None


def _write(out: Path | None, data: bytes) -> None:
    if out is None:
        sys.stdout.buffer.write(data)
        if not data.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
    else:
        out.write_bytes(data)


def sql(
    query: Annotated[str, typer.Argument(help="One read-only query, e.g. \"SELECT * FROM kpi_win_rate\".")],
    format: Annotated[str, typer.Option("--format", "-f", help="json, csv or arrow")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")] = None,
    max_rows: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
) -> None:
    """Query the analytics database (read-only, sandboxed); the process that owns it runs it."""
    from analytics import sandbox

    if format not in sandbox.FORMATS:
        typer.echo(f"error: --format must be one of {', '.join(sandbox.FORMATS)}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    try:
        db, config = _open_local(settings)
    except OwnedElsewhere:
        body: dict[str, Any] = {"sql": query, "format": format}
        if max_rows is not None:
            body["max_rows"] = max_rows
        data, _ = _call(settings, "POST", "/api/v1/analytics/sql", body)
        _write(output, data)
        return
    try:
        result = sandbox.run_encoded(db, query, format=format, timeout=config.query_timeout_seconds,
                                     max_rows=min(max_rows or config.max_rows, config.max_rows),
                                     max_bytes=config.max_result_bytes)
    except sandbox.QueryRefused as e:
        typer.echo(f"error: {e.detail}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.close()
    data = b"".join(result.pieces)
    if format == "json":  # indented, as the server's answer is not
        data = json.dumps(json.loads(data), indent=1).encode()
    _write(output, data)


@analytics_app.command("export")
def export(name: Annotated[str, typer.Argument(
        help="The export's name: written to a directory of that name in the exports "
             "directory (CRM_ANALYTICS_EXPORTS_DIR).")]) -> None:
    """Write every table of the star as Parquet from one snapshot, with manifest.json giving
    the log position it reflects, into the exports directory under NAME."""
    from analytics import sandbox

    settings = _settings()
    try:
        sandbox.check_export_name(name)
    except ValueError as e:
        typer.echo(f"error: NAME: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        db, config = _open_local(settings)
    except OwnedElsewhere:
        data, _ = _call(settings, "POST", "/api/v1/analytics/export", {"name": name})
        manifest = json.loads(data)
        directory = Path(manifest["directory"])
    else:
        try:
            directory = sandbox.export_directory(config.exports_dir, name)
            manifest = sandbox.export_parquet(db, directory, record_to=config.exports_ledger)
        except ValueError as e:
            typer.echo(f"error: NAME: {e}", err=True)
            raise typer.Exit(2) from None
        finally:
            db.close()
    rows = sum(t["rows"] for t in manifest["tables"].values())
    typer.echo(f"{len(manifest['tables'])} tables, {rows:,} rows, at log position "
               f"{manifest['position']}: {directory}")


AsOfOption = Annotated[str | None, typer.Option(
    "--as-of", help="Cut-off, ISO 8601 with a time zone (e.g. 2026-06-30T23:59:59Z): only "
                    "purchases and activity up to then count. Default: now.")]
HorizonOption = Annotated[float, typer.Option(
    "--horizon-weeks", min=0.001, max=520, help="Lifetime value over this many weeks.")]


def _as_of(text: str | None) -> datetime:
    """The --as-of option as an aware time (now when not given)."""
    if text is None:
        return datetime.now(UTC)
    try:
        at: datetime | None = datetime.fromisoformat(text)
        at = at.astimezone(UTC) if at is not None and at.tzinfo is not None else None
    except (ValueError, OverflowError):
        at = None
    if at is None:
        typer.echo("error: --as-of must be an ISO 8601 date-time with a time zone, e.g. "
                   "2026-06-30T23:59:59Z", err=True)
        raise typer.Exit(2)
    return at


@analytics_app.command("report")
def report_command(out: Annotated[Path, typer.Argument(help="The HTML file to write.")],
                   as_of: AsOfOption = None, horizon_weeks: HorizonOption = 52.0) -> None:
    """Write the analytics report (KPIs and charts) as one self-contained HTML file; the
    customer classes and lifetime value as of --as-of (default now)."""
    from analytics import report

    cutoff = _as_of(as_of)
    settings = _settings()
    try:
        db, _ = _open_local(settings)
    except OwnedElsewhere:
        query = urllib.parse.urlencode({"as_of": cutoff.isoformat(), "horizon_weeks": horizon_weeks})
        data, _ = _call(settings, "GET", f"/api/v1/analytics/report?{query}")
        out.write_bytes(data)
    else:
        try:
            out.write_text(report.render(report.collect(db, as_of=cutoff,
                                                        horizon_weeks=horizon_weeks)))
        finally:
            db.close()
    typer.echo(f"report: {out}")


@analytics_app.command("clv")
def clv_command(
    as_of: AsOfOption = None, horizon_weeks: HorizonOption = 52.0,
    top: Annotated[int, typer.Option(min=0, max=1000, help="This many top customers.")] = 20,
) -> None:
    """Customer lifetime value (BG/NBD + Gamma-Gamma) per currency, fitted on the purchases
    up to --as-of (default now), as JSON: the cut-off, time unit, customers fitted, the
    parameters, the total and mean value over the horizon and the top customers."""
    from analytics import sandbox
    from analytics.clv import lifetime_value_answer
    from analytics.schema import macro_call

    cutoff = _as_of(as_of)
    settings = _settings()
    try:
        db, config = _open_local(settings)
    except OwnedElsewhere:
        query = urllib.parse.urlencode({"as_of": cutoff.isoformat(),
                                        "horizon_weeks": horizon_weeks, "top": top})
        data, _ = _call(settings, "GET", f"/api/v1/analytics/clv?{query}")
        _write(None, data)
        return
    try:
        result = sandbox.run_query(db, f"SELECT * FROM {macro_call('clv_inputs_at', cutoff)}",
                                   timeout=config.query_timeout_seconds, max_rows=10_000_000)
    except sandbox.QueryRefused as e:
        typer.echo(f"error: {e.detail}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.close()
    answer = lifetime_value_answer(sandbox.rows_of(result.table), position=result.position,
                                   horizon_weeks=horizon_weeks, as_of=cutoff, top=top)
    _write(None, json.dumps(answer, indent=1).encode())


@analytics_app.command("run")
def run() -> None:
    """Keep the analytics database up to date in the foreground (until SIGTERM/SIGINT).

    For deployments where `crm serve` runs with CRM_ANALYTICS_ENABLED=false or
    CRM_RUN_PROJECTIONS=false. While it runs, `crm sql` needs an API process owning the
    file; prefer running the projection inside `crm serve` when analysts query it.
    """
    from crm import bootstrap

    settings = _settings()
    system = bootstrap.build(settings)
    stop = stop_on_signals()
    try:
        assert system.analytics is not None
        system.analytics.run(stop)
    finally:
        system.close()


@analytics_app.command("rebuild")
def rebuild() -> None:
    """Build the analytics database again from position 0 beside the live file, then
    replace it. Exit 3 if another process owns the analytics projection."""
    from crm import bootstrap
    from analytics.store import NotLeader

    settings = _settings()
    system = bootstrap.build(settings)
    try:
        assert system.analytics is not None
        with events_progress() as bar:
            task = bar.add_task("rebuilding analytics", total=None)

            def progress(position: int, head: int) -> None:
                bar.update(task, completed=position, total=max(head, 1))

            position = system.analytics.rebuild(progress)
    except NotLeader as e:
        typer.echo(f"error: {e}; stop it first", err=True)
        raise typer.Exit(3) from None
    finally:
        system.close()
    typer.echo(f"analytics rebuilt to log position {position}: {system.analytics.config.path}")
