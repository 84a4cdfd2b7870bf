"""The public contract of the Kafka feed: the JSON Schema of every event type's envelope."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from api.encoding import JSONResponse
from pydantic import BaseModel

from feeds.kafka import public_schema, public_schemas
from api.services import Caller


class SchemaRef(BaseModel):
    type: str
    version: int
    cloudevents_type: str
    aggregate_type: str | None
    current: bool
    personal_fields: list[str]
    href: str


class SchemaList(BaseModel):
    items: list[SchemaRef]


def build_schemas_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["schemas"])

    @r.get("/schemas", response_model=SchemaList,
           summary="The JSON Schemas of the events published to Kafka, every version kept")
    def list_schemas(caller: Caller) -> SchemaList:
        return SchemaList(items=[
            SchemaRef(**s, href=f"/api/v1/schemas/{s['type']}/{s['version']}")
            for s in public_schemas()
        ])

    @r.get("/schemas/{type_name}/{version}",
           summary="One event type's envelope schema (JSON Schema 2020-12)",
           responses={200: {"content": {"application/schema+json": {}}},
                      404: {"description": "No such event type or version"}})
    def get_schema(
        caller: Caller,
        type_name: Annotated[str, Path(min_length=1, max_length=100)],
        version: Annotated[int, Path(ge=1, le=10_000)],
    ) -> JSONResponse:
        schema: dict[str, Any] | None = public_schema(type_name, version)
        if schema is None:
            raise HTTPException(404, f"no schema for event type {type_name!r} version {version}")
        return JSONResponse(schema, media_type="application/schema+json")

    return r
