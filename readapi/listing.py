"""The list machinery of the read API, written once: a ``ListSpec`` per list says which
view it reads, which filters and sorts it allows and which columns are personal; this
module parses the query string against it, builds the SQL and pages with keyset cursors.

Paging: the rows are ordered by the sort's keys and then the row's key (a total order),
and a page continues *after* the last row of the previous one: ``(keys..., id) > (last
row's values)``, not ``OFFSET``. Rows inserted or removed elsewhere in the order
therefore never shift a page: every row that existed when paging began and did not
change its sort values is returned exactly once. NULL sort values sort last in both
directions. The cursor is opaque to clients: base64url of JSON holding the sort it was
made for, the last row's sort values and its key.

Query parameters are checked strictly: an unknown parameter, a repeated one that may
be given once, or a bad value is a 422 problem naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from annotated_types import Ge, Le
from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from commands.application import Principal
from commands.base import check_date, check_datetime
from api.auth import PERSONAL_DATA_ROLES
from api.consistency import PARAMS as CONSISTENCY_PARAMS
from api.consistency import invalid
from api.encoding import jsonable, masked_row
from api.problems import Problem

READ_SCHEMA = "crm_read"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_TEXT = 200
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_PHONE_QUERY = re.compile(r"^[0-9+()./\s-]+$")
#: The parameters every list takes besides its filters.
COMMON_PARAMS = ("limit", "cursor", "sort", "include_total", *CONSISTENCY_PARAMS)


@dataclass(frozen=True)
class Filter:
    """One query parameter that narrows the list.

    ``kind`` parses the value: text, uuid, datetime (ISO 8601 with an offset, or a plain
    date meaning its midnight UTC), date, int or bool. ``op``: ``=`` (``= ANY`` when
    repeated), ``>=``, ``<``, ``<=``, ``contains`` (an array column holding every given
    value), ``search`` (a case-insensitive fragment of the column; digits of a phone
    number also match however they were written), ``caller`` (a bool: true means the
    column equals the caller's id).
    """

    param: str
    column: str
    kind: str = "text"
    op: str = "="
    repeatable: bool = False
    #: it searches personal data: refused to roles that see personal data masked
    personal: bool = False
    description: str = ""


@dataclass(frozen=True)
class SortKey:
    """One ordering key: a SQL expression over the view's columns and its SQL type."""

    expr: str
    sql_type: str
    nullable: bool = False


def col(name: str, sql_type: str, *, nullable: bool = False) -> SortKey:
    return SortKey(f'"{name}"', sql_type, nullable)


@dataclass(frozen=True)
class Sort:
    """A sort the client names (``name`` ascending, ``-name`` descending)."""

    name: str
    keys: tuple[SortKey, ...]
    #: it orders by personal data (and its cursors would carry it): refused to masked roles
    personal: bool = False


@dataclass(frozen=True)
class ListSpec:
    """One list of the read API over one view of ``crm_read``."""

    name: str
    view: str
    filters: tuple[Filter, ...]
    sorts: tuple[Sort, ...]
    default_sort: str
    key: str = "id"
    key_type: str = "uuid"
    #: columns masked for roles outside PERSONAL_DATA_ROLES
    personal: tuple[str, ...] = ()
    #: columns never returned
    hidden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = {s.name for s in self.sorts}
        if self.default_sort.lstrip("-") not in names:
            raise ValueError(f"{self.name}: the default sort {self.default_sort!r} is not a sort")
        if len({f.param for f in self.filters}) != len(self.filters):
            raise ValueError(f"{self.name}: a filter is declared twice")
        clash = {f.param for f in self.filters} & set(COMMON_PARAMS)
        if clash:
            raise ValueError(f"{self.name}: filters {sorted(clash)} clash with common parameters")

    @property
    def table(self) -> str:
        return f'"{READ_SCHEMA}"."{self.view}"'

    def sort(self, name: str) -> Sort | None:
        return next((s for s in self.sorts if s.name == name), None)

    def row(self, row: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
        """A row as the caller may see it (personal columns masked, hidden ones gone)."""
        return masked_row(dict(row), personal=self.personal, hidden=self.hidden,
                          mask=principal.role not in PERSONAL_DATA_ROLES)

    def view_row(self, row: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
        """``row`` with its values as read (ids, times, amounts not yet text): for a
        ``api.encoding.JSONResponse``, which writes them as ``row`` would (3x faster)."""
        return masked_row(row, personal=self.personal, hidden=self.hidden,
                          mask=principal.role not in PERSONAL_DATA_ROLES, as_read=True)


# -- cursors --------------------------------------------------------------------------
def encode_cursor(sort: str, values: Sequence[Any], key: Any) -> str:
    """The opaque cursor of a row: its sort (as the client named it), values and key."""
    raw = json.dumps({"s": sort, "v": [jsonable(v) for v in values], "k": jsonable(key)},
                     separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, n_values: int) -> tuple[list[Any], Any]:
    """The sort values and key of a cursor made for ``sort`` (422 naming ``cursor``)."""
    try:
        if len(cursor) > 4096:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode())
        if not isinstance(data, dict):
            raise ValueError("not an object")
        values, key, made_for = data["v"], data["k"], data["s"]
        if not isinstance(values, list) or len(values) != n_values or key is None:
            raise ValueError("wrong shape")
        for v in values:
            if v is not None and not isinstance(v, str | int | float):
                raise ValueError("wrong value")
        if not isinstance(key, str | int):
            raise ValueError("wrong key")
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "not a cursor this list gave out") from None
    if made_for != sort:
        raise invalid("cursor", f"was made for sort {made_for!r}, not {sort!r}")
    return values, key


def after_condition(keys: Sequence[SortKey], values: Sequence[Any], descending: bool) -> tuple[str, list[Any]]:
    """SQL true for rows that come after the row with these key ``values``, in the order
    ``keys`` (each ASC, or each DESC when ``descending``; NULLs last). The last key must
    be unique and not null (the row's key).

    Without nullable keys this is one row comparison, which an index on the keys serves.
    """
    op = "<" if descending else ">"
    if not any(k.nullable for k in keys):
        exprs = ", ".join(k.expr for k in keys)
        marks = ", ".join(f"%s::{k.sql_type}" for k in keys)
        return f"({exprs}) {op} ({marks})", list(values)
    if len(keys) == 2 and not keys[1].nullable:
        # One nullable key and the row's key: still a row comparison (index-friendly).
        k, last = keys
        if values[0] is None:
            return f"({k.expr} IS NULL AND {last.expr} {op} %s::{last.sql_type})", [values[1]]
        return (f"(({k.expr}, {last.expr}) {op} (%s::{k.sql_type}, %s::{last.sql_type})"
                f" OR {k.expr} IS NULL)", list(values))
    terms: list[str] = []
    params: list[Any] = []
    equal_sql: list[str] = []
    equal_params: list[Any] = []
    for k, v in zip(keys, values, strict=True):
        if v is not None:  # after a NULL nothing comes on this key (NULLs are last)
            after = f"{k.expr} {op} %s::{k.sql_type}"
            if k.nullable:
                after = f"({after} OR {k.expr} IS NULL)"
            terms.append("(" + " AND ".join([*equal_sql, after]) + ")")
            params += [*equal_params, v]
        if v is None:
            equal_sql.append(f"{k.expr} IS NULL")
        else:
            equal_sql.append(f"{k.expr} = %s::{k.sql_type}")
            equal_params.append(v)
    if not terms:
        return "FALSE", []
    return "(" + " OR ".join(terms) + ")", params


def order_by(keys: Sequence[SortKey], descending: bool) -> str:
    direction = " DESC" if descending else ""
    return ", ".join(f"{k.expr}{direction}{' NULLS LAST' if k.nullable else ''}" for k in keys)


# -- parsing --------------------------------------------------------------------------
def _parse_value(f: Filter, raw: str) -> Any:
    text = raw.strip()
    if not text:
        raise invalid(f.param, "must not be empty")
    if len(text) > MAX_TEXT:
        raise invalid(f.param, f"at most {MAX_TEXT} characters")
    if f.kind == "text":
        return text
    if f.kind == "uuid":
        try:
            return UUID(text)
        except ValueError:
            raise invalid(f.param, "must be a UUID") from None
    if f.kind == "datetime":
        return parse_datetime(f.param, text)
    if f.kind == "date":
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise invalid(f.param, "must be a date like 2024-05-31") from None
        try:
            return check_date(day)
        except ValueError as e:
            raise invalid(f.param, str(e)) from None
    if f.kind == "int":
        if not re.fullmatch(r"-?\d{1,18}", text):
            raise invalid(f.param, "must be a whole number")
        return int(text)
    if f.kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise invalid(f.param, "must be true or false")
    raise ValueError(f"unknown filter kind {f.kind!r}")


def parse_datetime(param: str, text: str) -> datetime:
    """An ISO 8601 time with an offset, or a date (its midnight UTC)."""
    try:
        if len(text) == 10:
            value = datetime.combine(date.fromisoformat(text), time(), UTC)
        else:
            value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(param, "must be an ISO 8601 time with an offset, or a date") from None
    if value.tzinfo is None:
        raise invalid(param, "must have a time zone offset (e.g. Z or +02:00)")
    try:
        return check_datetime(value)
    except ValueError as e:
        raise invalid(param, str(e)) from None


def _like(fragment: str) -> str:
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _condition(f: Filter, values: list[Any], principal: Principal) -> tuple[str, list[Any]] | None:
    column = f'"{f.column}"'
    if f.op == "=":
        if len(values) == 1:
            return f"{column} = %s", values
        return f"{column} = ANY(%s)", [values]
    if f.op in (">=", "<", "<=", ">"):
        return f"{column} {f.op} %s", values
    if f.op == "contains":
        return f"{column} @> %s::text[]", [values]
    if f.op == "caller":
        return (f"{column} = %s", [principal.id]) if values[0] else None
    if f.op == "search":
        query = str(values[0]).lower()
        patterns = [_like(query)]
        digits = "".join(ch for ch in query if ch.isdigit())
        if len(digits) >= 3 and _PHONE_QUERY.match(query) and digits != query:
            patterns.append(_like(digits))
        return "(" + " OR ".join(f"{column} ILIKE %s" for _ in patterns) + ")", patterns
    raise ValueError(f"unknown filter op {f.op!r}")


@dataclass
class ListQuery:
    """A parsed list request: WHERE conditions, sort, page size and position."""

    spec: ListSpec
    where: list[tuple[str, list[Any]]] = field(default_factory=list)
    sort_param: str = ""
    sort: Sort | None = None
    descending: bool = False
    limit: int = DEFAULT_LIMIT
    after: tuple[list[Any], Any] | None = None
    include_total: bool = False


def parse_query(spec: ListSpec, items: Sequence[tuple[str, str]], principal: Principal,
                fixed: Mapping[str, Any] | None = None) -> ListQuery:
    """Check the query string against ``spec``; ``fixed`` filters come from the path."""
    by_param = {f.param: f for f in spec.filters}
    given: dict[str, list[str]] = {}
    for name, value in items:
        if name not in by_param and name not in COMMON_PARAMS:
            allowed = ", ".join([*by_param, *COMMON_PARAMS])
            raise invalid(name, f"unknown parameter; this list takes {allowed}")
        given.setdefault(name, []).append(value)
    for name, values in given.items():
        f = by_param.get(name)
        if len(values) > 1 and (f is None or not f.repeatable):
            raise invalid(name, "give it once")

    q = ListQuery(spec)
    for name, values in given.items():
        f = by_param.get(name)
        if f is None:
            continue
        parsed = [_parse_value(f, v) for v in values]
        if f.personal and principal.role not in PERSONAL_DATA_ROLES:
            raise Problem(403, f"the {principal.role} role may not search personal data ({name})",
                          code="personal-data", field=name)
        cond = _condition(f, parsed, principal)
        if cond is not None:
            q.where.append(cond)
    for column, value in (fixed or {}).items():
        q.where.append((f'"{column}" = %s', [value]))

    q.sort_param = given.get("sort", [spec.default_sort])[0].strip()
    q.descending = q.sort_param.startswith("-")
    q.sort = spec.sort(q.sort_param.removeprefix("-"))
    if q.sort is None:
        raise invalid("sort", "must be one of " + ", ".join(
            n for s in spec.sorts for n in (s.name, "-" + s.name)))
    if q.sort.personal and principal.role not in PERSONAL_DATA_ROLES:
        raise Problem(403, f"the {principal.role} role may not sort by personal data ({q.sort.name})",
                      code="personal-data", field="sort")

    if "limit" in given:
        q.limit = _limit(given["limit"][0])
    if "include_total" in given:
        q.include_total = _flag("include_total")(given["include_total"][0])
    if "cursor" in given:
        q.after = decode_cursor(given["cursor"][0].strip(), q.sort_param, len(q.sort.keys))
    return q


# -- the declared parameters -------------------------------------------------------------
_KIND_TYPES: dict[str, Any] = {"text": str, "uuid": UUID, "datetime": datetime, "date": date,
                               "int": int, "bool": bool}


def _reading(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except RequestValidationError as e:
            reason = str(e.errors()[0]["msg"])
            raise PydanticCustomError("value_error", "{reason}", {"reason": reason}) from None
    return check


def _checked(parse: Callable[[str], Any]) -> BeforeValidator:
    """A validator that reads the raw text with ``parse`` and reports its refusal with
    the same words, so a declared parameter answers the 422 ``parse_query`` would."""
    return BeforeValidator(_reading(parse))


def _checked_each(parse: Callable[[str], Any]) -> BeforeValidator:
    """``_checked`` for the values of a repeated parameter, given as one list."""
    one = _reading(parse)

    def check(values: Any) -> Any:
        return [one(v) for v in values] if isinstance(values, list) else values
    return BeforeValidator(check)


def _limit(raw: str) -> int:
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise invalid("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _flag(param: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        flag = raw.strip().lower()
        if flag not in _TRUE | _FALSE:
            raise invalid(param, "must be true or false")
        return flag in _TRUE
    return parse


def _sort_names(spec: ListSpec) -> list[str]:
    return [n for s in spec.sorts for n in (s.name, "-" + s.name)]


def _sort_check(spec: ListSpec) -> Callable[[str], str]:
    names = _sort_names(spec)

    def parse(raw: str) -> str:
        name = raw.strip()
        if name not in names:
            raise invalid("sort", "must be one of " + ", ".join(names))
        return name
    return parse


def filter_parameter(f: Filter) -> Any:
    """The declared type of a filter: its value's type, checked by ``_parse_value``;
    a list of them when it may be repeated."""
    kind: Any = _KIND_TYPES[f.kind]
    value: Any = Annotated[kind, _checked(lambda raw: _parse_value(f, raw))]
    if f.repeatable:  # checked as a whole: a refusal names the parameter, not an item of it
        value = Annotated[list[kind], _checked_each(lambda raw: _parse_value(f, raw))]
    text = f.kind == "text" and not f.repeatable
    query = Query(alias=f.param, description=f.description or f.column,
                  min_length=1 if text else None, max_length=MAX_TEXT if text else None)
    return Annotated[value | None, query]


def list_parameters(spec: ListSpec) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that declares every query parameter of ``spec`` with its type
    (for the OpenAPI document and the first check of each value, in ``parse_query``'s
    words). ``parse_query`` still reads the whole query string: it refuses unknown and
    repeated parameters and what a role may not search or sort by."""
    sort_type = Literal[tuple(_sort_names(spec))]  # type: ignore[valid-type]
    params = [
        inspect.Parameter(f"f_{i}", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=filter_parameter(f))
        for i, f in enumerate(spec.filters)
    ]
    params += [
        inspect.Parameter("sort", inspect.Parameter.KEYWORD_ONLY, default=spec.default_sort, annotation=Annotated[
            sort_type, _checked(_sort_check(spec)),
            Query(description="The order: a name ascending, -name descending.")]),
        inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_LIMIT, annotation=Annotated[
            Annotated[int, Ge(1), Le(MAX_LIMIT)], _checked(_limit), Query(description="Rows per page.")]),
        inspect.Parameter("cursor", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            str | None, Query(description="The next_cursor of the previous page.")]),
        inspect.Parameter("include_total", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, _checked(_flag("include_total")),
            Query(description="true: the page also counts every row matching the filters.")]),
    ]

    async def declared(**_: Any) -> None:  # on the event loop: nothing to wait for
        return None

    declared.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    declared.__name__ = f"{spec.view}_parameters"
    return declared


# -- running ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None
    total: int | None

    def body(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor, "total": self.total}


def _where(conditions: Sequence[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    if not conditions:
        return "", []
    params: list[Any] = []
    for _, p in conditions:
        params += p
    return " WHERE " + " AND ".join(c for c, _ in conditions), params


def run_query(conn: psycopg.Connection[Any], q: ListQuery, principal: Principal) -> Page:
    """One page of the list (and the total, when asked)."""
    spec, sort = q.spec, q.sort
    assert sort is not None
    keys = (*sort.keys, col(spec.key, spec.key_type))
    conditions = list(q.where)
    filter_sql, filter_params = _where(conditions)
    if q.after is not None:
        values, key = q.after
        conditions.append(after_condition(keys, [*values, key], q.descending))
    where_sql, params = _where(conditions)
    extra = "".join(f", {k.expr} AS \"_s{i}\"" for i, k in enumerate(sort.keys))
    sql = (f"SELECT *{extra} FROM {spec.table}{where_sql}"
           f" ORDER BY {order_by(keys, q.descending)} LIMIT %s")
    rows = conn.execute(sql, [*params, q.limit + 1]).fetchall()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(q.sort_param, [last[f"_s{i}"] for i in range(len(sort.keys))],
                                    last[spec.key])
    total = None
    if q.include_total:
        row = conn.execute(f"SELECT count(*) AS n FROM {spec.table}{filter_sql}", filter_params).fetchone()
        total = int(row["n"]) if row else 0
    return Page([spec.view_row(r, principal) for r in rows], next_cursor, total)
