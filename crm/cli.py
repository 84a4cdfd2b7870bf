"""The `crm` command line."""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta
from typing import Annotated, Any

import typer

app = typer.Typer(help="Event-sourced CRM core.", no_args_is_help=True, add_completion=False)


@app.command()
def serve(
    demo: Annotated[bool, typer.Option(help="Load the demo data first (once per data directory).")] = False,
    host: Annotated[str | None, typer.Option(help="Default: CRM_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: CRM_PORT or 8000")] = None,
) -> None:
    """Run the CRM: the HTTP API (and the embedded PostgreSQL unless CRM_DATABASE_URL is set)."""
    import uvicorn

    from crm import bootstrap
    from crm.logging import configure
    from crm.settings import Settings

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    system = bootstrap.build(settings)
    # uvicorn handles SIGINT/SIGTERM itself; make sure we stop the server we started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if demo:
            _load_demo(system)
        if settings.run_projections:
            system.start_projections()
        host = host or settings.host
        port = port or settings.port
        base = f"http://{host}:{port}"
        token = system.tokens.issue("demo-admin", "admin", ttl=timedelta(days=1))
        typer.echo(
            f"\nCRM is up.\n  API docs:  {base}/docs\n  Health:    {base}/health\n"
            f"  A token (admin, 24 h):\n    export TOKEN={token}\n"
            f"  Try:       curl -H \"Authorization: Bearer $TOKEN\" \"{base}/api/v1/customers?limit=5\"\n",
            err=True,
        )
        if system.embedded is not None:
            typer.echo(f"  Event store: embedded PostgreSQL in {system.embedded.pgdata}\n", err=True)
        if settings.workers > 1:
            # Each worker process builds its own system against the same database.
            if system.embedded is not None:
                os.environ["CRM_DATABASE_URL"] = system.embedded.url
            uvicorn.run("crm.asgi:create_app", factory=True, host=host, port=port,
                        workers=settings.workers, log_config=None, access_log=False)
        else:
            uvicorn.run(system.http_app(), host=host, port=port, log_config=None, access_log=False)
    finally:
        system.close()


def _load_demo(system: object) -> None:
    from commands.clock import SystemClock
    from crm.bootstrap import System, email_key
    from crm.demo import DemoLoader

    assert isinstance(system, System)
    if (system.app.recorder.max_notification_id() or 0) > 0:
        typer.echo("Demo data: the event store already has events; not loading again.", err=True)
        return
    loader = DemoLoader(system.app, email_key(system.settings), SystemClock())
    sent = loader.load()
    last = system.app.recorder.max_notification_id()
    typer.echo(f"Demo data: {sent} commands, event log at position {last}.", err=True)
    first = next(iter(system.app.recorder.select_notifications(start=1, limit=1)), None)
    if first is not None:
        typer.echo(f"  First customer: {first.originator_id}", err=True)


@app.command()
def token(
    user: Annotated[str, typer.Option("--user", help="The user id (the token's subject).")],
    role: Annotated[str, typer.Option("--role", help="admin, manager, sales_rep, service_agent, ...")],
    hours: Annotated[float, typer.Option(help="Lifetime in hours.")] = 8.0,
) -> None:
    """Print a bearer token signed with the configured secret."""
    from crm.bootstrap import jwt_settings
    from crm.settings import Settings
    from readapi.auth import TokenIssuer

    issuer = TokenIssuer(jwt_settings(Settings()))
    try:
        typer.echo(issuer.issue(user, role, ttl=timedelta(hours=hours)))
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


# -- crm projections ----------------------------------------------------------------
projections_app = typer.Typer(help="Read models: run, status, rebuild, verify.",
                              no_args_is_help=True)
app.add_typer(projections_app, name="projections")


def _system() -> Any:
    """The CRM built from settings (logging configured), for the projection commands."""
    from crm import bootstrap
    from crm.logging import configure
    from crm.settings import Settings

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    return bootstrap.build(settings)


def _projection(name: str) -> Any:
    import projections

    try:
        return projections.by_name(name)
    except KeyError as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(2) from None


