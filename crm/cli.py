"""The `crm` command line."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from crm.progress import events_progress, stop_on_signals

app = typer.Typer(help="Event-sourced CRM core.", no_args_is_help=True, add_completion=False)


@app.command()
def serve(
    demo: Annotated[bool, typer.Option(help="Load the demo data first (once per data directory).")] = False,
    host: Annotated[str | None, typer.Option(help="Default: CRM_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: CRM_PORT or 8000")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="uvicorn worker processes. Default: CRM_WORKERS or 1")] = None,
) -> None:
    """Run the CRM: the HTTP API (and the embedded PostgreSQL unless CRM_DATABASE_URL is set)."""
    import uvicorn

    from crm import bootstrap, lifecycle
    from crm.server import server_options
    from crm.logging import configure
    from crm.settings import Settings

    settings = Settings()
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    if demo and settings.automation_rules_file is None:
        # The demo's automation routes to the demo's people (not the default rules' examples).
        from crm.demo import write_demo_rules

        settings = settings.model_copy(update={"automation_rules_file": write_demo_rules(settings.data_dir)})
    configure(settings.log_format, settings.log_level)
    try:
        lock = lifecycle.DataDirLock(settings.data_dir).acquire()
    except lifecycle.AlreadyRunning as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    watchdog = lifecycle.Watchdog(settings.shutdown_timeout_seconds)
    lifecycle.interrupt_on_signals(watchdog)
    try:
        system = bootstrap.build(settings)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if system.embedded is not None:
        lifecycle.on_forced_exit(system.embedded.forget_handle)
    try:
        if demo:
            _load_demo(system)
        if settings.run_projections:
            system.start_projections()
            if system.kafka is not None:
                system.start_kafka()
        system.start_checkpoints()
        host = host or settings.host
        port = port or settings.port
        base = f"http://{host}:{port}"
        ttl = min(timedelta(days=1), timedelta(hours=settings.jwt_max_lifetime_hours))
        token = system.tokens.issue("demo-admin", "admin", ttl=ttl)
        typer.echo(
            f"\nCRM is up.\n  Web UI:    {base}/\n  API docs:  {base}/docs\n  Health:    {base}/health\n"
            f"  A token (admin, {ttl.total_seconds() / 3600:g} h):\n    export TOKEN={token}\n"
            f"  Try:       curl -H \"Authorization: Bearer $TOKEN\" \"{base}/api/v1/customers?limit=5\"\n",
            err=True,
        )
        if system.embedded is not None:
            typer.echo(f"  Event store: embedded PostgreSQL in {system.embedded.pgdata}\n", err=True)
        # Requests still running when a stop begins get half the bound, the rest is closing's.
        graceful = max(1, int(settings.shutdown_timeout_seconds / 2))
        if settings.workers > 1:
            # Each worker process builds its own system against the same database.
            if system.embedded is not None:
                os.environ["CRM_DATABASE_URL"] = system.embedded.url
            uvicorn.run("crm.asgi:create_app", factory=True, host=host, port=port,
                        workers=settings.workers, log_config=None, access_log=False,
                        timeout_graceful_shutdown=graceful, **server_options(settings))
        else:
            from crm.asgi import settle_heap

            http_app = system.http_app()
            settle_heap()
            config = uvicorn.Config(http_app, host=host, port=port, log_config=None, access_log=False,
                                    timeout_graceful_shutdown=graceful, **server_options(settings))
            _server(config, watchdog).run()
    except KeyboardInterrupt:
        pass
    finally:
        watchdog.arm("closing")
        # The threads get half the bound; the embedded server's stop follows.
        try:
            system.close(timeout=settings.shutdown_timeout_seconds / 2)
        except KeyboardInterrupt:  # a second Ctrl-C while closing: the watchdog still bounds it
            if system.embedded is not None:
                system.embedded.stop()
        lock.release()


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, arming the stop watchdog on the first SIGTERM or SIGINT."""

        def __init__(self, config: Any, watchdog: Any):
            super().__init__(config)
            self.watchdog = watchdog

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.watchdog.arm(signal.Signals(sig).name)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            # uvicorn raises the captured signal again when it has stopped, so that the
            # default handler ends the process; here closing follows, so it is not raised.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return Server


def _server(config: Any, watchdog: Any) -> Any:
    return _server_class()(config, watchdog)


def _load_demo(system: object) -> None:
    from commands.clock import SystemClock
    from crm.bootstrap import System, email_key
    from crm.demo import DemoLoader

    assert isinstance(system, System)
    if (system.app.recorder.max_notification_id() or 0) > 0:
        typer.echo("Demo data: the event store already has events; not loading again.", err=True)
        _echo_demo_users()
        return
    loader = DemoLoader(system.app, email_key(system.settings), SystemClock())
    sent = loader.load()
    last = system.app.recorder.max_notification_id()
    typer.echo(f"Demo data: {sent} commands, event log at position {last}.", err=True)
    first = next((n for n in system.app.recorder.select_notifications(start=1, limit=100)
                  if n.topic == "CustomerRegistered"), None)
    if first is not None:
        typer.echo(f"  First customer: {first.originator_id}", err=True)
    _echo_demo_users()


