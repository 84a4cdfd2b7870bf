"""Every event field the DuckDB analytics SQL reads exists on its event type.

The SQL of ``projections/analytics`` (schema.py, store.py) reads the events' JSON payload
by name (``payload->>'amount'``), so renaming an event field would pass every type check
and leave a column NULL. Each JSON path is mapped to the event types its statement
filters on (the ``FILTER (WHERE event_type ...)`` right after it, else the types and
aggregate types the statement names) and must name a field of at least one of them, in
its current ``class_version``; never a personal one (those are sealed, DuckDB never has
them).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import events  # noqa: F401  (registers every event type)
from events.base import CrmEvent, all_event_types
from analytics import schema as analytics_schema
from analytics import store as analytics_store

MODULES = (analytics_schema, analytics_store)
TYPES = all_event_types()
#: a JSON path on the payload (``payload->>'f'``, ``d.data->'f'``), on an alias of a
#: payload array's items (``line->>'sku'``), or a JSONPath (``'$.f'``)
PATH = re.compile(r"\b(?P<base>\w+)\s*->>?\s*'(?P<field>\w+)'|'\$\.(?P<jsonpath>\w+)")
#: ``unnest(CAST(payload->'lines' AS JSON[])) AS line``: an alias of an array field's items
ALIAS = re.compile(r"payload\s*->\s*'(?P<field>\w+)'\s+AS\s+JSON\[\]\)\)\s+AS\s+(?P<alias>\w+)")
LITERAL = re.compile(r"'([A-Za-z_]\w*)'")
#: a filter on the aggregate type (a CASE on it is not one)
AGGREGATE = re.compile(r"(?:WHERE|AND)\s+aggregate_type\s*=\s*'(\w+)'")
#: ``event_type = 'X' AND <path>``: the path is read on X
GUARD = re.compile(r"event_type\s*=\s*'(\w+)'\s+AND\s+\(?\s*$")
FILTER = re.compile(r"FILTER\s*\(\s*WHERE\b")
#: what ends the expression a path is part of, before a FILTER could apply to it
EXPRESSION_END = re.compile(r"\bAS\s+\w+\s*(?:,|\n|$)|\b(?:FROM|SELECT|WHERE)\b")


def _strings(value: Any, seen: set[int]) -> Iterator[str]:
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _strings(v, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name), seen)


def statements() -> list[str]:
    """The SQL texts: every module-level string (rendered, as DuckDB receives it), the
    view and comment DDL, and every string constant written inside a function."""
    seen: set[int] = set()
    out = [s for m in MODULES for v in vars(m).values() for s in _strings(v, seen)]
    out += analytics_schema.view_ddl() + analytics_schema.comment_ddl()
    for module in MODULES:
        tree = ast.parse(Path(module.__file__ or "").read_text())
        out += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return [s for s in dict.fromkeys(out) if PATH.search(s) or LITERAL.search(s)]


def _named_types(sql: str) -> set[str]:
    named = {t for t in LITERAL.findall(sql) if t in TYPES}
    for aggregate in AGGREGATE.findall(sql):
        named |= {n for n, c in TYPES.items() if c.aggregate_type == aggregate}
    return named


def _filter_after(sql: str, at: int) -> str | None:
    """The ``FILTER (WHERE ...)`` clause of the aggregate a path at ``at`` is part of."""
    m = FILTER.search(sql, at)
    if m is None or EXPRESSION_END.search(sql[at:m.start()]):
        return None
    depth, i = 1, sql.index("(", m.start())
    for j in range(i + 1, len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[j], 0)
        if depth == 0:
            return sql[m.start():j + 1]
    return None


def _fields(cls: type[CrmEvent]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"originator_id", "originator_version", "timestamp", "meta"}


def _item_fields(cls: type[CrmEvent], field: str) -> set[str]:
    hint = typing.get_type_hints(cls)[field]
    items = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return {f.name for item in items for f in dataclasses.fields(item)}  # type: ignore[arg-type]


def reads() -> list[tuple[str, str, str, set[str]]]:
    """(base, field, the SQL around it, candidate event types) for every path read."""
    out = []
    for sql in statements():
        aliases = {m["alias"]: m["field"] for m in ALIAS.finditer(sql)}
        statement_types = _named_types(sql) or set(TYPES)
        for m in PATH.finditer(sql):
            if m["base"] is not None and m["base"] not in ("payload", "data", *aliases):
                continue  # a JSON object built by the SQL itself
            guard = GUARD.search(sql, max(0, m.start() - 120), m.start())
            clause = _filter_after(sql, m.start())
            types = ({guard[1]} if guard else set()) or (_named_types(clause) if clause else set()) \
                or statement_types
            base = m["base"] or "payload"
            around = sql[max(0, m.start() - 60):m.end() + 20].replace("\n", " ")
            out.append((base, m["field"] or m["jsonpath"], around, types))
    return out


READS = reads()


def test_the_analytics_sql_reads_event_fields() -> None:
    assert len(READS) > 40  # the parser finds the paths (about 80 today)
    assert {"amount", "pipeline", "to_stage", "rating", "lines", "sku"} <= {f for _, f, _, _ in READS}


@pytest.mark.parametrize("base,field,around,types", READS, ids=[f"{r[0]}.{r[1]}" for r in READS])
def test_every_field_read_exists_on_its_event_type(base: str, field: str, around: str,
                                                   types: set[str]) -> None:
    classes = [TYPES[t] for t in sorted(types)]
    if base in ("payload", "data"):
        having = [c for c in classes if field in _fields(c)]
    else:  # an item of an array field: the field's item type
        having = [c for c in classes if any(field in _item_fields(c, f) for f in _fields(c))]
    assert having, (f"the analytics SQL reads {field!r} ({around!r}), which no event type among "
                    f"{sorted(types)} has in its current class_version")
    personal = [c.type_name for c in having if field in c.personal_fields]
    assert not personal, f"the analytics SQL reads {field!r}, personal on {personal}: DuckDB never has it"


def test_every_event_type_the_sql_names_exists() -> None:
    camel = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z]*)+$")
    named = {t for sql in statements() for t in LITERAL.findall(sql) if camel.match(t)}
    unknown = sorted(named - set(TYPES))
    assert not unknown, f"the analytics SQL names event types that do not exist: {unknown}"
    aggregates = {c.aggregate_type for c in TYPES.values()}
    named_aggregates = {a for sql in statements() for a in AGGREGATE.findall(sql)}
    assert named_aggregates <= aggregates, sorted(named_aggregates - aggregates)
