"""The automation's rules as data: playbooks, teams, routes, SLAs, reminders.

Read from a JSON file (``CRM_AUTOMATION_RULES_FILE``); ``default_rules.json`` beside
this module is used when none is set.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_RULES = Path(__file__).with_name("default_rules.json")
PRIORITIES = ("low", "normal", "high", "urgent")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaybookTask(_Model):
    title: str = Field(min_length=1, max_length=300)
    description: str = ""
    due_in_working_days: int = Field(default=1, ge=0, le=365)


class Playbook(_Model):
    """Tasks created for the deal's owner when a deal enters ``stage`` of ``pipeline``."""

    pipeline: str = "default"
    stage: str
    tasks: list[PlaybookTask]


class Agent(_Model):
    id: str
    active: bool = True


class Team(_Model):
    name: str
    agents: list[Agent]
    manager: str
    #: on an SLA breach the request moves to this user (None: it stays with its agent)
    escalate_to: str | None = None


class Route(_Model):
    """Requests matching every given list go to ``team`` (first matching route wins)."""

    team: str
    types: list[str] | None = None
    channels: list[str] | None = None
    priorities: list[str] | None = None

    def matches(self, request_type: str, channel: str, priority: str) -> bool:
        return ((self.types is None or request_type in self.types)
                and (self.channels is None or channel in self.channels)
                and (self.priorities is None or priority in self.priorities))


class Sla(_Model):
    first_response_minutes: float = Field(gt=0)
    resolution_minutes: float = Field(gt=0)


class Reminders(_Model):
    #: a task's assignee is reminded this long before its due time, and again when overdue
    due_soon_minutes: float = Field(default=24 * 60, ge=0)


class Attention(_Model):
    """A high-value customer (in one of ``segments``, or with purchases of at least
    ``min_purchases`` in ``currency``) with no interaction for ``quiet_days`` gets a task
    for its owner, once per quiet spell."""

    enabled: bool = True
    segments: list[str] = ["key_account", "vip"]
    min_purchases: float | None = Field(default=None, ge=0)
    currency: str = "EUR"
    quiet_days: float = Field(default=30, gt=0)
    title: str = "Get in touch: no interaction for a while"
    due_in_working_days: int = Field(default=2, ge=0)


class AutomationConfig(_Model):
    playbooks: list[Playbook] = []
    teams: list[Team] = []
    routes: list[Route] = []
    sla: dict[Literal["low", "normal", "high", "urgent"], Sla] = {}
    reminders: Reminders = Reminders()
    attention: Attention = Attention()
    #: e-mail address per user id (a user id that is an address needs no entry)
    emails: dict[str, str] = {}

    def playbook(self, pipeline: str, stage: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.pipeline == pipeline and p.stage == stage), None)

    def email_of(self, user_id: str) -> str | None:
        return self.emails.get(user_id) or (user_id if "@" in user_id else None)

    def team(self, name: str) -> Team | None:
        return next((t for t in self.teams if t.name == name), None)

    def route(self, request_type: str, channel: str, priority: str) -> Team | None:
        for r in self.routes:
            if r.matches(request_type, channel, priority):
                return self.team(r.team)
        return None


def load_config(path: Path | None = None) -> AutomationConfig:
    return AutomationConfig.model_validate_json((path or DEFAULT_RULES).read_bytes())


def add_working_days(start: datetime, days: int) -> datetime:
    """``days`` working days (Monday to Friday) after ``start``, at the same time of day;
    0 days from a weekend is the next Monday."""
    out = start
    while out.weekday() >= 5:
        out += timedelta(days=1)
    while days > 0:
        out += timedelta(days=1)
        if out.weekday() < 5:
            days -= 1
    return out


def raised(priority: str) -> str:
    """The next priority up (urgent stays urgent)."""
    i = PRIORITIES.index(priority) if priority in PRIORITIES else 1
    return PRIORITIES[min(i + 1, len(PRIORITIES) - 1)]