def _echo_demo_users() -> None:
    from crm.demo import DEMO_PASSWORD, DEMO_USERS

    typer.echo(f"  Demo users (password for all: {DEMO_PASSWORD}):", err=True)
    for username, role, team, _name in DEMO_USERS:
        typer.echo(f"    {username:<10} {role:<14} {team or ''}", err=True)
    typer.echo("  Sign in: POST /api/v1/auth/token {\"username\": \"rep\", \"password\": \"demo-password\"}",
               err=True)


@app.command()
def token(
    user: Annotated[str, typer.Option("--user", help="The user id (the token's subject).")],
    role: Annotated[str, typer.Option("--role", help="admin, manager, sales_rep, service_agent, ...")],
    hours: Annotated[float, typer.Option(help="Lifetime in hours (at most CRM_JWT_MAX_LIFETIME_HOURS).")] = 8.0,
) -> None:
    """Print a bearer token signed with the configured secret."""
    from crm.bootstrap import jwt_settings
    from crm.settings import Settings
    from api.auth import TokenIssuer

    issuer = TokenIssuer(jwt_settings(Settings()))
    try:
        typer.echo(issuer.issue(user, role, ttl=timedelta(hours=hours)))
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


# -- crm users, crm teams, crm api-keys ----------------------------------------------------
users_app = typer.Typer(help="People who sign in: create and list.", no_args_is_help=True)
teams_app = typer.Typer(help="Teams: create.", no_args_is_help=True)
api_keys_app = typer.Typer(help="API keys for other systems: issue and revoke.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(teams_app, name="teams")
app.add_typer(api_keys_app, name="api-keys")
#: The actor of the changes made from the command line (the operator at the console).
CLI_PRINCIPAL = ("crm-cli", "admin")


def _run_command(system: Any, command: Any, target: Any = None, version: int | None = None) -> Any:
    import uuid

    from aggregates.errors import DomainError
    from commands.application import Principal, Request

    try:
        return system.commands.execute(command, Request(
            Principal(*CLI_PRINCIPAL), correlation_id=f"cli-{uuid.uuid4().hex}", target=target,
            expected_version=version))
    except DomainError as e:
        typer.echo(f"error: {e.field + ': ' if e.field else ''}{e.detail}", err=True)
        raise typer.Exit(1) from None


def _validated(command_cls: Any, **values: Any) -> Any:
    from pydantic import ValidationError

    try:
        return command_cls.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        typer.echo(f"error: {where}: {first['msg']}", err=True)
        raise typer.Exit(2) from None


def _team_id(system: Any, team: str) -> Any:
    """A team named by its id or its name (names looked up in the directory)."""
    import uuid

    try:
        return uuid.UUID(team)
    except ValueError:
        pass
    with system.read.pool.connection() as conn:
        rows = conn.execute("SELECT id FROM crm_read.teams WHERE lower(name) = lower(%s)", (team,)).fetchall()
    if len(rows) != 1:
        typer.echo(f"error: --team: {'no' if not rows else 'more than one'} team named {team!r}", err=True)
        raise typer.Exit(2)
    return rows[0]["id"]


def _read_password(confirm: bool) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return password


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Unique, case-insensitive.")],
    role: Annotated[str, typer.Option("--role", help="admin, manager, sales_rep, service_agent, ...")],
    team: Annotated[str | None, typer.Option("--team", help="The team's id or name.")] = None,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    email: Annotated[str | None, typer.Option("--email")] = None,
) -> None:
    """Create a user; the password is read from stdin (one line) or prompted for."""
    from commands import identity as ci

    password = _read_password(confirm=True)
    system = _system()
    try:
        team_id = _team_id(system, team) if team else None
        command = _validated(ci.CreateUser, username=username, password=password, role=role,
                             display_name=display_name, email=email, team_id=team_id)
        result = _run_command(system, command)
        typer.echo(str(result.id))
    finally:
        system.close()


@users_app.command("list")
def users_list() -> None:
    """Every user (from the directory read model)."""
    system = _system()
    try:
        with system.read.pool.connection() as conn:
            rows = conn.execute(
                "SELECT u.id, u.username, u.role, u.active, t.name AS team FROM crm_read.users u"
                " LEFT JOIN crm_read.teams t ON t.id = u.team_id ORDER BY u.username").fetchall()
        for r in rows:
            state = "" if r["active"] else "deactivated"
            typer.echo(f"{r['id']}  {r['username']:<20} {r['role']:<14} {r['team'] or '-':<20} {state}".rstrip())
    finally:
        system.close()


@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Argument(help="The team's name.")],
    manager: Annotated[str | None, typer.Option("--manager", help="The manager's username.")] = None,
) -> None:
    """Create a team; prints its id."""
    from commands import identity as ci

    system = _system()
    try:
        command = _validated(ci.CreateTeam, name=name,
                             manager_id=ci.user_id(manager) if manager else None)
        typer.echo(str(_run_command(system, command).id))
    finally:
        system.close()


