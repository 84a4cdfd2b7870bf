"""Record-level access: which records a caller may reach.

Two layers, both decided here for every route, from one declaration (``REACH``):

* **By type.** A role may read the record types ``REACH`` names for it (``READABLE``). A
  list or record of another type answers 403: it says nothing about any one record.
* **By record.** Within a readable type, a record outside the caller's reach answers 404,
  exactly like a record that does not exist, on every route (lists and search, records,
  events, history, time travel, timelines, commands, analytics that name customers).

``REACH`` gives, per role and record type, the ways (``Term``) a record can be within
reach, or ``EVERY`` record. Each term is written once as an SQL condition over the read
tables and once as a test of a record rebuilt from its events, side by side, so a list and
a single record can not disagree. "People" are the caller, and for a role whose reach is
its team (``TEAM``: the manager) every member of their team as the ``users`` read table
has it.

The activity feed (``activity``) lists the events of the readable types under their
customer; it is declared like a record type but is not one (it answers 403 unless the role
reads customers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from fastapi import Request

from commands import AGGREGATE_TYPES, Aggregate, Forbidden, NotFound, no_record
from commands.application import CrmApplication, Principal
from projections.store import READ_SCHEMA
from api.problems import Problem

RECORD_TYPES = ("customer", "opportunity", "interaction", "service_request", "task")
#: The record type of each read view (the activity feed is read with the customers).
VIEW_TYPES = {"customers": "customer", "opportunities": "opportunity", "interactions": "interaction",
              "service_requests": "service_request", "tasks": "task", "activities": "customer"}
#: The entry of ``REACH`` each read view is filtered by.
VIEW_RULES = {**VIEW_TYPES, "activities": "activity"}
#: Each record type in words, many of them.
PLURALS = {"customer": "customers", "opportunity": "opportunities", "interaction": "interactions",
           "service_request": "service requests", "task": "tasks"}

_CUSTOMERS = f'"{READ_SCHEMA}"."customers"'
_USERS = f'"{READ_SCHEMA}"."users"'

SQL = tuple[str, list[Any]]
#: Whether the customer with this id is within reach (for ``OF_CUSTOMER``).
CustomerTest = Callable[[UUID], bool]


# -- the terms: one way each a record can be within reach ---------------------------------
@dataclass(frozen=True)
class Term:
    """One way a record is within reach: its SQL over a read table's row and its test of a
    record (an aggregate, or any object with the same attributes), side by side."""

    name: str
    #: (people, the SQL of the customers in reach) -> condition and its parameters
    sql: Callable[[list[str], SQL], SQL]
    #: (record, people, is this customer in reach) -> bool
    test: Callable[[Any, frozenset[str], CustomerTest], bool]


OWNED = Term("owned", lambda people, _: ('"owner_id" = ANY(%s)', [people]),
             lambda r, people, _: getattr(r, "owner_id", None) in people)
SHARED = Term("shared", lambda people, _: ('"shared_with" && %s::text[]', [people]),
              lambda r, people, _: bool(people & set(getattr(r, "shared_with", None) or ())))
ASSIGNED = Term("assigned", lambda people, _: ('"assignee_id" = ANY(%s)', [people]),
                lambda r, people, _: getattr(r, "assignee_id", None) in people)
#: a customer that granted consent to at least one channel
CONSENTED = Term("consented", lambda people, _: ("jsonb_path_exists(\"consents\", '$.* ? (@ == true)')", []),
                 lambda r, people, _: any(v is True for v in (getattr(r, "consents", None) or {}).values()))
#: of a customer within reach (by the customer rule of the same role; ``rule_sql`` gives
#: the term the condition ``"customer_id" IN (the customers in reach)``)
OF_CUSTOMER = Term("of_customer", lambda people, customers: customers,
                   lambda r, people, customer_reached: getattr(r, "customer_id", None) is not None
                   and customer_reached(r.customer_id))

#: A rule: the terms any of which puts a record in reach; ``EVERY``: no record-level limit.
Rule = tuple[Term, ...] | None
EVERY: Rule = None

SELF, TEAM = "self", "team"


@dataclass(frozen=True)
class RoleReach:
    """One role's reach: whose records are "the people's", and the rule of each record
    type it may read (a type not named answers 403)."""

    rules: Mapping[str, Rule]
    people: str = SELF


def _everything(*types: str) -> RoleReach:
    return RoleReach({t: EVERY for t in (*types, "activity")})


_ALL = RECORD_TYPES
_OWN_OR_TEAM: Mapping[str, Rule] = {
    "customer": (OWNED, SHARED),
    "opportunity": (OWNED, SHARED, OF_CUSTOMER),
    "interaction": (OF_CUSTOMER,),
    "service_request": (ASSIGNED, OF_CUSTOMER),
    "task": (ASSIGNED, OF_CUSTOMER),
    "activity": (OF_CUSTOMER,),
}

#: THE declaration: per role, the record types it may read and which of them it reaches.
REACH: dict[str, RoleReach] = {
    "admin": _everything(*_ALL),
    "manager": RoleReach(_OWN_OR_TEAM, people=TEAM),
    "sales_rep": RoleReach(_OWN_OR_TEAM, people=SELF),
    "service_agent": _everything("customer", "interaction", "service_request", "task"),
    "marketing": RoleReach({"customer": (CONSENTED,), "activity": ()}),  # reads no feed
    "analyst": _everything(*_ALL),
    "auditor": _everything(*_ALL),
    "data_admin": _everything(*_ALL),
    "integration": _everything(*_ALL),
}
_NOTHING = RoleReach({})
for _role, _reach in REACH.items():  # a customer's reach is its own (no loop through OF_CUSTOMER)
    if OF_CUSTOMER in (_reach.rules.get("customer") or ()):
        raise ValueError(f"the {_role} role reaches customers through their customer")

#: The record types each role may read at all (others: 403); web/src/roles.ts mirrors it.
READABLE: dict[str, frozenset[str]] = {
    role: frozenset(t for t in r.rules if t in RECORD_TYPES) for role, r in REACH.items()}


def rule_sql(role: str, kind: str, people: list[str], customers_table: str = _CUSTOMERS) -> SQL | None:
    """The WHERE condition that keeps rows of ``kind`` (a record type, or ``activity``)
    within the role's reach; None: every row."""
    rules = REACH.get(role, _NOTHING).rules
    rule = rules.get(kind, ())
    if rule is None:  # EVERY
        return None
    if not rule:
        return "false", []
    customers: SQL = ("true", [])
    if OF_CUSTOMER in rule:
        inner = rule_sql(role, "customer", people, customers_table) or ("true", [])
        customers = f'"customer_id" IN (SELECT id FROM {customers_table} WHERE {inner[0]})', inner[1]
    parts = [term.sql(people, customers) for term in rule]
    return "(" + " OR ".join(p[0] for p in parts) + ")", [v for p in parts for v in p[1]]


