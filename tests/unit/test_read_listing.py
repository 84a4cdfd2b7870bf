"""The read API's list machinery without a database: cursors, parameter checks, the
SQL conditions it builds; and the ops routes and metrics on the in-memory app."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi.exceptions import RequestValidationError

from commands import HANDLERS
from commands.application import CommandService, CrmApplication, Principal
from crm.app import create_app
from api.auth import JwtSettings, TokenIssuer
from readapi.listing import (
    SortKey,
    after_condition,
    decode_cursor,
    encode_cursor,
    order_by,
    parse_query,
)
from api.problems import Problem
from readapi.queries import ACTIVITY, CUSTOMERS, SERVICE_REQUESTS, TASKS
from api.services import Services

REP = Principal("rep-1", "sales_rep")
ANALYST = Principal("ann", "analyst")


def _field(exc: pytest.ExceptionInfo[RequestValidationError]) -> str:
    return str(exc.value.errors()[0]["loc"][1])


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    key = UUID(int=42)
    cursor = encode_cursor("-last_activity_at", [when, Decimal("1.50"), None, "Zoë/+"], key)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    values, got = decode_cursor(cursor, "-last_activity_at", 4)
    assert values == [when.isoformat(), "1.50", None, "Zoë/+"] and got == str(key)


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", encode_cursor("name", [], 1)[:-3] + "xx",
                                    "W10", "eyJ2IjpbXX0"])
def test_a_broken_cursor_is_a_422_on_cursor(cursor: str) -> None:
    with pytest.raises(RequestValidationError) as exc:
        decode_cursor(cursor, "name", 1)
    assert _field(exc) == "cursor"


def test_a_cursor_of_another_sort_or_shape_is_refused() -> None:
    cursor = encode_cursor("name", ["Ada"], "k")
    with pytest.raises(RequestValidationError, match="made for sort"):
        decode_cursor(cursor, "-name", 1)
    with pytest.raises(RequestValidationError):
        decode_cursor(cursor, "name", 2)


def test_conditions_without_nullable_keys_are_one_row_comparison() -> None:
    keys = [SortKey('"t"', "timestamptz"), SortKey('"id"', "uuid")]
    sql, params = after_condition(keys, ["2024-01-01T00:00:00+00:00", "k"], descending=True)
    assert sql == '("t", "id") < (%s::timestamptz, %s::uuid)' and params == ["2024-01-01T00:00:00+00:00", "k"]
    assert order_by(keys, True) == '"t" DESC, "id" DESC'
    nullable = [SortKey('"n"', "text", nullable=True), SortKey('"id"', "uuid")]
    assert order_by(nullable, False) == '"n" NULLS LAST, "id"'
    sql, params = after_condition(nullable, [None, "k"], descending=False)
    assert sql == '("n" IS NULL AND "id" > %s::uuid)' and params == ["k"]


def _parse(spec: Any, items: list[tuple[str, str]], who: Principal = REP) -> Any:
    return parse_query(spec, items, who)


def test_the_query_string_is_checked_strictly() -> None:
    for items, field in (
        ([("nope", "1")], "nope"),
        ([("owner_id", "")], "owner_id"),
        ([("created_from", "2024-01-01T00:00:00")], "created_from"),
        ([("limit", "0")], "limit"),
        ([("limit", "1"), ("limit", "2")], "limit"),
        ([("sort", "email")], "sort"),
        ([("include_total", "2")], "include_total"),
    ):
        with pytest.raises(RequestValidationError) as exc:
            _parse(CUSTOMERS, items)
        assert _field(exc) == field, items
    q = _parse(CUSTOMERS, [("tag", "a"), ("tag", "b"), ("owner_id", "u"), ("owner_id", "v"),
                           ("limit", "200"), ("include_total", "true"), ("min_position", "5")])
    assert q.limit == 200 and q.include_total and q.sort_param == "-last_activity_at" and q.descending
    assert ('"tags" @> %s::text[]', [["a", "b"]]) in q.where
    assert ('"owner_id" = ANY(%s)', [["u", "v"]]) in q.where


def test_search_matches_phone_digits_and_escapes_wildcards() -> None:
    (cond,) = _parse(CUSTOMERS, [("q", " +44 (20) 7946 ")]).where
    assert cond == ('("search_text" ILIKE %s OR "search_text" ILIKE %s)', ["%+44 (20) 7946%", "%44207946%"])
    (cond,) = _parse(CUSTOMERS, [("q", "50%_off\\")]).where
    assert cond == ('("search_text" ILIKE %s)', ["%50\\%\\_off\\\\%"])
    (cond,) = _parse(CUSTOMERS, [("q", "Ada")]).where
    assert cond[1] == ["%ada%"]


def test_masked_roles_may_not_search_or_sort_by_personal_data() -> None:
    with pytest.raises(Problem) as exc:
        _parse(CUSTOMERS, [("q", "ada")], ANALYST)
    assert (exc.value.status, exc.value.field) == (403, "q")
    with pytest.raises(Problem) as exc:
        _parse(CUSTOMERS, [("sort", "-name")], ANALYST)
    assert (exc.value.status, exc.value.field) == (403, "sort")
    assert _parse(CUSTOMERS, [("sort", "created_at")], ANALYST).sort.name == "created_at"
    row = CUSTOMERS.row({"id": UUID(int=1), "name": "Ada", "emails": ["ada@example.org", "a@b.c"],
                         "segment": None, "search_text": "ada"}, ANALYST)
    # masked values keep their JSON type: a list stays a list, each item masked
    assert row == {"id": str(UUID(int=1)), "name": "***", "emails": ["***", "***"], "segment": None}


def test_mine_means_the_caller_and_priority_sorts_most_urgent_first() -> None:
    assert _parse(TASKS, [("mine", "true")]).where == [('"assignee_id" = %s', ["rep-1"])]
    assert _parse(TASKS, [("mine", "false")]).where == []
    q = _parse(SERVICE_REQUESTS, [])
    assert q.sort is not None and q.sort.name == "priority" and not q.descending
    assert "array_position" in q.sort.keys[0].expr
    q = _parse(ACTIVITY, [("owner_id", "rep-2")])
    assert q.sort_param == "-occurred_at" and q.where == [('"owner_id" = %s', ["rep-2"])]


# -- the ops routes on the in-memory app (no database) --------------------------------
METRICS_TOKEN = "metrics-" + "t" * 24


def _app(**options: Any) -> tuple[Any, TokenIssuer]:
    app = CrmApplication({}, kek=b"k" * 32)
    tokens = TokenIssuer(JwtSettings(secret="s" * 32, issuer="crm", audience="crm-api"))
    return create_app(Services(app, CommandService(app, HANDLERS, email_key=b"e" * 32), tokens),
                      **{"metrics_token": METRICS_TOKEN, **options}), tokens


def _send(api: Any, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://crm") as client:
            return [await client.request(m, p, **kw) for m, p, kw in requests]

    return asyncio.run(go())


def test_health_ready_and_metrics_without_a_read_side() -> None:
    api, tokens = _app()
    auth = {"Authorization": "Bearer " + tokens.issue("u1", "sales_rep")}
    created, *_, health, ready, listed, metrics = _send(
        api,
        ("POST", "/api/v1/customers", {"json": {"kind": "person", "name": "Ann"}, "headers": auth}),
        ("GET", "/api/v1/customers/00000000-0000-0000-0000-000000000001/current", {"headers": auth}),
        ("GET", "/api/v1/customers/00000000-0000-0000-0000-000000000002/current", {"headers": auth}),
        ("GET", "/health", {}),
        ("GET", "/ready", {}),
        ("GET", "/api/v1/customers", {"headers": auth}),
        ("GET", "/metrics", {"headers": {"Authorization": f"Bearer {METRICS_TOKEN}"}}),
    )
    assert created.status_code == 201
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["event_log_position"] == 1
    assert listed.status_code == 503 and listed.json()["type"].endswith("/read-side-disabled")
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'crm_http_requests_total{method="GET",route="/api/v1/customers/{id}/current",status="404"} 2' in text
    assert 'crm_http_requests_total{method="POST",route="/api/v1/customers",status="201"} 1' in text
    assert "crm_event_store_up 1" in text and "crm_event_log_head 1" in text
    assert "crm_projection_" not in text  # no read side in this process
    assert text.endswith("\n")
