"""Customer names kept inside a read model that shows them beside other records.

A projection cannot read another projection's tables, so a read model whose rows show
their customer's name (the pipeline board, the service queue) keeps its own small table
of names: one row per customer, with the ids of the rows that show that name, so a
rename reaches every one of them.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from events import customer as ce
from projections.base import BatchView, From, Projection, Table

#: The event fields a customer's name comes from.
NAME_SOURCES = (From(ce.CustomerRegistered, "name"), From(ce.CustomerDetailsChanged, "personal_changes"))


def names_table(name: str) -> Table:
    """The helper table: the customer's name and the ids of the rows that show it."""
    return Table(
        name,
        {
            "id": "uuid",
            "version": "int NOT NULL",  # the customer's version it was last changed at
            "name": "text",  # None once the customer's personal data was erased
            "record_ids": "uuid[] NOT NULL DEFAULT '{}'",
        },
        key="id",
        subject="id",
        sources={"name": NAME_SOURCES},
    )


def keep_customer_names(projection: type[Projection], names: str, records: str) -> None:
    """Register the handlers that keep ``names`` up to date and pass a rename on to the
    ``customer_name`` of the ``records`` rows listed for that customer."""

    def _me(e: Any) -> list[tuple[str, Any]]:
        return [(names, e.originator_id)]

    @projection.handles(ce.CustomerRegistered, needs=_me)
    def _registered(view: BatchView, e: ce.CustomerRegistered) -> None:
        row = view.get(names, e.originator_id)
        if row is not None and row["version"] >= e.originator_version:
            return
        view.put(names, {"id": e.originator_id, "version": e.originator_version, "name": e.name,
                         "record_ids": row["record_ids"] if row is not None else []})

    @projection.handles(ce.CustomerDetailsChanged, needs=_me)
    def _details(view: BatchView, e: ce.CustomerDetailsChanged) -> None:
        change = (e.personal_changes or {}).get("name") or e.changes.get("name")
        if change is None:
            return
        row = view.get(names, e.originator_id)
        if row is None or row["version"] >= e.originator_version:
            return
        name = change.get("after")
        view.put(names, {**row, "version": e.originator_version, "name": name})
        ids = row["record_ids"]
        if ids:
            # One query for all of them (which rows cannot be known before reading ``names``).
            view.prefetch({records: set(ids)})
            for record_id in ids:
                if (record := view.get(records, record_id)) is not None and record["customer_name"] != name:
                    view.put(records, {**record, "customer_name": name})


def attach(view: BatchView, names: str, customer_id: UUID, record_id: UUID) -> str | None:
    """List the record under its customer (so renames reach it); the customer's name."""
    row = view.get(names, customer_id)
    if row is None:
        return None
    if record_id not in row["record_ids"]:
        view.put(names, {**row, "record_ids": [*row["record_ids"], record_id]})
    name: str | None = row["name"]
    return name
