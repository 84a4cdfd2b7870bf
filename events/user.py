"""Events of the User aggregate: a person who signs in to the CRM.

A user's password never travels in an event: its hash lives beside the log
(``crm_credentials``); ``UserPasswordChanged`` only records that it changed, and the
event's actor says who changed it.
"""

from __future__ import annotations

from uuid import UUID

from events.base import CrmEvent, register


class UserEvent(CrmEvent):
    aggregate_type = "user"


@register
class UserCreated(UserEvent):
    type_name = "UserCreated"
    creates = True
    personal_fields = ("display_name", "email")

    username: str
    display_name: str | None
    email: str | None
    role: str
    team_id: UUID | None


@register
class UserRoleChanged(UserEvent):
    type_name = "UserRoleChanged"

    role: str
    previous_role: str


@register
class UserJoinedTeam(UserEvent):
    type_name = "UserJoinedTeam"

    team_id: UUID | None  # None: left every team
    previous_team_id: UUID | None


@register
class UserDeactivated(UserEvent):
    """The user may no longer sign in; their tokens stop working."""

    type_name = "UserDeactivated"


@register
class UserReactivated(UserEvent):
    type_name = "UserReactivated"


@register
class UserPasswordChanged(UserEvent):
    """The password was set anew (no hash here: who did it is the event's actor)."""

    type_name = "UserPasswordChanged"
