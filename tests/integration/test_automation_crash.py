"""An SLA breach escalates exactly once although the `crm automation run` process is
killed (SIGKILL) and restarted again and again around the breach's due time."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commands import customer as cc
from commands import service_request as cs
from commands.application import Principal, Request
from tests.integration.test_projection_ops import ROOT, crm_command, crm_env, wait_until

pytestmark = pytest.mark.postgres

FIRST_RESPONSE_SECONDS = 10.0
RULES = {
    "teams": [{"name": "support", "manager": "boss", "escalate_to": "senior", "agents": [{"id": "agent-a"}]}],
    "routes": [{"team": "support"}],
    "sla": {"normal": {"first_response_minutes": FIRST_RESPONSE_SECONDS / 60, "resolution_minutes": 600}},
}


def _rows(database_url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def test_sla_breach_escalates_once_across_kills(make_system: Callable[..., Any], database_url: str,
                                                tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    system = make_system(automation_rules_file=rules, automation_enabled=False)
    front = Principal("front-desk", "service_agent")
    customer = system.commands.execute(cc.RegisterCustomer(kind="person", name="Ada"), Request(front, "c-1"))
    opened = system.commands.execute(
        cs.OpenServiceRequest(customer_id=customer.id, channel="phone", type="incident", subject="Down"),
        Request(front, "c-2"))
    due = time.monotonic() + FIRST_RESPONSE_SECONDS
    env = crm_env(database_url, tmp_path / "data", CRM_AUTOMATION_RULES_FILE=str(rules),
                  CRM_AUTOMATION_POLL_SECONDS="0.05")
    logs: list[Path] = []

    def start() -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"automation-{len(logs)}.log")
        with logs[-1].open("wb") as out:
            return subprocess.Popen(crm_command("automation", "run"), cwd=ROOT,
                                    env={**env, "PGAPPNAME": f"automation-{len(logs)}"},
                                    stdout=out, stderr=subprocess.STDOUT)

    def connected() -> bool:  # killed once at work, however long its start-up took
        return bool(_rows(database_url, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
                          (f"automation-{len(logs)}",)))

    rng = random.Random(9)
    proc = start()
    kills = 0
    # Killed at least five times, and on until past the due time (a slow start-up on a
    # loaded machine makes fewer kills fit before it).
    while time.monotonic() < due + 2.5 or kills < 5:
        wait_until(connected, 60, "the automation process connects")
        time.sleep(rng.uniform(0.1, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        proc = start()
    try:
        wait_until(lambda: _rows(database_url, "SELECT fired_at FROM crm_automation_timers"
                                 " WHERE kind = 'sla_first_response'")[0][0] is not None,
                   30, "the breach fired")
        # the last process leads (so it runs with its signal handlers installed)
        wait_until(lambda: bool(_rows(
            database_url, "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s"
            " AND l.objid::bigint = (hashtext('crm_automation')::bigint & 4294967295)",
            (f"automation-{len(logs)}",))), 30, "the last process leads")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0, logs[-1].read_text()

    events = list(system.app.stored_events(opened.id))
    types = [e.type_name for e in events]
    assert types == ["ServiceRequestOpened", "ServiceRequestAssigned", "ServiceRequestSlaSet",
                     "ServiceRequestPriorityChanged", "ServiceRequestAssigned"], types
    assert events[1].assignee_id == "agent-a"
    assert events[2].priority == "normal" and events[2].meta.actor.id == "automation"
    assert events[3].priority == "high" and events[4].assignee_id == "senior"
    assert {e.meta.causation_id for e in events[1:]} == {str(events[0].meta.event_id)}
    assert sorted(_rows(database_url, "SELECT recipient, kind FROM crm_automation_notifications")) == [
        ("boss", "sla_breach"), ("senior", "sla_breach")]
