"""Team: a group of users (a manager's reach is the team's records)."""

from __future__ import annotations

from uuid import UUID

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidValue
from events.team import TeamCreated, TeamRenamed


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidValue("a team's name must not be blank", field="name")
    return name


class Team(Aggregate):
    type_name = "team"

    name: str
    manager_id: UUID | None

    @classmethod
    def create(cls, ctx: CommandContext, *, team_id: UUID, name: str, manager_id: UUID | None) -> Team:
        team = cls.__new__(cls)
        Aggregate.__init__(team, team_id)
        team._trigger(TeamCreated, ctx, name=_check_name(name), manager_id=manager_id)
        return team

    def rename(self, ctx: CommandContext, name: str) -> bool:
        name = _check_name(name)
        if name == self.name:
            return False
        self._trigger(TeamRenamed, ctx, name=name, previous_name=self.name)
        return True

    @applies(TeamCreated)
    def _created(self, e: TeamCreated) -> None:
        self.name = e.name
        self.manager_id = e.manager_id

    @applies(TeamRenamed)
    def _renamed(self, e: TeamRenamed) -> None:
        self.name = e.name
