"""The OpenAPI document states the lists' parameters and the rows they answer, and the
copy the web UI's types are generated from is the app's own document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter

from commands.application import Principal
from crm.openapi import DEFAULT_PATH, document, text
from readapi.listing import parse_query
from api.encoding import MASK, JSONResponse
from readapi.queries import CUSTOMER_ACTIVITY, CUSTOMERS, LISTS, RECORDS
from readapi.schemas_read import TABLES, RecordAsOf, page_of, row_of
from tests.unit.test_read_listing import _app, _send

ANALYST = Principal("ann", "analyst")
ADMIN = Principal("ada", "admin")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def test_the_committed_document_is_the_apps(doc: dict[str, Any]) -> None:
    committed = DEFAULT_PATH.read_text(encoding="utf-8")
    assert committed == text(), "web/openapi.json is out of date: run `python -m crm.openapi`"
    assert json.loads(committed) == json.loads(json.dumps(doc))


def _params(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in op["parameters"] if p["in"] == "query"}


def _types(schema: dict[str, Any]) -> set[str]:
    return {s.get("type", "") for s in schema.get("anyOf", [schema])} - {"null"}


@pytest.mark.parametrize(("path", "spec"), [
    *((f"/api/v1{path}", spec) for path, spec, _ in LISTS),
    ("/api/v1/customers/{id}/activity", CUSTOMER_ACTIVITY),
])
def test_every_list_declares_its_parameters_and_its_page(doc: dict[str, Any], path: str, spec: Any) -> None:
    op = doc["paths"][path]["get"]
    params = _params(op)
    assert set(params) == {*(f.param for f in spec.filters), "sort", "limit", "cursor", "include_total",
                           "min_position", "wait_ms"}
    kinds = {"text": "string", "uuid": "string", "datetime": "string", "date": "string",
             "int": "integer", "bool": "boolean"}
    for f in spec.filters:
        schema = params[f.param]["schema"]
        if f.repeatable:
            assert _types(schema) == {"array"}, f.param
            (schema,) = [s for s in schema["anyOf"] if s.get("type") == "array"]
            schema = schema["items"]
        assert _types(schema) == {kinds[f.kind]}, f.param
        if f.kind == "uuid":
            assert [s.get("format") for s in schema.get("anyOf", [schema]) if s.get("type")][0] == "uuid"
    sort = params["sort"]["schema"]
    assert sort["enum"] == [n for s in spec.sorts for n in (s.name, "-" + s.name)]
    assert sort["default"] == spec.default_sort
    limit = params["limit"]["schema"]
    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == ("integer", 1, 200, 50)
    title = TABLES[spec.view][0]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": f"#/components/schemas/{title}Page"}
    page = doc["components"]["schemas"][f"{title}Page"]
    assert page["properties"]["items"]["items"] == {"$ref": f"#/components/schemas/{title}"}
    assert set(page["required"]) == {"items", "next_cursor", "total"}


@pytest.mark.parametrize(("path", "spec"), [(f"/api/v1{path}/{{id}}", spec) for path, spec, _ in RECORDS])
def test_every_record_route_declares_its_row_or_the_record_as_of_a_time(
        doc: dict[str, Any], path: str, spec: Any) -> None:
    ok = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["anyOf"] == [{"$ref": f"#/components/schemas/{TABLES[spec.view][0]}"},
                           {"$ref": "#/components/schemas/RecordAsOf"}]
    row = doc["components"]["schemas"][TABLES[spec.view][0]]
    table = TABLES[spec.view][1]
    assert set(row["properties"]) == set(table.columns) - set(spec.hidden)
    for column in spec.personal:
        assert MASK in row["properties"][column]["description"], column


def _customer_row() -> dict[str, Any]:
    now = datetime(2024, 5, 31, 9, 30, tzinfo=UTC)
    return {
        "id": UUID(int=1), "version": 3, "kind": "person", "name": "Ada Lovelace",
        "emails": ["ada@example.com"], "phones": ["+44 20 7946 0000"],
        "contacts": [{"contact_id": str(UUID(int=2)), "kind": "email", "value": "ada@example.com",
                      "label": "work", "person_name": "Ada", "primary": True}],
        "owner_id": "rep-1", "shared_with": [], "lifecycle_stage": "customer", "segment": None,
        "tags": ["vip"], "source": None, "industry": "maths", "country": "GB", "preferred_language": "en",
        "consents": {"email": True}, "preferences": {"newsletter": "monthly"},
        "created_at": now, "updated_at": now, "last_interaction_at": None, "last_activity_at": now,
        "open_opportunities": 1, "open_pipeline": {"EUR": "1200.50"}, "open_requests": 0, "purchases": 2,
        "lifetime_purchases": {"EUR": "99.90"}, "personal_data_erased": False, "search_text": "ada lovelace",
    }


@pytest.mark.parametrize("who", [ADMIN, ANALYST])
def test_a_row_as_written_matches_its_model_masked_or_not(who: Principal) -> None:
    written = json.loads(JSONResponse(CUSTOMERS.view_row(_customer_row(), who)).body)
    assert "search_text" not in written
    model = row_of(CUSTOMERS)
    model.model_validate(written)  # the masked shape is the row's shape
    if who is ANALYST:
        assert written["name"] == MASK and written["emails"] == [MASK]
        assert written["contacts"][0]["value"] == MASK and written["contacts"][0]["kind"] == "email"
    page = {"items": [written], "next_cursor": None, "total": 1}
    TypeAdapter(page_of(CUSTOMERS)).validate_python(page)


def test_a_row_missing_a_column_or_with_a_wrong_type_does_not_match() -> None:
    written = json.loads(JSONResponse(CUSTOMERS.view_row(_customer_row(), ADMIN)).body)
    model = row_of(CUSTOMERS)
    for column, bad in (("version", "three"), ("emails", "ada@example.com"), ("open_pipeline", {"EUR": 1})):
        with pytest.raises(ValueError):
            model.model_validate({**written, column: bad})
    with pytest.raises(ValueError):
        model.model_validate({k: v for k, v in written.items() if k != "owner_id"})
    assert RecordAsOf.model_validate({"id": str(UUID(int=1)), "type": "customer", "version": 1, "data": {},
                                      "as_of": "2024-05-31T00:00:00+00:00", "as_known_at": None}).version == 1


@pytest.mark.parametrize("items", [
    [("limit", "0")], [("limit", "ten")], [("limit", " 201 ")], [("include_total", "maybe")],
    [("sort", "email")], [("sort", "--name")], [("created_from", "yesterday")],
    [("active_to", "2024-01-01T10:00:00")], [("created_to", "2024-02-30")], [("q", "")], [("q", "x" * 201)],
    [("owner_id", "  ")], [("segment", "a"), ("segment", "")], [("tag", "y" * 201)],
])
def test_a_declared_parameter_refuses_a_value_in_the_words_of_parse_query(items: list[tuple[str, str]]) -> None:
    with pytest.raises(RequestValidationError) as exc:
        parse_query(CUSTOMERS, items, ADMIN)
    expected = exc.value.errors()[0]
    api, tokens = _app()
    (r,) = _send(api, ("GET", "/api/v1/customers", {
        "params": items, "headers": {"Authorization": "Bearer " + tokens.issue("ada", "admin")}}))
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["field"], body["detail"]) == (expected["loc"][1], f"{expected['loc'][1]}: {expected['msg']}")
    assert body["errors"][0]["type"] == "value_error"


def test_parse_query_still_refuses_what_types_cannot_say() -> None:
    api, tokens = _app()
    auth = {"Authorization": "Bearer " + tokens.issue("ann", "analyst")}
    unknown, repeated, personal, sorted_by_name = _send(
        api,
        ("GET", "/api/v1/customers", {"params": {"owner": "rep-1"}, "headers": auth}),
        ("GET", "/api/v1/customers", {"params": [("limit", "1"), ("limit", "2")], "headers": auth}),
        ("GET", "/api/v1/customers", {"params": {"q": "ada"}, "headers": auth}),
        ("GET", "/api/v1/customers", {"params": {"sort": "-name"}, "headers": auth}),
    )
    assert (unknown.status_code, unknown.json()["field"]) == (422, "owner")
    assert "unknown parameter" in unknown.json()["detail"]
    assert (repeated.status_code, repeated.json()["detail"]) == (422, "limit: give it once")
    assert (personal.status_code, personal.json()["field"]) == (403, "q")
    assert (sorted_by_name.status_code, sorted_by_name.json()["field"]) == (403, "sort")
