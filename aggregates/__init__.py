"""The CRM's aggregates: the rules that decide which events happen."""

from aggregates.audit_export import AuditExport
from aggregates.customer import Customer
from aggregates.interaction import Interaction
from aggregates.opportunity import Opportunity
from aggregates.service_request import ServiceRequest
from aggregates.task import Task

AGGREGATE_TYPES = {
    cls.type_name: cls for cls in (Customer, Opportunity, Interaction, ServiceRequest, Task)
}

#: Records kept by the audit, not by the CRM's users (no record routes of their own).
AUDIT_TYPES = {AuditExport.type_name: AuditExport}

__all__ = ["AGGREGATE_TYPES", "AUDIT_TYPES", "AuditExport", "Customer", "Interaction", "Opportunity", "ServiceRequest", "Task"]
