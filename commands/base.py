"""What every command model shares: strict input, back-dating, a reason."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Annotated, ClassVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

Text = Annotated[str, StringConstraints(max_length=200)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@:-]+$")]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


def check_email(value: str) -> str:
    if not _EMAIL.match(value.strip()):
        raise ValueError("not a valid e-mail address")
    return value.strip()


Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(check_email)]

#: The dates and times the CRM takes: a typo (0024, 20240) is refused, not stored.
EARLIEST_DATE = date(1900, 1, 1)
LATEST_DATE = date(2200, 12, 31)
_EARLIEST = datetime.combine(EARLIEST_DATE, time(), UTC)
_LATEST = datetime.combine(LATEST_DATE, time.max, UTC)
DATE_RANGE = f"must be between {EARLIEST_DATE.isoformat()} and {LATEST_DATE.isoformat()}"


def check_date(value: date) -> date:
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise ValueError(DATE_RANGE)
    return value


def check_datetime(value: datetime) -> datetime:
    """Within the range in UTC (the zone it was given in does not move the bounds)."""
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError(DATE_RANGE)
    return value


#: A date, 1900-01-01 to 2200-12-31.
Date = Annotated[date, AfterValidator(check_date)]
#: A time with a zone offset, from 1900-01-01 to 2200-12-31 (UTC).
When = Annotated[AwareDatetime, AfterValidator(check_datetime)]


class Command(BaseModel):
    """Base of every command: unknown fields are refused, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=20_000)

    #: Changes to an existing record must name the version they are based on.
    requires_version: ClassVar[bool] = False

    occurred_at: When | None = Field(
        default=None,
        description="When this took effect in business terms, if earlier than now "
        "(e.g. a call logged late). Defaults to the time of recording.",
    )
    reason: str | None = Field(default=None, max_length=1000, description="Why.")
