"""What every command model shares: strict input, accepted text, back-dating, a reason."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import PydanticCustomError

# -- accepted text ----------------------------------------------------------------------
#: What no text a caller sends may hold: the C0 control characters but tab, line feed
#: and carriage return (U+0000 NUL among them: PostgreSQL text cannot hold it), and
#: lone surrogates (U+D800..U+DFFF, which JSON escapes can carry but no UTF-8 can).
REFUSED_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
TEXT_ERROR = "text"


def text_problem(value: str) -> str | None:
    """Why ``value`` is not accepted text (None: it is)."""
    found = REFUSED_CHARACTERS.search(value)
    if found is None:
        return None
    code = ord(found.group())
    what = "a lone surrogate" if code >= 0xD800 else "the control character"
    return f"must not hold {what} U+{code:04X} (at character {found.start()})"


def check_text(value: str) -> str:
    """``value`` if it is accepted text, else ValueError (for ``AfterValidator``)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Loc = tuple[str | int, ...]


def refused_text(data: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str, Any]]:
    """(location, why, the value) of every string in ``data`` that is not accepted text: strings,
    secrets, the keys and values of mappings, the items of lists, tuples and sets, and
    the fields of models, however deeply nested."""
    if isinstance(data, str):
        problem = text_problem(data)
        if problem is not None:
            yield loc, problem, data
    elif isinstance(data, SecretStr):
        problem = text_problem(data.get_secret_value())
        if problem is not None:
            yield loc, problem, data
    elif isinstance(data, dict):
        for key, value in data.items():
            where = (*loc, key if isinstance(key, str | int) else str(key))
            if isinstance(key, str):
                problem = text_problem(key)
                if problem is not None:
                    yield where, f"the name {problem}", key
                    continue
            yield from refused_text(value, where)
    elif isinstance(data, list | tuple | set | frozenset):
        for i, value in enumerate(data):
            yield from refused_text(value, (*loc, i))
    elif isinstance(data, BaseModel):
        yield from refused_text(dict(data), loc)


class CheckedInput(BaseModel):
    """Base of every model a caller's input is read into (commands, their nested parts,
    request bodies): before anything else, every string in the input -- at any depth --
    must be accepted text, or the input is refused naming where the string is."""

    @model_validator(mode="wrap")
    @classmethod
    def _accepted_text(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        refused = list(refused_text(data))
        if refused:
            raise ValidationError.from_exception_data(cls.__name__, [
                {"type": PydanticCustomError(TEXT_ERROR, problem), "loc": loc,
                 "input": value} for loc, problem, value in refused])
        return handler(data)


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


class Command(CheckedInput):
    """Base of every command: unknown fields are refused, never ignored; text is checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=20_000)

    #: Changes to an existing record must name the version they are based on.
    requires_version: ClassVar[bool] = False

    occurred_at: When | None = Field(
        default=None,
        description="When this took effect in business terms, if earlier than now "
        "(e.g. a call logged late). Defaults to the time of recording.",
    )
    reason: str | None = Field(default=None, max_length=1000, description="Why.")
