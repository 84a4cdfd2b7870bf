"""User: a person who signs in, with one role and at most one team.

A user's id is derived from the lower-cased username (``user_id``), so a second user
with the same name is the same record: creating it again is a conflict.
"""

from __future__ import annotations

import re
from datetime import datetime
import uuid
from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidTransition, InvalidValue
from events.user import (
    UserCreated,
    UserDeactivated,
    UserJoinedTeam,
    UserPasswordChanged,
    UserReactivated,
    UserRoleChanged,
)

#: Every role a user or system may act in (the permissions of each live in api/auth.py).
ROLES = (
    "admin",
    "manager",
    "sales_rep",
    "service_agent",
    "marketing",
    "analyst",
    "auditor",
    "data_admin",
    "integration",
)
#: The namespace of user ids: uuid5(USERS_NAMESPACE, lower-cased username). Never change it.
USERS_NAMESPACE = UUID("6b1f0c52-4d0e-5a7c-9f3e-2c8d1e0a7b31")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.@-]{0,63}$")


def normalise_username(username: str) -> str:
    return username.strip().lower()


def user_id(username: str) -> UUID:
    """The id of the user with this username (case-insensitive)."""
    return uuid.uuid5(USERS_NAMESPACE, normalise_username(username))


def check_role(role: str, field: str = "role") -> str:
    if role not in ROLES:
        raise InvalidValue(f"role must be one of {', '.join(ROLES)}", field=field)
    return role


class User(Aggregate):
    type_name = "user"

    username: str
    display_name: str | None
    email: str | None
    role: str
    team_id: UUID | None
    active: bool
    password_changed_at: datetime | None

    @classmethod
    def create(cls, ctx: CommandContext, *, username: str, display_name: str | None,
               email: str | None, role: str, team_id: UUID | None) -> User:
        name = normalise_username(username)
        if not USERNAME.match(name):
            raise InvalidValue("a username is 1 to 64 letters, digits or . _ @ - and starts "
                               "with a letter or digit", field="username")
        check_role(role)
        user = cls.__new__(cls)
        Aggregate.__init__(user, user_id(name))
        user._trigger(UserCreated, ctx, username=name, display_name=display_name or name,
                      email=email, role=role, team_id=team_id)
        return user

    def change_role(self, ctx: CommandContext, role: str) -> bool:
        check_role(role)
        if role == self.role:
            return False
        self._trigger(UserRoleChanged, ctx, role=role, previous_role=self.role)
        return True

    def join_team(self, ctx: CommandContext, team_id: UUID | None) -> bool:
        if team_id == self.team_id:
            return False
        self._trigger(UserJoinedTeam, ctx, team_id=team_id, previous_team_id=self.team_id)
        return True

    def deactivate(self, ctx: CommandContext) -> None:
        if not self.active:
            raise InvalidTransition("the user is already deactivated", field="active")
        self._trigger(UserDeactivated, ctx)

    def reactivate(self, ctx: CommandContext) -> None:
        if self.active:
            raise InvalidTransition("the user is active", field="active")
        self._trigger(UserReactivated, ctx)

    def record_password_change(self, ctx: CommandContext) -> None:
        """The password was set anew (its hash is stored beside the event, never in it)."""
        self._trigger(UserPasswordChanged, ctx)

    @applies(UserCreated)
    def _created(self, e: UserCreated) -> None:
        self.username = e.username
        self.display_name = e.display_name
        self.email = e.email
        self.role = e.role
        self.team_id = e.team_id
        self.active = True
        self.password_changed_at = e.meta.recorded_at

    @applies(UserRoleChanged)
    def _role_changed(self, e: UserRoleChanged) -> None:
        self.role = e.role

    @applies(UserJoinedTeam)
    def _joined_team(self, e: UserJoinedTeam) -> None:
        self.team_id = e.team_id

    @applies(UserDeactivated)
    def _deactivated(self, e: UserDeactivated) -> None:
        self.active = False

    @applies(UserReactivated)
    def _reactivated(self, e: UserReactivated) -> None:
        self.active = True

    @applies(UserPasswordChanged)
    def _password_changed(self, e: UserPasswordChanged) -> None:
        self.password_changed_at = e.meta.recorded_at