@projections_app.command("run")
def projections_run(
    names: Annotated[list[str] | None, typer.Argument(help="Read models to run.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Run every read model.")] = False,
) -> None:
    """Keep read models up to date, in the foreground, until SIGTERM or SIGINT.

    Run one process per read model (or a few) when `crm serve` runs with
    CRM_RUN_PROJECTIONS=false. A second process for the same read model waits as a
    standby and takes over when the first one dies.
    """
    import threading

    import projections
    from projections.operations import run_projections

    if all_ == bool(names):
        typer.echo("error: name the read models to run, or pass --all", err=True)
        raise typer.Exit(2)
    chosen = list(projections.ALL) if all_ else [_projection(n) for n in names or []]
    system = _system()
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        assert system.read is not None
        ok = run_projections(system.read.store, chosen, system.app.codec, system.database_url,
                             stop, batch_size=system.read.batch_size)
    finally:
        system.close()
    if not ok:
        raise typer.Exit(1)


@projections_app.command("status")
def projections_status() -> None:
    """Each read model's generation, position, lag and parked events (exit 1 if any parked)."""
    from rich.console import Console
    from rich.table import Table

    import projections

    system = _system()
    try:
        assert system.read is not None
        rows = system.read.store.status(list(projections.ALL))
    finally:
        system.close()
    table = Table(title="Read models")
    for column in ("name", "version", "schema", "position", "head", "lag events",
                   "lag seconds", "parked"):
        table.add_column(column, justify="left" if column in ("name", "schema") else "right")
    for s in rows:
        table.add_row(s.name, str(s.version), s.schema, str(s.position), str(s.head),
                      str(s.lag_events), f"{s.lag_seconds:.1f}", str(s.parked),
                      style="red" if s.parked else None)
    Console(width=160).print(table)
    if any(s.parked for s in rows):
        raise typer.Exit(1)


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str, typer.Argument(help="The read model to rebuild.")],
    lock_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the runners to leave the old generation.")] = 60.0,
) -> None:
    """Rebuild a read model beside the live one and switch to it (blue/green).

    Exit 1 if a runner kept the old generation (not dropped), 3 if another rebuild or
    verify of the read model is under way.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from projections.operations import Busy, rebuild

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed or 0:,.0f} events/s")

    projection = _projection(name)
    system = _system()
    try:
        assert system.read is not None
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      Rate(), TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task(f"rebuilding {name}", total=None)

            def progress(position: int, head: int) -> None:
                bar.update(task, completed=position, total=max(head, 1))

            summary = rebuild(system.read.store, projection, system.app.codec,
                              system.database_url, progress, lock_timeout=lock_timeout)
    except Busy as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3) from None
    finally:
        system.close()
    typer.echo(f"{name}: {summary.events} events in {summary.seconds:.1f} s "
               f"({summary.events_per_second:,.0f} events/s); now {summary.new_schema} "
               f"at position {summary.position}")
    if not summary.old_dropped:
        typer.echo(f"warning: a runner still holds {summary.old_schema}; it was not dropped",
                   err=True)
        raise typer.Exit(1)


@projections_app.command("verify")
def projections_verify(
    name: Annotated[str, typer.Argument(help="The read model to verify.")],
) -> None:
    """Compare a read model with a fresh build at the same position (exit 1 if different).

    Exit 3 if another rebuild or verify of the read model is under way.
    """
    from projections.operations import Busy, describe, verify_detailed

    projection = _projection(name)
    system = _system()
    try:
        assert system.read is not None
        result = verify_detailed(system.read.store, projection, system.app.codec,
                                 system.database_url)
    except Busy as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3) from None
    finally:
        system.close()
    if result.differences:
        typer.echo(f"{name} ({result.schema} at position {result.position}): "
                   f"{len(result.differences)} rows differ from a fresh build")
        for line in describe(result.differences):
            typer.echo("  " + line)
        raise typer.Exit(1)
    typer.echo(f"{name} ({result.schema} at position {result.position}): "
               "equal to a fresh build")


# -- crm sql, crm analytics (DuckDB) ------------------------------------------------------
from crm.analytics_cli import analytics_app, sql  # noqa: E402 -- kept in its own module

app.command("sql")(sql)
app.add_typer(analytics_app, name="analytics")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
