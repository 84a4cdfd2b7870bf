"""The one declaration of reach (api/access.py ``REACH``) gives a list its SQL filter
and a single record its check: for every role, record type and a set of sample rows (the
caller's own, a team-mate's, another team's, shared with the caller or a team-mate,
unowned, of customers in and out of reach, of a customer that does not exist), the filter
run on PostgreSQL and the check keep exactly the same rows."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from api.access import REACH, RECORD_TYPES, TEAM, rule_sql, rule_test

ME, MATE, OTHER = "me", "mate", "other"
ROLES = [*REACH, "stranger"]  # a role the declaration does not name reaches nothing
KINDS = [*RECORD_TYPES, "activity"]

#: the read table of each kind, with the columns the rules look at
TABLES = {
    "customer": ("customers", {"owner_id": "text", "shared_with": "text[]", "consents": "jsonb"}),
    "opportunity": ("opportunities", {"customer_id": "uuid", "owner_id": "text", "shared_with": "text[]"}),
    "interaction": ("interactions", {"customer_id": "uuid"}),
    "service_request": ("service_requests", {"customer_id": "uuid", "assignee_id": "text"}),
    "task": ("tasks", {"customer_id": "uuid", "assignee_id": "text"}),
    "activity": ("activities", {"customer_id": "uuid", "owner_id": "text", "aggregate_type": "text"}),
}
PEOPLE = [ME, MATE, OTHER, None]  # None: unowned, unassigned
SHARES: list[list[str]] = [[], [ME], [MATE], [OTHER, MATE]]
CONSENTS = [{}, {"email": True}, {"sms": False}, {"sms": False, "phone": True}]


def _customers() -> list[dict[str, Any]]:
    return [{"id": uuid.uuid4(), "owner_id": owner, "shared_with": shared, "consents": consents}
            for owner, shared, consents in itertools.product(PEOPLE, SHARES, CONSENTS)]


def _rows(kind: str, customer_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    columns = TABLES[kind][1]
    choices: dict[str, list[Any]] = {"customer_id": [*customer_ids, uuid.uuid4()]}  # and one that is gone
    if "owner_id" in columns:
        choices["owner_id"] = PEOPLE
    if "shared_with" in columns:
        choices["shared_with"] = SHARES
    if "assignee_id" in columns:
        choices["assignee_id"] = PEOPLE
    if "aggregate_type" in columns:
        choices["aggregate_type"] = ["customer", "task"]
    names = list(choices)
    return [{"id": uuid.uuid4(), **dict(zip(names, values, strict=True))}
            for values in itertools.product(*(choices[n] for n in names))]


@pytest.fixture(scope="module")
def samples(database_url: str) -> Iterator[tuple[psycopg.Connection[Any], dict[str, list[dict[str, Any]]]]]:
    customers = _customers()
    ids = [c["id"] for c in customers]
    rows = {"customer": customers, **{k: _rows(k, ids) for k in KINDS if k != "customer"}}
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        for kind, (table, columns) in TABLES.items():
            conn.execute(f"CREATE TEMP TABLE {table} (id uuid PRIMARY KEY, "
                         + ", ".join(f'"{c}" {t}' for c, t in columns.items()) + ")")
            names = ["id", *columns]
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
                    [[json.dumps(r[n]) if n == "consents" else r[n] for n in names] for r in rows[kind]])
        yield conn, rows


def _people(role: str) -> list[str]:
    return [ME, MATE] if role in REACH and REACH[role].people == TEAM else [ME]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", ROLES)
def test_the_filter_and_the_check_keep_the_same_rows(
        samples: tuple[psycopg.Connection[Any], dict[str, list[dict[str, Any]]]], role: str, kind: str) -> None:
    conn, rows = samples
    people = _people(role)
    customers = {c["id"]: c for c in rows["customer"]}

    def customer_reached(customer_id: uuid.UUID) -> bool:
        c = customers.get(customer_id)
        return c is not None and rule_test(role, "customer", SimpleNamespace(**c), frozenset(people), customer_reached)

    checked = {r["id"] for r in rows[kind]
               if rule_test(role, kind, SimpleNamespace(**r), frozenset(people), customer_reached)}
    condition = rule_sql(role, kind, people, customers_table="pg_temp.customers") or ("true", [])
    filtered = {r["id"] for r in conn.execute(
        f"SELECT id FROM pg_temp.{TABLES[kind][0]} WHERE {condition[0]}", condition[1]).fetchall()}
    assert filtered == checked
    # the samples tell the rules apart: every limited rule keeps some rows and leaves some
    rule = REACH[role].rules.get(kind, ()) if role in REACH else ()
    if rule is None:
        assert len(checked) == len(rows[kind])
    elif not rule:
        assert not checked
    else:
        assert 0 < len(checked) < len(rows[kind])


def test_a_team_reaches_more_than_its_member() -> None:
    """The sample people matter: a manager's team-mate's customer is in reach, a sales
    rep's is not (the rule is the same, the people differ)."""
    mate = SimpleNamespace(owner_id=MATE, shared_with=[], consents={})
    assert rule_test("manager", "customer", mate, frozenset(_people("manager")), lambda _: False)
    assert not rule_test("sales_rep", "customer", mate, frozenset(_people("sales_rep")), lambda _: False)
