"""The CRM's aggregates: the rules that decide which events happen."""

from aggregates.customer import Customer
from aggregates.interaction import Interaction
from aggregates.opportunity import Opportunity
from aggregates.service_request import ServiceRequest
from aggregates.task import Task

AGGREGATE_TYPES = {
    cls.type_name: cls for cls in (Customer, Opportunity, Interaction, ServiceRequest, Task)
}

__all__ = ["AGGREGATE_TYPES", "Customer", "Interaction", "Opportunity", "ServiceRequest", "Task"]
