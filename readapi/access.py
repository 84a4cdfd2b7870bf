"""Record-level access: which records a caller may reach.

Two layers, both decided here for every route:

* **By type.** ``READABLE`` names the record types each role may read at all. A list or
  record of another type answers 403: it says nothing about any one record.
* **By record.** Within a readable type, a record outside the caller's reach answers 404,
  exactly like a record that does not exist, on every route (lists and search, records,
  events, history, time travel, timelines, commands, analytics that name customers).

Reach of the limited roles ("people" are the caller, and for a manager every member of
their team as the ``users`` read table has it):

* **customer:** owned by one of the people, or shared with one of them;
* **opportunity:** owned by or shared with one of the people, or of a customer in reach;
* **interaction:** of a customer in reach;
* **service request, task:** assigned to one of the people, or of a customer in reach;
* **marketing** reaches the customers that granted consent to at least one channel.

Every other role reaches every record of the types it may read.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from fastapi import Request

from commands import AGGREGATE_TYPES, Aggregate, Forbidden, NotFound, no_record
from commands.application import CrmApplication, Principal
from projections.store import READ_SCHEMA
from readapi.problems import Problem

RECORD_TYPES = ("customer", "opportunity", "interaction", "service_request", "task")
#: The record type of each read view (the activity feed is read with the customers).
VIEW_TYPES = {"customers": "customer", "opportunities": "opportunity", "interactions": "interaction",
              "service_requests": "service_request", "tasks": "task", "activities": "customer"}
_ALL = frozenset(RECORD_TYPES)
#: The record types each role may read at all (others: 403).
READABLE: dict[str, frozenset[str]] = {
    "admin": _ALL,
    "manager": _ALL,
    "sales_rep": _ALL,
    "service_agent": frozenset({"customer", "interaction", "service_request", "task"}),
    "marketing": frozenset({"customer"}),
    "analyst": _ALL,
    "auditor": _ALL,
    "data_admin": _ALL,
    "integration": _ALL,
}
#: Each record type in words, many of them.
PLURALS = {"customer": "customers", "opportunity": "opportunities", "interaction": "interactions",
           "service_request": "service requests", "task": "tasks"}
#: Roles whose reach is their own (and their team's, or shared) records.
LIMITED = frozenset({"sales_rep", "manager"})
#: Roles whose reach among customers is the ones that gave consent.
CONSENTED_ONLY = frozenset({"marketing"})

_CUSTOMERS = f'"{READ_SCHEMA}"."customers"'
_USERS = f'"{READ_SCHEMA}"."users"'
#: A customer row that granted consent to at least one channel.
_CONSENTED = "jsonb_path_exists(\"consents\", '$.* ? (@ == true)')"


def readable(principal: Principal, aggregate_type: str) -> None:
    """403 unless the role may read records of this type at all."""
    if aggregate_type not in READABLE.get(principal.role, frozenset()):
        raise Problem(403, f"the {principal.role} role may not read {PLURALS[aggregate_type]}", code="forbidden")


@dataclass
class Reach:
    """What one caller reaches; built once per request (``reach_of``)."""

    principal: Principal
    #: the caller, and for a manager their team's members; None: no record-level limit
    people: list[str] | None
    consented_only: bool = False
    _customers: dict[UUID, bool] = field(default_factory=dict)

    @property
    def unlimited(self) -> bool:
        return self.people is None and not self.consented_only

    # -- SQL over the read tables ------------------------------------------------------
    def _customer_sql(self) -> tuple[str, list[Any]]:
        if self.consented_only:
            return _CONSENTED, []
        assert self.people is not None
        return '("owner_id" = ANY(%s) OR "shared_with" && %s::text[])', [self.people, self.people]

    def _of_customer_sql(self) -> tuple[str, list[Any]]:
        inner, params = self._customer_sql()
        return f'"customer_id" IN (SELECT id FROM {_CUSTOMERS} WHERE {inner})', params

    def condition(self, view: str) -> tuple[str, list[Any]] | None:
        """The WHERE condition that keeps a list of ``view`` within reach (None: all)."""
        readable(self.principal, VIEW_TYPES[view])
        types = READABLE[self.principal.role]
        if view == "activities" and types != _ALL:
            own, params = self.condition_of_records(view) or ("true", [])
            return f'("aggregate_type" = ANY(%s) AND {own})', [sorted(types), *params]
        return self.condition_of_records(view)

    def condition_of_records(self, view: str) -> tuple[str, list[Any]] | None:
        if self.unlimited:
            return None
        if view == "customers":
            return self._customer_sql()
        of_customer, params = self._of_customer_sql()
        if self.consented_only:  # marketing reads customers only; a stray view is empty
            return "false", []
        if view == "opportunities":
            return (f'("owner_id" = ANY(%s) OR "shared_with" && %s::text[] OR {of_customer})',
                    [self.people, self.people, *params])
        if view in ("service_requests", "tasks"):
            return f'("assignee_id" = ANY(%s) OR {of_customer})', [self.people, *params]
        if view in ("interactions", "activities"):
            return of_customer, params
        raise ValueError(f"no reach rule for the view {view!r}")

    # -- records rebuilt from their events ---------------------------------------------
    def reaches(self, app: CrmApplication, aggregate: Aggregate) -> bool:
        if self.unlimited:
            return True
        kind = aggregate.type_name
        if kind == "customer":
            return self._reaches_customer(aggregate)
        if self.consented_only:
            return False
        people = set(self.people or ())
        if kind == "opportunity":
            if getattr(aggregate, "owner_id", None) in people or people & set(aggregate.shared_with):  # type: ignore[attr-defined]
                return True
        elif kind in ("service_request", "task"):
            if getattr(aggregate, "assignee_id", None) in people:
                return True
        customer_id = getattr(aggregate, "customer_id", None)
        return customer_id is not None and self.reaches_customer_id(app, customer_id)

    def reaches_customer_id(self, app: CrmApplication, customer_id: UUID) -> bool:
        known = self._customers.get(customer_id)
        if known is None:
            try:
                known = self._reaches_customer(app.load(AGGREGATE_TYPES["customer"], customer_id))
            except NotFound:
                known = False
            self._customers[customer_id] = known
        return known

    def _reaches_customer(self, customer: Any) -> bool:
        if self.consented_only:
            return any(customer.consents.values())
        people = set(self.people or ())
        ok = customer.owner_id in people or bool(people & set(customer.shared_with))
        self._customers[customer.id] = ok
        return ok

    def require(self, app: CrmApplication, aggregate: Aggregate) -> None:
        """404 (as if it did not exist) unless the record is within reach."""
        readable(self.principal, aggregate.type_name)
        if not self.reaches(app, aggregate):
            raise no_record(aggregate.type_name, aggregate.id)

    def guard(self, app: CrmApplication) -> Callable[[Aggregate, bool], None]:
        """The check a command runs on every record it loads, and on what it creates."""

        def check(aggregate: Aggregate, created: bool) -> None:
            if aggregate.type_name not in _ALL:  # users, teams, keys: their routes decide
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
    """Whether ``reach_of`` may ask the database (a manager's team); else it is quick."""
    return principal.role == "manager" and bool(principal.team_id)


def reach_of(request: Request, principal: Principal, conn: psycopg.Connection[Any] | None = None) -> Reach:
    """The caller's reach, computed once per request. A read of the read models passes its
    connection, taken once they reflect the request's ``min_position`` (a team change the
    caller just made is then seen)."""
    cached: Reach | None = getattr(request.state, "reach", None)
    if cached is not None and cached.principal == principal:
        return cached
    people: list[str] | None = None
    if principal.role in LIMITED:
        people = [principal.id]
        read = request.app.state.services.read
        if principal.role == "manager" and principal.team_id and (conn is not None or read is not None):
            with nullcontext(conn) if conn is not None else read.pool.connection() as c:
                people += [m for m in team_members(c, principal.team_id) if m != principal.id]
    reach = Reach(principal, people, consented_only=principal.role in CONSENTED_ONLY)
    request.state.reach = reach
    return reach
