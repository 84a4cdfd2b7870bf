"""Events of the ApiKey aggregate: a credential for another system.

Neither the secret nor its hash is ever in an event: the hash lives beside the log
(``crm_api_keys``).
"""

from __future__ import annotations

from datetime import datetime

from events.base import CrmEvent, register


class ApiKeyEvent(CrmEvent):
    aggregate_type = "api_key"


@register
class ApiKeyIssued(ApiKeyEvent):
    type_name = "ApiKeyIssued"
    creates = True

    name: str
    role: str
    expires_at: datetime | None


@register
class ApiKeyRevoked(ApiKeyEvent):
    type_name = "ApiKeyRevoked"
