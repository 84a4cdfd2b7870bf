"""The in-memory view of one batch: prefetch, changes, and undo of a failed event."""

from __future__ import annotations

from typing import Any

from projections.base import BatchView, Projection, Table

ITEMS = Table("items_t", {"id": "int", "n": "int", "tags": "jsonb"}, key="id")
FEED = Table("feed_t", {"id": "int", "text": "text"}, key="id", append_only=True)


class Items(Projection):
    name = "items_test"
    version = 1
    tables = (ITEMS, FEED)


def view(stored: dict[int, dict[str, Any]], calls: list[list[Any]] | None = None) -> BatchView:
    def load(table: Table, keys: list[Any]) -> list[dict[str, Any]]:
        if calls is not None:
            calls.append(sorted(keys))
        return [dict(stored[k]) for k in keys if k in stored and table is ITEMS]

    return BatchView(Items, load)


def test_prefetch_reads_each_missing_key_once() -> None:
    calls: list[list[Any]] = []
    v = view({1: {"id": 1, "n": 5, "tags": []}}, calls)
    v.prefetch({"items_t": {1, 2}})
    assert v.get("items_t", 1) == {"id": 1, "n": 5, "tags": []}
    assert v.get("items_t", 2) is None
    assert calls == [[1, 2]]


def test_get_of_an_unfetched_key_loads_it() -> None:
    calls: list[list[Any]] = []
    v = view({3: {"id": 3, "n": 1, "tags": []}}, calls)
    assert v.get("items_t", 3) == {"id": 3, "n": 1, "tags": []}
    assert calls == [[3]]


def test_changes_are_marked_dirty() -> None:
    v = view({1: {"id": 1, "n": 5, "tags": []}})
    v.update("items_t", 1, n=6)
    v.put("items_t", {"id": 2, "n": 1, "tags": ["a"]})
    v.delete("items_t", 3)
    v.insert("feed_t", {"id": 1, "text": "x"})
    assert v.dirty["items_t"] == {1, 2, 3}
    assert v.rows["items_t"][1] == {"id": 1, "n": 6, "tags": []}
    assert v.rows["items_t"][3] is None
    assert v.appended["feed_t"] == [{"id": 1, "text": "x"}]


def test_update_of_an_absent_row_does_nothing() -> None:
    v = view({})
    assert v.update("items_t", 9, n=1) is None
    assert v.dirty["items_t"] == set()


def test_a_failed_event_is_undone_and_earlier_events_stay() -> None:
    v = view({1: {"id": 1, "n": 5, "tags": []}})
    v.begin_event()
    v.update("items_t", 1, n=6)
    v.insert("feed_t", {"id": 1, "text": "first"})
    v.begin_event()
    v.update("items_t", 1, n=7)
    v.put("items_t", {"id": 2, "n": 1, "tags": []})
    v.delete("items_t", 3)
    v.insert("feed_t", {"id": 2, "text": "second"})
    v.rollback_event()
    assert v.rows["items_t"][1] == {"id": 1, "n": 6, "tags": []}
    assert 2 not in v.rows["items_t"] and 3 not in v.rows["items_t"]
    assert v.dirty["items_t"] == {1}
    assert v.appended["feed_t"] == [{"id": 1, "text": "first"}]


def test_table_ddl_names_its_key_and_indexes() -> None:
    ddl = Table("t", {"id": "uuid", "created_at": "timestamptz"}, key="id",
                indexes=("created_at, id", "CREATE INDEX {name} ON {table} USING gin (x)")).create_statements("s")
    assert ddl[0] == 'CREATE TABLE "s"."t" ("id" uuid, "created_at" timestamptz, PRIMARY KEY ("id"))'
    assert ddl[1] == 'CREATE INDEX "t_x0" ON "s"."t" (created_at, id)'
    assert ddl[2] == 'CREATE INDEX t_x1 ON "s"."t" USING gin (x)'
