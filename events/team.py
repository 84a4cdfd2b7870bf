"""Events of the Team aggregate: a group of users with an optional manager."""

from __future__ import annotations

from uuid import UUID

from events.base import CrmEvent, register


class TeamEvent(CrmEvent):
    aggregate_type = "team"


@register
class TeamCreated(TeamEvent):
    type_name = "TeamCreated"
    creates = True

    name: str
    manager_id: UUID | None


@register
class TeamRenamed(TeamEvent):
    type_name = "TeamRenamed"

    name: str
    previous_name: str
