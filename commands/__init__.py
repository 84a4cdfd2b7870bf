"""Commands: imperative pydantic models, one thin handler each, one explicit map."""

from __future__ import annotations

from typing import Any

from commands import customer, interaction, opportunity, service_request, task

#: The one map from command type to handler.
HANDLERS: dict[type[Any], Any] = {
    **customer.HANDLERS,
    **opportunity.HANDLERS,
    **interaction.HANDLERS,
    **service_request.HANDLERS,
    **task.HANDLERS,
}
