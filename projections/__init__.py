"""Read models built from the event log: PostgreSQL read tables for the UI (and, as
their issues land, DuckDB analytics, the Kafka publisher and automation).

``ALL`` lists every read model the runners keep up to date.
"""

from __future__ import annotations

from projections.activity import ActivityFeed
from projections.base import Projection
from projections.customers import CustomerList
from projections.directory import Directory
from projections.interactions import InteractionTimeline
from projections.pipeline import PipelineBoard
from projections.service_queue import ServiceQueue
from projections.tasks import TaskList

ALL: tuple[type[Projection], ...] = (
    CustomerList,
    PipelineBoard,
    ActivityFeed,
    ServiceQueue,
    TaskList,
    InteractionTimeline,
    Directory,
)


def by_name(name: str) -> type[Projection]:
    for projection in ALL:
        if projection.name == name:
            return projection
    raise KeyError(f"no projection {name!r}; projections: {', '.join(p.name for p in ALL)}")
