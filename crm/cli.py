"""The `crm` command line."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from datetime import timedelta
from typing import Annotated

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
            f"  Try:       curl -H \"Authorization: Bearer $TOKEN\" {base}/api/v1/customers/<id>\n",
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
    from crm.bootstrap import System, master_key
    from crm.demo import DemoLoader

    assert isinstance(system, System)
    if (system.app.recorder.max_notification_id() or 0) > 0:
        typer.echo("Demo data: the event store already has events; not loading again.", err=True)
        return
    email_key = hashlib.sha256(b"crm e-mail reservations|" + master_key(system.settings)).digest()
    loader = DemoLoader(system.app, email_key, SystemClock())
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
