"""The directory: who works here (users, their role and team), the teams, and the API
keys other systems sign in with.

Record-level access joins ``crm_read.users.team_id`` to find a manager's team's records.
No password or key secret ever reaches it (events hold none).
"""

from __future__ import annotations

from typing import Any

from events import api_key as ke
from events import team as te
from events import user as ue
from projections.base import BatchView, From, Projection, Table

USERS = Table(
    "users",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "username": "text NOT NULL",
        "display_name": "text",
        "email": "text",
        "role": "text NOT NULL",
        "team_id": "uuid",
        "active": "boolean NOT NULL",
        "created_at": "timestamptz NOT NULL",
        "updated_at": "timestamptz NOT NULL",
    },
    key="id",
    indexes=("team_id", "CREATE UNIQUE INDEX {name} ON {table} (username)"),
    # a staff member's own data: no customer is its subject, so no erasure resets it
    sources={c: (From(ue.UserCreated, c),) for c in ("display_name", "email")},
)
TEAMS = Table(
    "teams",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "name": "text NOT NULL",
        "manager_id": "uuid",
        "created_at": "timestamptz NOT NULL",
        "updated_at": "timestamptz NOT NULL",
    },
    key="id",
)
API_KEYS = Table(
    "api_keys",
    {
        "id": "uuid",
        "version": "int NOT NULL",
        "name": "text NOT NULL",
        "role": "text NOT NULL",
        "expires_at": "timestamptz",
        "revoked_at": "timestamptz",
        "created_by": "text NOT NULL",
        "created_at": "timestamptz NOT NULL",
        "updated_at": "timestamptz NOT NULL",
    },
    key="id",
)


class Directory(Projection):
    name = "directory"
    version = 1
    tables = (USERS, TEAMS, API_KEYS)


def _row(table: str) -> Any:
    def needs(e: Any) -> list[tuple[str, Any]]:
        return [(table, e.originator_id)]

    return needs


def _create(view: BatchView, table: str, e: Any, **row: Any) -> None:
    existing = view.get(table, e.originator_id)
    if existing is not None and existing["version"] >= e.originator_version:
        return
    view.put(table, {"id": e.originator_id, "version": e.originator_version, **row,
                     "created_at": e.meta.occurred_at, "updated_at": e.meta.recorded_at})


@Directory.handles(ue.UserCreated, needs=_row("users"))
def _user_created(view: BatchView, e: ue.UserCreated) -> None:
    _create(view, "users", e, username=e.username, display_name=e.display_name, email=e.email,
            role=e.role, team_id=e.team_id, active=True)


@Directory.handles(ue.UserRoleChanged, needs=_row("users"))
def _role_changed(view: BatchView, e: ue.UserRoleChanged) -> None:
    view.change_record("users", e, role=e.role)


@Directory.handles(ue.UserJoinedTeam, needs=_row("users"))
def _joined_team(view: BatchView, e: ue.UserJoinedTeam) -> None:
    view.change_record("users", e, team_id=e.team_id)


@Directory.handles(ue.UserDeactivated, needs=_row("users"))
def _deactivated(view: BatchView, e: ue.UserDeactivated) -> None:
    view.change_record("users", e, active=False)


@Directory.handles(ue.UserReactivated, needs=_row("users"))
def _reactivated(view: BatchView, e: ue.UserReactivated) -> None:
    view.change_record("users", e, active=True)


@Directory.handles(ue.UserPasswordChanged, needs=_row("users"))
def _password_changed(view: BatchView, e: ue.UserPasswordChanged) -> None:
    view.change_record("users", e)


@Directory.handles(te.TeamCreated, needs=_row("teams"))
def _team_created(view: BatchView, e: te.TeamCreated) -> None:
    _create(view, "teams", e, name=e.name, manager_id=e.manager_id)


@Directory.handles(te.TeamRenamed, needs=_row("teams"))
def _team_renamed(view: BatchView, e: te.TeamRenamed) -> None:
    view.change_record("teams", e, name=e.name)


@Directory.handles(ke.ApiKeyIssued, needs=_row("api_keys"))
def _key_issued(view: BatchView, e: ke.ApiKeyIssued) -> None:
    _create(view, "api_keys", e, name=e.name, role=e.role, expires_at=e.expires_at, revoked_at=None,
            created_by=e.meta.actor.id)


@Directory.handles(ke.ApiKeyRevoked, needs=_row("api_keys"))
def _key_revoked(view: BatchView, e: ke.ApiKeyRevoked) -> None:
    view.change_record("api_keys", e, revoked_at=e.meta.recorded_at)
