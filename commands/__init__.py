"""Commands: imperative pydantic models, one thin handler each, one explicit map."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from aggregates import AGGREGATE_TYPES
from aggregates.base import Aggregate
from aggregates.errors import DomainError, Forbidden, NotFound, no_record, record_label
from aggregates.pipeline import PIPELINES
from commands import audit, customer, identity, interaction, opportunity, service_request, task
from events.base import CrmEvent
from events.codec import dump_fields

__all__ = ["AGGREGATE_TYPES", "HANDLERS", "PIPELINES", "Aggregate", "CrmEvent", "DomainError", "Forbidden",
           "NotFound", "dump_fields", "no_record", "record_label"]

#: The one map from command type to handler.
HANDLERS: dict[type[BaseModel], Any] = {}
for _module in (customer, opportunity, interaction, service_request, task, audit, identity):
    HANDLERS.update(_module.HANDLERS)
