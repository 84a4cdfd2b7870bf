"""Automation: process managers that follow the event log and react with commands.

``AutomationRunner`` runs the rules of ``rules`` for each new event and fires the
durable timers they leave (SLA due times, task reminders); every command it issues
carries the triggering event (or timer) as its causation and a deterministic
idempotency key, so replays and restarts never issue a command twice.
"""

from automation.config import AutomationConfig, load_config
from automation.runner import AutomationRunner

__all__ = ["AutomationConfig", "AutomationRunner", "load_config"]
