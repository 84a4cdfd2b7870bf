"""What a read model is: a name, a version, tables, and one handler per event type.

Handlers see one batch of events at a time through a ``BatchView``: rows are read
from the database once per batch (prefetched by key), changed in memory, and written
back in bulk with the batch's tracking position, in one transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from events.base import CrmEvent

Row = dict[str, Any]


@dataclass(frozen=True)
class From:
    """An event field a read-model column is filled from (directly or by derivation).

    A column filled from a field the event type marks personal (``personal_fields``) is
    one of its table's ``personal`` columns: masked by the API, reset by an erasure."""

    event: type[CrmEvent]
    field: str

    def __post_init__(self) -> None:
        if self.field not in {f.name for f in dataclasses.fields(self.event)}:
            raise TypeError(f"{self.event.__name__} has no field {self.field!r}")

    @property
    def personal(self) -> bool:
        return self.field in self.event.personal_fields


@dataclass(frozen=True)
class Table:
    """One read table. ``columns`` maps each column to its SQL type; ``key`` is the
    primary key column. ``indexes`` are column lists or raw index expressions written
    with ``{table}`` for the qualified table name."""

    name: str
    columns: dict[str, str]
    key: str
    indexes: tuple[str, ...] = ()
    #: rows are only ever inserted (feeds); no prefetch, no update
    append_only: bool = False
    #: the column naming the customer (data subject) a row is about
    subject: str | None = None
    #: per column, the event fields it is filled from (see ``From``); ``personal`` is
    #: derived from them
    sources: Mapping[str, tuple[From, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [c for c in self.sources if c not in self.columns]
        if unknown:
            raise TypeError(f"table {self.name}: sources name unknown columns {unknown}")

    @property
    def personal(self) -> tuple[str, ...]:
        """The columns filled from a personal event field, in column order: the API masks
        them for roles that may not read personal data; an erasure of the row's
        ``subject`` resets them to their defaults."""
        return tuple(c for c in self.columns
                     if any(s.personal for s in self.sources.get(c, ())))

    def create_statements(self, schema: str) -> list[str]:
        cols = ", ".join(f'"{c}" {t}' for c, t in self.columns.items())
        qualified = f'"{schema}"."{self.name}"'
        out = [f"CREATE TABLE {qualified} ({cols}, PRIMARY KEY (\"{self.key}\"))"]
        for i, index in enumerate(self.indexes):
            if index.upper().startswith("CREATE "):
                out.append(index.format(table=qualified, schema=f'"{schema}"', name=f"{self.name}_x{i}"))
            else:
                out.append(f'CREATE INDEX "{self.name}_x{i}" ON {qualified} ({index})')
        return out


Handler = Callable[["BatchView", Any], None]
Needs = Callable[[Any], Iterable[tuple[str, Any]]]


@dataclass
class On:
    """A handler and the rows (table, key) it reads, so they can be prefetched."""

    handler: Handler
    needs: Needs


class Projection:
    """A read model. Subclasses set ``name``, ``version``, ``tables`` and register
    handlers with ``handles``. Bump ``version`` when the tables or the handlers change
    meaning; a rebuild then builds the new version beside the old."""

    name: ClassVar[str]
    version: ClassVar[int]
    tables: ClassVar[tuple[Table, ...]]
    _on: ClassVar[dict[str, list[On]]]
    _tables_by_name: ClassVar[dict[str, Table]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._on = {}

    @classmethod
    def handles(
        cls, *event_types: type[CrmEvent], needs: Needs | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: this function applies these event types to the view."""

        def register(fn: Handler) -> Handler:
            for et in event_types:
                cls._on.setdefault(et.type_name, []).append(On(fn, needs or (lambda e: ())))
            return fn

        return register

    @classmethod
    def table(cls, name: str) -> Table:
        by_name: dict[str, Table] | None = cls.__dict__.get("_tables_by_name")
        if by_name is None:
            by_name = {t.name: t for t in cls.tables}
            cls._tables_by_name = by_name
        return by_name[name]

    @classmethod
    def topics(cls) -> list[str]:
        return sorted(cls._on)

    @classmethod
    def handlers_for(cls, type_name: str) -> list[On]:
        return cls._on.get(type_name, [])


class BatchView:
    """The rows one batch reads and writes, held in memory until the batch commits.

    ``get`` returns the row as the batch sees it (``None`` if absent); ``put`` replaces a
    whole row, ``update`` changes some columns, ``delete`` removes it, ``insert`` adds a
    row to an append-only table. An event's changes can be undone (``rollback_event``)
    if its handler fails, so a parked event leaves no trace.
    """

    _MISSING = object()

    def __init__(self, projection: type[Projection], loader: Callable[[Table, list[Any]], list[Row]]):
        self.projection = projection
        self._loader = loader
        self.rows: dict[str, dict[Any, Row | None]] = {t.name: {} for t in projection.tables}
        self.dirty: dict[str, set[Any]] = {t.name: set() for t in projection.tables}
        self.appended: dict[str, list[Row]] = {t.name: [] for t in projection.tables}
        #: keys read from the database and found absent: their rows are new (inserted, not merged)
        self.absent: dict[str, set[Any]] = {t.name: set() for t in projection.tables}
        self._undo: list[tuple[str, Any, Any, bool]] | None = None
        self._appended_mark: dict[str, int] = {}

    # -- prefetch --------------------------------------------------------------
    def prefetch(self, wanted: dict[str, set[Any]]) -> None:
        for table_name, keys in wanted.items():
            table = self.projection.table(table_name)
            missing = [k for k in keys if k not in self.rows[table_name]]
            if not missing:
                continue
            found = {row[table.key]: row for row in self._loader(table, missing)}
            rows, absent = self.rows[table_name], self.absent[table_name]
            for k in missing:
                row = rows[k] = found.get(k)
                if row is None:
                    absent.add(k)

    # -- handler API -----------------------------------------------------------
    def get(self, table: str, key: Any) -> Row | None:
        rows = self.rows[table]
        if key not in rows:
            self.prefetch({table: {key}})
        return rows[key]

    def put(self, table: str, row: Row) -> None:
        key = row[self.projection.table(table).key]
        self._remember(table, key)
        self.rows[table][key] = dict(row)
        self.dirty[table].add(key)

    def update(self, table: str, key: Any, **changes: Any) -> Row | None:
        row = self.get(table, key)
        if row is None:
            return None
        self._remember(table, key)
        new = {**row, **changes}
        self.rows[table][key] = new
        self.dirty[table].add(key)
        return new

    def change_record(self, table: str, event: Any, **changes: Any) -> Row | None:
        """Apply an event to its aggregate's row (one row per aggregate, keyed by its id,
        with ``version`` and ``updated_at``): once, as older versions are ignored."""
        row = self.get(table, event.originator_id)
        if row is None or row["version"] >= event.originator_version:
            return None
        new: Row = {**row, **changes, "version": event.originator_version,
                    "updated_at": event.meta.recorded_at}
        self.put(table, new)
        return new

    def delete(self, table: str, key: Any) -> None:
        self._remember(table, key)
        self.rows[table][key] = None
        self.dirty[table].add(key)

    def insert(self, table: str, row: Row) -> None:
        self.appended[table].append(dict(row))

    # -- per-event undo (for parking) ------------------------------------------
    def begin_event(self) -> None:
        self._undo = []
        self._appended_mark = {t: len(rows) for t, rows in self.appended.items()}

    def rollback_event(self) -> None:
        assert self._undo is not None
        for table, key, old, was_dirty in reversed(self._undo):
            if old is self._MISSING:
                self.rows[table].pop(key, None)
            else:
                self.rows[table][key] = old
            if not was_dirty:
                self.dirty[table].discard(key)
        for t, mark in self._appended_mark.items():
            del self.appended[t][mark:]
        self._undo = None

    def _remember(self, table: str, key: Any) -> None:
        if self._undo is not None:
            old = self.rows[table].get(key, self._MISSING)
            self._undo.append((table, key, old, key in self.dirty[table]))


def shared_with_after(row: Row, user_id: str, *, shared: bool) -> list[str]:
    """A record's ``shared_with`` column after a share (or unshare) event."""
    users = set(row["shared_with"])
    return sorted(users | {user_id} if shared else users - {user_id})


@dataclass
class ParkedEvent:
    position: int
    event_id: str
    event_type: str
    aggregate_id: str
    error: str


@dataclass
class BatchResult:
    events: int = 0
    applied: int = 0
    parked: list[ParkedEvent] = field(default_factory=list)
    position: int | None = None
