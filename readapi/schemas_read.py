"""The response models of the read routes: one row model per list, its page, and the
record as of a time, so that ``/openapi.json`` states every list's and record's shape.

A row model is made from its read model's table (``projections``): a column's SQL type
gives its JSON type, ``NOT NULL`` (or being the key) makes it required and never null,
and the list's hidden columns are left out. The routes write their rows themselves
(``api.encoding.JSONResponse``); these models describe them and are not used to
validate or rewrite an answer.

Masking keeps a value's JSON type (``api.encoding.mask_value``): a personal text is
``"***"``, a personal list a list of ``"***"``, a contact the same keys with its values
``"***"`` (its id, kind, label and primary flag kept). The models therefore hold for
masked rows too; each personal column says so in its description.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, create_model

from projections.activity import ACTIVITIES
from projections.base import Table
from projections.customers import CUSTOMERS
from projections.interactions import INTERACTIONS
from projections.pipeline import OPPORTUNITIES
from projections.service_queue import SERVICE_REQUESTS
from projections.tasks import TASKS
from api.encoding import MASK
from readapi.listing import ListSpec

_SCALARS: dict[str, Any] = {
    "uuid": UUID,
    "text": str,
    "int": int,
    "bigint": int,
    "boolean": bool,
    "timestamptz": datetime,
    "date": date,
}


class Contact(BaseModel):
    """A contact point of a customer (an e-mail, a phone, a person)."""

    model_config = ConfigDict(title="Contact")

    contact_id: str
    kind: str
    value: str | None = Field(default=None, description=f'Personal: "{MASK}" when masked.')
    label: str | None = None
    person_name: str | None = Field(default=None, description=f'Personal: "{MASK}" when masked.')
    primary: bool = False


#: JSON columns whose items have a shape of their own; other jsonb columns are objects.
_JSON_COLUMNS: dict[tuple[str, str], Any] = {
    ("customers", "contacts"): list[Contact],
    ("customers", "consents"): dict[str, bool],  # channel -> granted
    ("customers", "open_pipeline"): dict[str, str],  # currency -> amount as decimal text
    ("customers", "lifetime_purchases"): dict[str, str],  # currency -> amount as decimal text
}


def _column_type(table: Table, column: str, sql: str) -> tuple[Any, bool]:
    """The Python type of a column and whether it is required (never null)."""
    words = sql.split()
    base = words[0].lower()
    required = "NOT NULL" in sql.upper() or column == table.key
    if base == "numeric":
        py: Any = str  # amounts are written as decimal text
    elif base == "jsonb":
        py = _JSON_COLUMNS.get((table.name, column), dict[str, Any])
    elif base.endswith("[]"):
        py = list[_SCALARS[base[:-2]]]  # type: ignore[misc]
    else:
        py = _SCALARS[base]
    return py, required


def _mask_note(py: Any) -> str:
    if py is str:
        return f'Personal: "{MASK}" for roles that see personal data masked.'
    if getattr(py, "__origin__", None) is list:
        return f'Personal: each item "{MASK}" (a contact: its values) for roles that see personal data masked.'
    return "Personal: masked for roles that see personal data masked."


def row_model(title: str, table: Table, spec: ListSpec) -> type[BaseModel]:
    """The model of one row of ``spec`` (a list over ``table``), named ``title``."""
    fields: dict[str, Any] = {}
    for column, sql in table.columns.items():
        if column in spec.hidden:
            continue
        py, required = _column_type(table, column, sql)
        description = _mask_note(py) if column in spec.personal else None
        if required:
            fields[column] = (py, Field(description=description))
        else:
            fields[column] = (py | None, Field(description=description))  # always present, maybe null
    return create_model(title, __config__=ConfigDict(title=title), **fields)


def page_model(title: str, row: type[BaseModel]) -> type[BaseModel]:
    """The model of one page of a list: its rows, the cursor of the next page, the total."""
    return create_model(
        title,
        __config__=ConfigDict(title=title),
        items=(list[row], Field(description="The rows of this page, in the sort's order.")),  # type: ignore[valid-type]
        next_cursor=(str | None, Field(description="Give it as `cursor` for the next page; null on the last.")),
        total=(int | None, Field(description="Rows matching the filters, with include_total=true; else null.")),
    )


class RecordAsOf(BaseModel):
    """A record rebuilt from its events as of a time (``as_of`` / ``as_known_at``)."""

    id: UUID
    type: str
    version: int
    data: dict[str, Any] = Field(description="The record's state; personal fields masked as in the lists.")
    as_of: datetime | None
    as_known_at: datetime | None


#: view of a list -> (title of its row model, its read model's table)
TABLES: dict[str, tuple[str, Table]] = {
    "customers": ("Customer", CUSTOMERS),
    "opportunities": ("Opportunity", OPPORTUNITIES),
    "interactions": ("Interaction", INTERACTIONS),
    "service_requests": ("ServiceRequest", SERVICE_REQUESTS),
    "tasks": ("Task", TASKS),
    "activities": ("Activity", ACTIVITIES),
}
_ROWS: dict[str, type[BaseModel]] = {}
_PAGES: dict[str, type[BaseModel]] = {}


def row_of(spec: ListSpec) -> type[BaseModel]:
    """The row model of a list (one per view: lists over one view share it)."""
    if spec.view not in _ROWS:
        title, table = TABLES[spec.view]
        _ROWS[spec.view] = row_model(title, table, spec)
    return _ROWS[spec.view]


def page_of(spec: ListSpec) -> type[BaseModel]:
    """The page model of a list."""
    if spec.view not in _PAGES:
        title, _ = TABLES[spec.view]
        _PAGES[spec.view] = page_model(f"{title}Page", row_of(spec))
    return _PAGES[spec.view]


class BoardStage(BaseModel):
    """One column of the pipeline board: a stage of the pipeline, or won or lost."""

    stage: str
    probability: int
    closed: bool = Field(description="won or lost")
    count: int
    totals: dict[str, str] = Field(description="Currency -> sum of the amounts, as decimal text.")
    weighted_totals: dict[str, str] = Field(description="Currency -> sum of amount x probability, as decimal text.")


class BoardOpen(BaseModel):
    """The open deals of the board together."""

    count: int
    totals: dict[str, str]
    weighted_totals: dict[str, str]


class PipelineBoard(BaseModel):
    """``GET /opportunities/board``: every stage of the pipeline in order, then won and lost."""

    pipeline: str
    owner_id: str | None
    stages: list[BoardStage]
    open: BoardOpen