def rule_test(role: str, kind: str, record: Any, people: frozenset[str],
              customer_reached: CustomerTest) -> bool:
    """Whether the role reaches ``record`` of ``kind``: the same rule as ``rule_sql``."""
    rule = REACH.get(role, _NOTHING).rules.get(kind, ())
    if rule is None:  # EVERY
        return True
    return any(term.test(record, people, customer_reached) for term in rule)


def readable(principal: Principal, aggregate_type: str) -> None:
    """403 unless the role may read records of this type at all."""
    if aggregate_type not in READABLE.get(principal.role, frozenset()):
        raise Problem(403, f"the {principal.role} role may not read {PLURALS[aggregate_type]}", code="forbidden")


@dataclass
class Reach:
    """What one caller reaches; built once per request (``reach_of``)."""

    principal: Principal
    #: the caller, and for a team's reach their team's members
    people: list[str]
    _customers: dict[UUID, bool] = field(default_factory=dict)

    @property
    def unlimited(self) -> bool:
        """Every record of every type the role reads (no record-level check)."""
        return all(rule is EVERY for rule in REACH.get(self.principal.role, _NOTHING).rules.values())

    # -- SQL over the read tables ------------------------------------------------------
    def condition(self, view: str) -> SQL | None:
        """The WHERE condition that keeps a list of ``view`` within reach (None: all)."""
        readable(self.principal, VIEW_TYPES[view])
        own = rule_sql(self.principal.role, VIEW_RULES[view], self.people)
        types = READABLE[self.principal.role]
        if view == "activities" and len(types) < len(RECORD_TYPES):
            own = own or ("true", [])
            return f'("aggregate_type" = ANY(%s) AND {own[0]})', [sorted(types), *own[1]]
        return own

    # -- records rebuilt from their events ---------------------------------------------
    def reaches(self, app: CrmApplication, aggregate: Aggregate) -> bool:
        ok = rule_test(self.principal.role, aggregate.type_name, aggregate, frozenset(self.people),
                       lambda customer_id: self.reaches_customer_id(app, customer_id))
        if aggregate.type_name == "customer":
            self._customers[aggregate.id] = ok
        return ok

    def reaches_customer_id(self, app: CrmApplication, customer_id: UUID) -> bool:
        known = self._customers.get(customer_id)
        if known is None:
            try:
                return self.reaches(app, app.load(AGGREGATE_TYPES["customer"], customer_id))
            except NotFound:
                known = False
            self._customers[customer_id] = known
        return known

    def require(self, app: CrmApplication, aggregate: Aggregate) -> None:
        """404 (as if it did not exist) unless the record is within reach."""
        readable(self.principal, aggregate.type_name)
        if not self.reaches(app, aggregate):
            raise no_record(aggregate.type_name, aggregate.id)

    def guard(self, app: CrmApplication) -> Callable[[Aggregate, bool], None]:
        """The check a command runs on every record it loads, and on what it creates."""

        def check(aggregate: Aggregate, created: bool) -> None:
            if aggregate.type_name not in RECORD_TYPES:  # users, teams, keys: their routes decide
                return
            if not created:
                self.require(app, aggregate)
            elif not self.reaches(app, aggregate):
                raise Forbidden(
                    f"the {self.principal.role} role may only create records it can reach "
                    "(its own, or its team's)")

        return check


