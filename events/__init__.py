"""Event types of the CRM: past-tense, immutable, versioned.

Importing this package registers every event type under its stored name.
"""

from events import api_key, audit, customer, interaction, opportunity, service_request, task, team, user
from events.base import Actor, CrmEvent, EventMeta, all_event_types, event_type

__all__ = [
    "Actor",
    "api_key",
    "audit",
    "CrmEvent",
    "EventMeta",
    "all_event_types",
    "customer",
    "event_type",
    "interaction",
    "opportunity",
    "service_request",
    "task",
    "team",
    "user",
]