@api_keys_app.command("issue")
def api_keys_issue(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. the system's name.")],
    role: Annotated[str, typer.Option("--role", help="The role the system acts in, e.g. integration.")],
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="ISO 8601 with a zone.")] = None,
) -> None:
    """Issue an API key and print it (shown only this once)."""
    import uuid

    from commands import identity as ci
    from commands.application import Principal, Request

    command = _validated(ci.IssueApiKey, name=name, role=role, expires_at=expires_at)
    system = _system()
    try:
        from aggregates.errors import DomainError

        try:
            result, key = ci.issue_api_key(system.commands, command, Request(
                Principal(*CLI_PRINCIPAL), correlation_id=f"cli-{uuid.uuid4().hex}"))
        except DomainError as e:
            typer.echo(f"error: {e.detail}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"API key {result.id} ({role}); the key, shown only now:", err=True)
        typer.echo(key)
    finally:
        system.close()


@api_keys_app.command("revoke")
def api_keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke an API key: refused from now on."""
    from commands import identity as ci

    target = _uuid(key_id, "ID")
    system = _system()
    try:
        _run_command(system, ci.RevokeApiKey(), target=target)
        typer.echo(f"revoked {target}", err=True)
    finally:
        system.close()


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

    import projections
    from projections.operations import run_projections

    if all_ == bool(names):
        typer.echo("error: name the read models to run, or pass --all", err=True)
        raise typer.Exit(2)
    chosen = list(projections.ALL) if all_ else [_projection(n) for n in names or []]
    system = _system()
    stop = stop_on_signals()
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
    """Each read model's generation, position, lag and parked events, the Kafka publisher's,
    the automation's and every other follower's (exit 1 if any is parked)."""
    from rich.console import Console
    from rich.table import Table

    import projections

    from automation.runner import automation_status
    from projections.follow import follower_statuses

    system = _system()
    try:
        assert system.read is not None
        rows = system.read.store.status(list(projections.ALL))
        kafka = system.kafka.status() if system.kafka is not None else None
        with system.read.pool.connection() as conn:
            automation = automation_status(conn)
            followers = follower_statuses(conn)
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
    if kafka is not None:
        _print_kafka_status(kafka)
    auto = Table(title="Automation")
    for column in ("position", "head", "lag events", "lag seconds", "parked"):
        auto.add_column(column, justify="right")
    auto.add_row(str(automation.position), str(automation.head), str(automation.lag_events),
                 f"{automation.lag_seconds:.1f}", str(automation.parked),
                 style="red" if automation.parked else None)
    Console(width=160).print(auto)
    if followers:
        others = Table(title="Followers")
        for column in ("name", "position", "head", "lag events", "parked"):
            others.add_column(column, justify="left" if column == "name" else "right")
        for f in followers:
            others.add_row(f.name, str(f.position), str(f.head), str(f.lag_events), str(f.parked),
                           style="red" if f.parked else None)
        Console(width=160).print(others)
    if (any(s.parked for s in rows) or (kafka is not None and kafka.parked) or automation.parked
            or any(f.parked for f in followers)):
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
    from projections.operations import Busy, rebuild

    projection = _projection(name)
    system = _system()
    try:
        assert system.read is not None
        with events_progress() as bar:
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


# -- crm kafka -------------------------------------------------------------------------
kafka_app = typer.Typer(help="The Kafka feed: publish, republish, consume, schemas.",
                        no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")


def _print_kafka_status(s: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Kafka publisher")
    for column in ("name", "position", "head", "lag events", "lag seconds", "parked"):
        table.add_column(column, justify="left" if column == "name" else "right")
    table.add_row(s.name, str(s.position), str(s.head), str(s.lag_events),
                  f"{s.lag_seconds:.1f}", str(s.parked), style="red" if s.parked else None)
    Console(width=160).print(table)


def _kafka_system() -> Any:
    system = _system()
    if system.kafka is None:
        system.close()
        typer.echo("error: set CRM_KAFKA_BOOTSTRAP_SERVERS to publish to Kafka", err=True)
        raise typer.Exit(2)
    return system


@kafka_app.command("publish")
def kafka_publish() -> None:
    """Publish the event log to Kafka, in the foreground, until SIGTERM or SIGINT.

    Run it as its own process when `crm serve` runs with CRM_RUN_PROJECTIONS=false. A
    second process waits as a standby and takes over when the first one dies.
    """

    system = _kafka_system()
    stop = stop_on_signals()
    try:
        system.kafka.publisher.run(stop)
    finally:
        system.close()


@kafka_app.command("status")
def kafka_status() -> None:
    """The publisher's position, lag and parked events (exit 1 if any are parked)."""
    system = _kafka_system()
    try:
        status = system.kafka.status()
    finally:
        system.close()
    _print_kafka_status(status)
    if status.parked:
        raise typer.Exit(1)


@kafka_app.command("republish")
def kafka_republish(
    from_: Annotated[int, typer.Option("--from", min=1, help="First event-log position to publish.")],
    to: Annotated[int | None, typer.Option("--to", min=1,
                                           help="Last position (default: the head now).")] = None,
    topics: Annotated[list[str] | None, typer.Option(
        "--topic", help="Only to this topic (repeatable); default: every topic.")] = None,
) -> None:
    """Publish a range of the log again (to rebuild a downstream system); the live
    publisher's position is not touched. Consumers dedupe by event id."""
    from feeds.kafka import republish

    system = _kafka_system()
    try:
        config = system.kafka.publisher.config
        unknown = sorted(set(topics or []) - set(config.all_topics()))
        if unknown:
            typer.echo(f"error: unknown topic(s) {', '.join(unknown)}; topics: "
                       f"{', '.join(config.all_topics())}", err=True)
            raise typer.Exit(2)
        with events_progress() as bar:
            task = bar.add_task("republishing", total=None)

            def progress(position: int, end: int) -> None:
                bar.update(task, completed=max(0, position - from_ + 1),
                           total=max(1, end - from_ + 1))

            summary = republish(system.database_url, system.app.codec, config, start=from_,
                                end=to, topics=topics, progress=progress,
                                batch_size=system.kafka.publisher.batch_size)
    finally:
        system.close()
    typer.echo(f"republished positions {from_}..{summary.position}: {summary.events} events read, "
               f"{summary.published} records acknowledged in {summary.seconds:.1f} s")


@kafka_app.command("consume")
def kafka_consume(
    group: Annotated[str, typer.Option(help="Consumer group id.")] = "crm-reference-consumer",
    topics: Annotated[list[str] | None, typer.Option(
        "--topic", help="Topic to read (repeatable); default: every topic.")] = None,
    state: Annotated[str | None, typer.Option(
        help="SQLite file keeping the seen event ids (default: in memory).")] = None,
    window: Annotated[int, typer.Option(min=1, help="How many recent event ids to keep.")] = 200_000,
    idle_timeout: Annotated[float | None, typer.Option(
        help="Stop after this many seconds without records.")] = None,
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
) -> None:
    """The reference consumer: prints each event's envelope once (JSON lines), whatever
    the feed delivers twice; a summary goes to stderr."""
    import json
    from pathlib import Path

    from crm.settings import Settings
    from feeds.kafka_consumer import SeenIds, consume

    settings = Settings()
    if not settings.kafka_bootstrap_servers:
        typer.echo("error: set CRM_KAFKA_BOOTSTRAP_SERVERS", err=True)
        raise typer.Exit(2)
    from crm.bootstrap import feed_config

    chosen = topics or feed_config(settings).all_topics()
    seen = SeenIds(Path(state) if state else None, window)
    stop = stop_on_signals()
    try:
        summary = consume(settings.kafka_bootstrap_servers, chosen, group,
                          lambda e: typer.echo(json.dumps(e, sort_keys=True)), seen=seen,
                          idle_seconds=idle_timeout, max_events=max_events,
                          should_stop=stop.is_set)
    finally:
        seen.close()
    typer.echo(f"received {summary.received}, handed on {summary.handed_on}, duplicates "
               f"{summary.duplicates}, invalid {summary.invalid}", err=True)


@kafka_app.command("schemas")
def kafka_schemas(
    write: Annotated[bool, typer.Option(
        help="Write the schema of every current event version that has none yet.")] = False,
) -> None:
    """Check the public event schemas kept in events/schemas/ against the event classes
    (exit 1 if one is missing or a class changed without a new class_version)."""
    from events.public import check_schemas, write_schemas

    if write:
        for name in write_schemas():
            typer.echo(f"wrote events/schemas/{name}")
    result = check_schemas()
    for name in result.missing:
        typer.echo(f"missing: {name} (run `crm kafka schemas --write`)", err=True)
    for name in result.changed:
        typer.echo(f"changed without a new class_version: {name} (bump class_version, add an "
                   "upcaster, then `crm kafka schemas --write`)", err=True)
    if result.missing or result.changed:
        raise typer.Exit(1)
    typer.echo("schemas match the event classes")
# -- crm audit ------------------------------------------------------------------------
audit_app = typer.Typer(help="The tamper-evident log: checkpoints, verification, exports.",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _public_key(path: Any) -> Any:
    from replay.signing import load_public_key

    try:
        return load_public_key(path.read_text())
    except (OSError, ValueError) as e:
        typer.echo(f"error: cannot read the public key {path}: {e}", err=True)
        raise typer.Exit(2) from None


@audit_app.command("public-key")
def audit_public_key() -> None:
    """Print the public key (PEM) that checks checkpoints and exports."""
    from crm.bootstrap import audit_signing_key
    from crm.settings import Settings
    from replay.signing import public_key_pem

    typer.echo(public_key_pem(audit_signing_key(Settings()).public_key()), nl=False)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the head of the hash chain now."""
    from replay.audit import write_checkpoint

    system = _system()
    try:
        cp = write_checkpoint(system.app.factory.datastore.get_connection, system.audit_key,
                              heads_file=system.settings.audit_heads_file)
    finally:
        system.close()
    if cp is None:
        typer.echo("the event log is empty: nothing to sign")
    else:
        typer.echo(f"checkpoint at position {cp.notification_id}: {cp.hash.hex()} "
                   f"(key {cp.key_id}, {cp.signed_at})")


@audit_app.command("verify")
def audit_verify(
    public_key: Annotated[Path | None, typer.Option(
        help="PEM (or hex) public key to check the checkpoints with; default: this "
        "installation's own.")] = None,
    heads: Annotated[list[Path] | None, typer.Option(
        help="A heads file (JSON lines of signed checkpoints, CRM_AUDIT_HEADS_FILE) kept "
        "outside the database; may be given more than once.")] = None,
) -> None:
    """Recompute the hash chain and check the signed checkpoints (exit 1 on any finding)."""
    from replay.audit import read_heads, verify_chain

    key = _public_key(public_key) if public_key is not None else None
    kept = []
    for path in heads or []:
        try:
            kept.extend(read_heads(path))
        except (OSError, ValueError) as e:
            typer.echo(f"error: cannot read the heads file {path}: {e}", err=True)
            raise typer.Exit(2) from None
    system = _system()
    try:
        report = verify_chain(system.app.factory.datastore.get_connection,
                              key or system.audit_key.public_key(),
                              progress=lambda n: typer.echo(f"  {n:,} events ...", err=True), heads=kept)
    finally:
        system.close()
    typer.echo(f"{report.events:,} events, head {report.head} ({report.head_hash.hex()}), "
               f"{report.checkpoints} checkpoints"
               f"{f' (+{report.heads} heads from files)' if heads else ''}, {report.seconds:.1f} s "
               f"({report.events_per_second:,.0f} events/s)")
    if report.head > report.signed_to:
        typer.echo(f"positions after {report.signed_to} are not signed yet (the next checkpoint "
                   "covers them)")
    if report.findings:
        typer.echo(f"FIRST BROKEN AT POSITION {report.findings[0].position}: "
                   f"{report.findings[0].kind}")
        for finding in report.findings:
            typer.echo(f"  {finding}")
        if report.truncated:
            typer.echo("  (more findings not shown)")
        raise typer.Exit(1)
    typer.echo("the chain is intact")


def _parse_time(value: str | None, option: str) -> Any:
    from datetime import datetime

    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        typer.echo(f"error: {option} must be an ISO 8601 date-time with a time zone", err=True)
        raise typer.Exit(2)
    return when


def _uuid(value: str, what: str) -> Any:
    from uuid import UUID

    try:
        return UUID(value)
    except ValueError:
        typer.echo(f"error: {what} must be a UUID", err=True)
        raise typer.Exit(2) from None


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Argument(help="Directory to write events.jsonl and manifest.json to.")],
    customer: Annotated[str, typer.Option("--customer", help="The customer's id.")],
    from_: Annotated[str | None, typer.Option("--from", help="Business time from (inclusive).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Business time to (exclusive).")] = None,
    actor: Annotated[str, typer.Option(help="Who takes the export (recorded with it).")] = "",
) -> None:
    """Write a signed audit export of a customer's events (recorded as an event itself)."""
    import getpass
    import hashlib

    from commands.application import Principal
    from commands.audit import record_export
    from replay.export import ExportRequest, export_customer
    from replay.state import Replayer

    customer_id = _uuid(customer, "--customer")
    start, end = _parse_time(from_, "--from"), _parse_time(to, "--to")
    who = Principal(actor or f"cli:{getpass.getuser()}", "auditor")
    system = _system()
    try:
        replayer = Replayer(system.app.factory.datastore.get_connection, system.app.codec)
        if replayer.kind_of(customer_id) != "customer":
            typer.echo(f"error: no customer {customer_id}", err=True)
            raise typer.Exit(2)
        files = export_customer(replayer, system.audit_key,
                                ExportRequest(customer_id, start, end, who.id, who.role))
        files.write(out)
        record_export(system.commands, files.manifest,
                      hashlib.sha256(files.manifest_bytes).hexdigest(), who, "cli-audit-export")
    finally:
        system.close()
    typer.echo(f"{files.manifest['events']} events of customer {customer_id} written to {out}")


@audit_app.command("verify-export")
def audit_verify_export(
    export: Annotated[Path, typer.Argument(help="An export directory (or a zip of one).")],
    public_key: Annotated[Path, typer.Option(help="The PEM (or hex) public key of the installation "
                                             "that signed it (`crm audit public-key`).")],
) -> None:
    """Check an export offline: no database, only the public key (exit 1 if anything is wrong)."""
    from replay.export import read_export, verify_export

    key = _public_key(public_key)
    try:
        events, manifest = read_export(export)
    except (OSError, KeyError, ValueError) as e:
        typer.echo(f"error: cannot read the export {export}: {e}", err=True)
        raise typer.Exit(2) from None
    problems = verify_export(events, manifest, key)
    if problems:
        typer.echo("the export is NOT intact:")
        for problem in problems:
            typer.echo(f"  {problem}")
        raise typer.Exit(1)
    typer.echo(f"the export is intact and signed by this key ({len(events.splitlines())} events)")


# -- crm replay -----------------------------------------------------------------------
replay_app = typer.Typer(help="Timelines and records as of a time, from the event log.",
                         no_args_is_help=True)
app.add_typer(replay_app, name="replay")


@replay_app.command("timeline")
def replay_timeline(
    customer: Annotated[str, typer.Argument(help="The customer's id.")],
    after: Annotated[int, typer.Option(help="Start after this log position.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    from_: Annotated[str | None, typer.Option("--from", help="Business time from.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Business time to (exclusive).")] = None,
    type_: Annotated[list[str] | None, typer.Option("--type", help="Event types.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor's events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines instead of text.")] = False,
) -> None:
    """Print a customer's timeline across all its records, with field-level changes."""
    import json

    from replay.state import Replayer
    from replay.timeline import TimelineQuery, known_type, timeline

    customer_id = _uuid(customer, "CUSTOMER")
    for name in type_ or ():
        if not known_type(name):
            typer.echo(f"error: unknown event type {name!r}", err=True)
            raise typer.Exit(2)
    query = TimelineQuery(after=after, limit=limit, occurred_from=_parse_time(from_, "--from"),
                          occurred_to=_parse_time(to, "--to"), types=tuple(type_ or ()), actor=actor)
    system = _system()
    try:
        replayer = Replayer(system.app.factory.datastore.get_connection, system.app.codec)
        if replayer.kind_of(customer_id) != "customer":
            typer.echo(f"error: no customer {customer_id}", err=True)
            raise typer.Exit(2)
        page = timeline(replayer, customer_id, query)
    finally:
        system.close()
    for item in page.items:
        if as_json:
            typer.echo(json.dumps(item, sort_keys=True))
            continue
        typer.echo(f"#{item['position']} {item['occurred_at']} (recorded {item['recorded_at']}) "
                   f"{item['type']} {item['aggregate_type']} {item['aggregate_id']} "
                   f"v{item['aggregate_version']} by {item['actor_id']} ({item['actor_role']})"
                   + (f" -- {item['reason']}" if item["reason"] else ""))
        for change in item["changes"] or ():
            typer.echo(f"    {change['field']}: {json.dumps(change['before'])} -> "
                       f"{json.dumps(change['after'])}")
    if page.next_after is not None:
        typer.echo(f"(more: --after {page.next_after})", err=True)
# -- crm customers erase, crm backup, crm restore ------------------------------------------
customers_app = typer.Typer(help="Customers: the right to be forgotten.", no_args_is_help=True)
app.add_typer(customers_app, name="customers")


@customers_app.command("erase")
def customers_erase(
    customer: Annotated[str, typer.Argument(help="The customer's id.")],
    reason: Annotated[str, typer.Option(help="Why (e.g. the legal basis); recorded on the event.")],
    reference: Annotated[str | None, typer.Option(
        help="The data subject's request (e.g. a ticket number; no personal data).")] = None,
    actor: Annotated[str, typer.Option(help="Who asks (recorded as the event's actor).")] = "data-admin",
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat-safe request key.")] = None,
) -> None:
    """Erase the customer's personal data from every store; prints the receipt (JSON).
    Safe to run again (e.g. after an interruption): the event is recorded once."""
    import json
    from uuid import uuid4

    from aggregates.errors import DomainError
    from commands.application import Principal
    from commands.base import text_problem
    from commands.customer import EraseCustomerPersonalData

    customer_id = _uuid(customer, "the customer id")
    if not reason.strip():
        typer.echo("error: --reason must not be blank", err=True)
        raise typer.Exit(2)
    _validated(EraseCustomerPersonalData, reason=reason, request_reference=reference)
    for option, value in (("--actor", actor), ("--idempotency-key", idempotency_key)):
        problem = text_problem(value) if value is not None else None
        if problem is not None:  # the events' actor; a key stored beside them
            typer.echo(f"error: {option} {problem}", err=True)
            raise typer.Exit(2)
    system = _system()
    try:
        outcome = system.eraser().erase(
            customer_id, Principal(id=actor, role="data_admin"), reason=reason,
            request_reference=reference, correlation_id=f"cli-{uuid4()}",
            idempotency_key=idempotency_key)
    except DomainError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        system.close()
    typer.echo(json.dumps(outcome.receipt, indent=2))


def _passphrase(file: Path | None, *, confirm: bool, what: str) -> str:
    """A passphrase from a file (its first line), else stdin (one line) or a prompt."""
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as e:
            typer.echo(f"error: cannot read the passphrase file {file}: {e}", err=True)
            raise typer.Exit(2) from None
        text = lines[0] if lines else ""
    elif sys.stdin.isatty():
        text = typer.prompt(f"Passphrase {what}", hide_input=True, confirmation_prompt=confirm)
    else:
        text = sys.stdin.readline().rstrip("\n")
    if len(text) < 12:
        typer.echo(f"error: the passphrase {what} is missing or shorter than 12 characters "
                   "(--passphrase-file, or one line on stdin)", err=True)
        raise typer.Exit(2)
    return text


def _current_keys(settings: Any) -> Any:
    from crm import bootstrap
    from crm.bundle import Keys
    from replay.signing import private_key_from_seed, public_key_pem

    master = bootstrap.existing_secret(settings, "master_key", bootstrap.MASTER_KEY_FILE)
    seed = bootstrap.existing_secret(settings, "audit_signing_key", bootstrap.AUDIT_KEY_FILE)
    jwt = bootstrap.existing_secret(settings, "jwt_secret", bootstrap.JWT_SECRET_FILE)
    assert master is not None and seed is not None  # made by the build that came first
    public = public_key_pem(private_key_from_seed(seed).public_key())
    return Keys(master, seed, public, jwt.decode() if jwt else None)


@app.command("backup")
def backup_command(
    out: Annotated[Path, typer.Argument(help="The bundle to write (a tar file).")],
    include_keys: Annotated[bool, typer.Option(
        "--include-keys", help="Put the master key, the audit signing key and the JWT secret "
        "in the bundle, encrypted with a passphrase.")] = False,
    passphrase_file: Annotated[Path | None, typer.Option(
        help="The passphrase for --include-keys (first line); default: stdin or a prompt.")] = None,
) -> None:
    """Back up everything a new machine needs into one bundle: the source of truth (events,
    customer keys, chain, checkpoints, reservations, idempotency records, automation state,
    users... as a pg_dump archive; read models are rebuilt, not saved), the erasure ledger,
    and the keys (encrypted, with --include-keys) or which keys a restore must be given."""
    import tempfile

    from crm.backup import BackupError, backup
    from crm.bootstrap import erasure_ledger_path
    from crm.bundle import write_bundle

    passphrase = _passphrase(passphrase_file, confirm=True, what="for the keys") if include_keys else None
    system = _system()
    try:
        keys = _current_keys(system.settings)
        head = int(system.app.recorder.max_notification_id() or 0)
        with tempfile.TemporaryDirectory(prefix="crm-backup-") as tmp:
            dump = Path(tmp) / "database.dump"
            tables = backup(system.database_url, dump, embedded=system.embedded is not None)
            out.parent.mkdir(parents=True, exist_ok=True)
            manifest = write_bundle(out, dump, tables, head, erasure_ledger_path(system.settings),
                                    keys, passphrase)
    except BackupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        system.close()
    typer.echo(f"{len(tables)} tables, event log at {head}, {manifest['erasure_ledger']['entries']} "
               f"erased customers in the ledger: {out} ({out.stat().st_size:,} bytes)")
    described = manifest["keys"]
    if include_keys:
        typer.echo("keys included, encrypted with the passphrase (keep it apart from the bundle)")
    else:
        typer.echo(f"keys NOT included: a restore needs the master key (id {described['master_key_id']}) "
                   "and the audit signing key of this installation (CRM_MASTER_KEY and "
                   "CRM_AUDIT_SIGNING_KEY, or master.key and audit-signing.key in the data directory); "
                   "or back up with --include-keys")


def _install_keys(settings: Any, bundle: Any, passphrase_file: Path | None) -> list[str]:
    """Check that the target has the bundle's keys, or install them from the bundle;
    what was installed. Exits with an error naming what is missing or different."""
    from crm import bootstrap
    from crm.bundle import BundleError, master_key_id
    from replay.signing import private_key_from_seed, public_key_pem

    wanted = bundle.manifest["keys"]
    master = bootstrap.existing_secret(settings, "master_key", bootstrap.MASTER_KEY_FILE)
    seed = bootstrap.existing_secret(settings, "audit_signing_key", bootstrap.AUDIT_KEY_FILE)
    jwt = bootstrap.existing_secret(settings, "jwt_secret", bootstrap.JWT_SECRET_FILE)
    where = settings.data_dir
    if master is not None and master_key_id(master) != wanted["master_key_id"]:
        source = "CRM_MASTER_KEY" if settings.master_key is not None else str(where / bootstrap.MASTER_KEY_FILE)
        typer.echo(f"error: the master key here ({source}, id {master_key_id(master)}) is not the one "
                   f"of this backup (id {wanted['master_key_id']}): the customers' data could not be "
                   "read. Restore into a data directory without keys, or set the backup's key.", err=True)
        raise typer.Exit(2)
    if seed is not None and public_key_pem(private_key_from_seed(seed).public_key()) != wanted["audit_public_key"]:
        source = ("CRM_AUDIT_SIGNING_KEY" if settings.audit_signing_key is not None
                  else str(where / bootstrap.AUDIT_KEY_FILE))
        typer.echo(f"error: the audit signing key here ({source}) is not the one of this backup: its "
                   "signed checkpoints would not verify. Restore into a data directory without keys, "
                   "or set the backup's key.", err=True)
        raise typer.Exit(2)
    missing = [name for name, value in (("the master key (CRM_MASTER_KEY or master.key)", master),
                                        ("the audit signing key (CRM_AUDIT_SIGNING_KEY or "
                                         "audit-signing.key)", seed)) if value is None]
    if not missing:
        return []
    if not bundle.has_keys:
        typer.echo(f"error: missing {' and '.join(missing)} of this backup (master key id "
                   f"{wanted['master_key_id']}); the bundle does not hold its keys. Set them, or put the "
                   f"files in {where}, or restore a bundle made with `crm backup --include-keys`.", err=True)
        raise typer.Exit(2)
    passphrase = _passphrase(passphrase_file, confirm=False, what="of the bundle's keys")
    try:
        keys = bundle.keys(passphrase)
    except BundleError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    installed = []
    if master is None:
        installed.append(str(bootstrap.install_secret(settings, bootstrap.MASTER_KEY_FILE, keys["master_key"])))
    if seed is None:
        installed.append(str(bootstrap.install_secret(settings, bootstrap.AUDIT_KEY_FILE,
                                                      keys["audit_signing_key"])))
    if jwt is None and keys.get("jwt_secret") and settings.jwt_algorithm == "HS256":
        try:
            bytes.fromhex(keys["jwt_secret"])
            installed.append(str(bootstrap.install_secret(settings, bootstrap.JWT_SECRET_FILE, keys["jwt_secret"])))
        except ValueError:  # a CRM_JWT_SECRET that is no hex: it cannot live in the file
            typer.echo("note: the backup's JWT secret was set by CRM_JWT_SECRET; set it again to keep "
                       "tokens valid", err=True)
    return installed


@app.command("restore")
def restore_command(
    archive: Annotated[Path, typer.Argument(help="A bundle written by `crm backup` (or a plain "
                                            "pg_dump archive of an earlier version).")],
    ledger: Annotated[list[Path] | None, typer.Option(
        "--ledger", help="A newer erasure ledger, or a newer bundle whose ledger to apply as well "
        "(repeatable): erasures made after the backup.")] = None,
    newest: Annotated[bool, typer.Option(
        "--newest", help="This bundle is the newest backup: its own erasure ledger is the "
        "current one.")] = False,
    passphrase_file: Annotated[Path | None, typer.Option(
        help="The passphrase of the bundle's keys (first line); default: stdin or a prompt.")] = None,
    without_ledger: Annotated[bool, typer.Option(
        "--without-ledger", help="Restore even though no current erasure ledger is given (keys "
        "destroyed after the backup would come back).")] = False,
) -> None:
    """Restore into an empty database (and, with a bundle, a data directory without other
    keys): install the bundle's keys, destroy again every key in the erasure ledgers,
    rebuild the read models."""
    import tempfile

    from crm import lifecycle
    from crm.backup import BackupError, rebuild_read_models, restore_archive
    from crm.bootstrap import EmbeddedPostgres, erasure_ledger_path
    from crm.bundle import Bundle, BundleError, is_bundle, ledger_of, merge_ledgers
    from crm.logging import configure
    from crm.settings import Settings

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    if not archive.exists():
        typer.echo(f"error: no backup at {archive}", err=True)
        raise typer.Exit(2)
    try:
        lock = lifecycle.DataDirLock(settings.data_dir).acquire()
    except lifecycle.AlreadyRunning as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    target = erasure_ledger_path(settings)
    bundle = None
    try:
        newer = [ledger_of(path) for path in ledger or ()]
        if is_bundle(archive):
            bundle = Bundle.open(archive)
    except BundleError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if newest and bundle is None:
        typer.echo(f"error: --newest: {archive} is a plain archive with no erasure ledger of its own; "
                   "give the ledger with --ledger", err=True)
        raise typer.Exit(2)
    current_known = bool(newer) or target.exists() or newest
    if not current_known and not without_ledger:
        taken = f" (taken {bundle.manifest['created_at']})" if bundle else ""
        typer.echo(f"error: no current erasure ledger: customers erased after this backup{taken} "
                   "would get their personal data back. Give the newest bundle or the erasure ledger "
                   f"with --ledger, or put the ledger at {target} (CRM_ERASURE_LEDGER_PATH)"
                   + (", or pass --newest if this bundle is the newest backup" if bundle else
                      ", or pass --without-ledger") + ".", err=True)
        raise typer.Exit(2)
    installed = _install_keys(settings, bundle, passphrase_file) if bundle is not None else []
    listed = merge_ledgers(target, *(([bundle.ledger] if bundle else []) + newer))
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
    try:
        with tempfile.TemporaryDirectory(prefix="crm-restore-") as tmp:
            dump = bundle.extract_dump(Path(tmp)) if bundle is not None else archive
            tables = restore_archive(url, dump, embedded=embedded is not None)
    except BackupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        if embedded is not None:
            embedded.stop()
    system = _system()
    try:
        receipts = system.eraser().reapply_ledger()
        rebuilt = rebuild_read_models(system)
    finally:
        system.close()
        lock.release()
    for path in installed:
        typer.echo(f"installed {path}")
    typer.echo(f"erasure ledger {target}: {listed} erased customers")
    typer.echo(f"restored {len(tables)} tables; {len(receipts)} erased customers' keys destroyed "
               f"again; read models rebuilt: " + ", ".join(f"{k} at {v}" for k, v in rebuilt.items()))


# -- crm sql, crm analytics (DuckDB) ------------------------------------------------------
from crm.analytics_cli import analytics_app, sql  # noqa: E402 -- kept in its own module

app.command("sql")(sql)
app.add_typer(analytics_app, name="analytics")


# -- crm automation ------------------------------------------------------------------------
automation_app = typer.Typer(help="Automation: playbooks, routing, SLA timers, reminders.",
                             no_args_is_help=True)
app.add_typer(automation_app, name="automation")


@automation_app.command("run")
def automation_run() -> None:
    """Run the automation in the foreground until SIGTERM or SIGINT (when `crm serve`
    runs with CRM_AUTOMATION_ENABLED=false). A second process waits as a standby."""

    system = _system()
    stop = stop_on_signals()
    try:
        system.automation().run(stop)
    finally:
        system.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