def team_members(conn: psycopg.Connection[Any], team_id: str) -> list[str]:
    """The ids of the team's users, from the ``users`` read table (none if not built)."""
    try:
        rows = conn.execute(f"SELECT id::text AS id FROM {_USERS} WHERE team_id::text = %s",
                            (team_id,)).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return []
    return [r["id"] for r in rows]


def reach_reads_database(principal: Principal) -> bool:
    """Whether ``reach_of`` may ask the database (a team's reach); else it is quick."""
    return REACH.get(principal.role, _NOTHING).people == TEAM and bool(principal.team_id)


def reach_of(request: Request, principal: Principal, conn: psycopg.Connection[Any] | None = None) -> Reach:
    """The caller's reach, computed once per request. A read of the read models passes its
    connection, taken once they reflect the request's ``min_position`` (a team change the
    caller just made is then seen)."""
    cached: Reach | None = getattr(request.state, "reach", None)
    if cached is not None and cached.principal == principal:
        return cached
    people = [principal.id]
    read = request.app.state.services.read
    if reach_reads_database(principal) and (conn is not None or read is not None):
        assert principal.team_id is not None
        with nullcontext(conn) if conn is not None else read.pool.connection() as c:
            people += [m for m in team_members(c, principal.team_id) if m != principal.id]
    reach = Reach(principal, people)
    request.state.reach = reach
    return reach
