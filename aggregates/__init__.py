"""The CRM's aggregates: the rules that decide which events happen."""

from aggregates.api_key import ApiKey
from aggregates.audit_export import AuditExport
from aggregates.customer import Customer
from aggregates.interaction import Interaction
from aggregates.opportunity import Opportunity
from aggregates.service_request import ServiceRequest
from aggregates.task import Task
from aggregates.team import Team
from aggregates.user import User

AGGREGATE_TYPES = {
    cls.type_name: cls for cls in (Customer, Opportunity, Interaction, ServiceRequest, Task)
}

#: Records kept by the audit, not by the CRM's users (no record routes of their own).
AUDIT_TYPES = {AuditExport.type_name: AuditExport}

#: Who may sign in: people (users, in teams) and other systems (API keys).
IDENTITY_TYPES = {cls.type_name: cls for cls in (User, Team, ApiKey)}

__all__ = ["AGGREGATE_TYPES", "AUDIT_TYPES", "IDENTITY_TYPES", "ApiKey", "AuditExport", "Customer", "Interaction", "Opportunity", "ServiceRequest", "Task", "Team", "User"]
