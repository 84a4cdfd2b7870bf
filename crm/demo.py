"""Deterministic demo data, sent through the same commands a user would send."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from aggregates.pipeline import LOSS_REASONS, PIPELINES
from commands import HANDLERS
from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import identity as ids
from commands import task as ct
from commands.application import CommandService, CrmApplication, Principal, Request
from commands.clock import Clock, SequentialIds
from automation.config import DEFAULT_RULES

FIRST = ["Ada", "Bo", "Chen", "Dana", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Vera", "Wei", "Yuki"]
LAST = ["Andersen", "Brown", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Huang", "Ito", "Jensen",
        "Kowalski", "Li", "Moreau", "Nakamura", "Okafor", "Petrov", "Rossi", "Singh", "Tanaka", "Wang"]
COMPANY = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell",
           "Cyberdyne", "Soylent", "Wonka", "Aperture", "Gringotts", "Oceanic", "Monarch"]
SUFFIX = ["Ltd", "GmbH", "Inc", "SA", "BV", "AB", "Co"]
INDUSTRIES = ["retail", "manufacturing", "software", "logistics", "healthcare", "finance", "education"]
COUNTRIES = ["DE", "FR", "GB", "US", "CN", "JP", "SE", "NL", "ES", "IT"]
SOURCES = ["web", "referral", "event", "cold_call", "partner", "import"]
#: Everybody signs in with this password in the demo (and only in the demo).
DEMO_PASSWORD = "demo-password"
#: The demo's users: username, role, team, display name.
DEMO_USERS: tuple[tuple[str, str, str | None, str], ...] = (
    ("admin", "admin", None, "Ada Admin"),
    ("manager", "manager", "Team North", "Maria Manager"),
    ("rep", "sales_rep", "Team North", "Rita Rep"),
    ("rep2", "sales_rep", "Team South", "Sam Rep"),
    ("agent", "service_agent", None, "Alex Agent"),
    ("marketing", "marketing", None, "Mia Marketing"),
    ("analyst", "analyst", None, "Ana Analyst"),
    ("auditor", "auditor", None, "Otto Auditor"),
    ("dataadmin", "data_admin", None, "Dana Data"),
)
#: The customers' and deals' owners: the two sales reps, one in each team.
OWNERS = [str(ids.user_id("rep")), str(ids.user_id("rep2"))]
MANAGER = str(ids.user_id("manager"))
AGENTS = [str(ids.user_id("agent"))]
SETUP = Principal("crm-demo", "admin")
CURRENCIES = ["EUR", "EUR", "USD", "GBP", "CNY"]
PRODUCTS = [("SKU-100", "Starter licence", Decimal("49.00")), ("SKU-200", "Team licence", Decimal("199.00")),
            ("SKU-300", "Support plan", Decimal("99.50")), ("SKU-400", "Onboarding", Decimal("750.00"))]


def demo_rules() -> dict[str, Any]:
    """The default automation rules with the demo's people in the teams: the agent works
    both queues and the manager manages them (told of every breach; a breached request
    stays with the agent, as the demo has one)."""
    rules: dict[str, Any] = json.loads(DEFAULT_RULES.read_text())
    rules["teams"] = [
        {"name": "support", "manager": MANAGER, "agents": [{"id": a} for a in AGENTS]},
        {"name": "escalations", "manager": MANAGER, "agents": [{"id": a} for a in AGENTS]},
    ]
    return rules


def write_demo_rules(data_dir: Path) -> Path:
    """``demo_rules()`` as a rules file in ``data_dir`` (for ``crm serve --demo``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo-automation-rules.json"
    path.write_text(json.dumps(demo_rules(), indent=1))
    return path


class DemoLoader:
    """Loads a few hundred customers with everything around them over the past year."""

    def __init__(self, app: CrmApplication, email_key: bytes, clock: Clock, *, customers: int = 300, seed: int = 7):
        self.commands = CommandService(app, HANDLERS, email_key=email_key, clock=clock,
                                       new_id=SequentialIds(f"crm-demo-{seed}"))
        self.rng = random.Random(seed)
        self.count = customers
        self.now = clock.now()
        self.sent = 0

    def _send(self, command: BaseModel, who: str, role: str, target: UUID | None = None,
              version: int | None = None) -> Any:
        self.sent += 1
        return self.commands.execute(
            command,
            Request(Principal(who, role), correlation_id=f"demo-{self.sent}", target=target,
                    expected_version=version),
        )

    def _when(self, days_ago_max: int, days_ago_min: int = 0) -> datetime:
        seconds = self.rng.randint(days_ago_min * 86400, days_ago_max * 86400)
        return (self.now - timedelta(seconds=seconds)).astimezone(UTC)

    def load(self) -> int:
        self._people()
        rng = self.rng
        for i in range(self.count):
            owner = OWNERS[i % len(OWNERS)]
            company = rng.random() < 0.5
            first, last = rng.choice(FIRST), rng.choice(LAST)
            name = f"{rng.choice(COMPANY)} {last} {rng.choice(SUFFIX)}" if company else f"{first} {last}"
            domain = f"{last.lower()}{i}.example.com"
            contacts = [{"kind": "email", "value": f"{first.lower()}.{last.lower()}@{domain}", "primary": True}]
            if rng.random() < 0.7:
                contacts.append({"kind": "phone", "value": f"+49 30 {rng.randint(1000000, 9999999)}"})
            if rng.random() < 0.4:
                contacts.append({"kind": "address", "value": f"{rng.randint(1, 200)} Example Street, {rng.choice(COUNTRIES)}"})
            start = self._when(365, 120)
            c = self._send(cc.RegisterCustomer.model_validate(dict(
                kind="company" if company else "person", name=name, contacts=contacts,
                source=rng.choice(SOURCES), owner_id=owner,
                lifecycle_stage=rng.choice(["lead", "prospect", "customer"]),
                industry=rng.choice(INDUSTRIES), country=rng.choice(COUNTRIES),
                preferred_language=rng.choice(["en", "de", "zh", "fr"]),
                tags=rng.sample(["vip", "newsletter", "trade-fair", "partner", "upsell"], k=rng.randint(0, 2)),
                occurred_at=start)), owner, "sales_rep")
            cid, version = c.id, c.version
            for channel in ("email", "sms", "phone"):
                if rng.random() < 0.6:
                    version = self._send(cc.SetConsent(channel=channel, granted=rng.random() < 0.8,
                                                       occurred_at=start), owner, "sales_rep", cid).version
            if rng.random() < 0.5:
                version = self._send(cc.ClassifyCustomer(
                    segment=rng.choice(["high_value", "potential", "at_risk", "standard"]),
                    reason="quarterly review", occurred_at=self._when(100, 30)), MANAGER, "manager",
                    cid, version).version
            for _ in range(rng.randint(0, 3)):
                lines = [
                    cc.PurchaseLineIn(sku=sku, description=desc, quantity=Decimal(rng.randint(1, 5)),
                                      unit_price=price)
                    for sku, desc, price in rng.sample(PRODUCTS, k=rng.randint(1, 3))
                ]
                amount = sum((line.quantity * line.unit_price for line in lines), Decimal(0))
                version = self._send(cc.RecordPurchase(
                    order_id=f"SO-{i:04d}-{version}", amount=amount, currency="EUR", lines=lines,
                    occurred_at=self._when(110, 1)), "erp", "integration", cid).version
            for _ in range(rng.randint(0, 3)):
                self._opportunity(cid, owner)
            for _ in range(rng.randint(1, 3)):
                channel = rng.choice(["call", "email", "meeting", "note", "sms", "chat"])
                direction = "internal" if channel == "note" else rng.choice(["inbound", "outbound"])
                self._send(ci.LogInteraction.model_validate(dict(
                    customer_id=cid, channel=channel, direction=direction,
                    subject=f"Follow-up with {first}", body=f"Talked about next steps with {name}.",
                    participants=[owner],
                    duration_minutes=rng.randint(5, 60) if channel in ("call", "meeting") else None,
                    occurred_at=self._when(100, 1))), owner, "sales_rep")
            if rng.random() < 0.5:
                self._service_request(cid, i)
            if rng.random() < 0.8:
                self._task(cid, owner)
        return self.sent

    def _people(self) -> None:
        """The teams and users of the demo (all with ``DEMO_PASSWORD``)."""
        manager = ids.CreateUser.model_validate(dict(
            username="manager", password=DEMO_PASSWORD, role="manager", display_name="Maria Manager",
            email="manager@demo.example"))
        created = self._send(manager, SETUP.id, SETUP.role)
        north = self._send(ids.CreateTeam(name="Team North", manager_id=created.id), SETUP.id, SETUP.role).id
        south = self._send(ids.CreateTeam(name="Team South"), SETUP.id, SETUP.role).id
        self._send(ids.MoveUserToTeam(team_id=north), SETUP.id, SETUP.role, created.id, created.version)
        teams = {"Team North": north, "Team South": south}
        for username, role, team, name in DEMO_USERS:
            if username == "manager":
                continue
            self._send(ids.CreateUser.model_validate(dict(
                username=username, password=DEMO_PASSWORD, role=role, display_name=name,
                email=f"{username}@demo.example", team_id=teams[team] if team else None)),
                SETUP.id, SETUP.role)

    def _opportunity(self, cid: UUID, owner: str) -> None:
        rng = self.rng
        pipeline = "renewal" if rng.random() < 0.25 else "default"
        o = self._send(co.OpenOpportunity(
            customer_id=cid, title=f"{rng.choice(['New', 'Expansion', 'Pilot', 'Renewal'])} deal",
            amount=Decimal(rng.randint(5, 500) * 100), currency=rng.choice(CURRENCIES),
            expected_close=(self.now + timedelta(days=rng.randint(-30, 120))).date(),
            pipeline=pipeline, owner_id=owner, occurred_at=self._when(120, 60)), owner, "sales_rep")
        oid, version = o.id, o.version
        stages = [s.name for s in PIPELINES[pipeline].stages]
        for stage in stages[1 : rng.randint(1, len(stages))]:
            version = self._send(co.ChangeOpportunityStage(stage=stage, occurred_at=self._when(59, 20)),
                                 owner, "sales_rep", oid, version).version
        outcome = rng.random()
        if outcome < 0.3:
            self._send(co.WinOpportunity(occurred_at=self._when(19, 1)), owner, "sales_rep", oid, version)
        elif outcome < 0.5:
            self._send(co.LoseOpportunity(loss_reason=rng.choice(LOSS_REASONS), reason="customer decided",
                                          occurred_at=self._when(19, 1)), owner, "sales_rep", oid, version)

    def _service_request(self, cid: UUID, i: int) -> None:
        rng = self.rng
        agent = AGENTS[i % len(AGENTS)]
        final = ["open", "in_progress", "waiting_on_customer", "resolved", "closed", "reopened"][i % 6]
        # Requests nobody has touched yet came in over the last hours (their SLA still runs).
        opened = self._when(60, 10) if final != "open" else self.now - timedelta(minutes=rng.randint(5, 900))
        s = self._send(cs.OpenServiceRequest(
            customer_id=cid, channel=rng.choice(["phone", "email", "web", "chat", "social"]),
            type=rng.choice(["question", "incident", "complaint", "request"]),
            priority=rng.choice(["low", "normal", "normal", "high", "urgent"]),
            subject="Cannot sign in" if rng.random() < 0.5 else "Invoice question",
            description="The customer described the problem on the phone.",
            occurred_at=opened), agent, "service_agent")
        sid, v = s.id, s.version
        if final == "open":
            return
        # Picked up within minutes and answered within hours (so most first responses meet their SLA).
        v = self._send(cs.AssignServiceRequest(assignee_id=agent, occurred_at=opened + timedelta(minutes=rng.randint(1, 9))), agent, "service_agent", sid, v).version
        v = self._send(cs.ChangeServiceRequestStatus(status="in_progress", occurred_at=opened + timedelta(minutes=rng.randint(10, 900))), agent, "service_agent", sid, v).version
        v = self._send(cs.CommentOnServiceRequest(body="Checked the account settings.", occurred_at=opened + timedelta(minutes=rng.randint(901, 999))), agent, "service_agent", sid).version
        if final == "in_progress":
            return
        if final == "waiting_on_customer":
            self._send(cs.ChangeServiceRequestStatus(status="waiting_on_customer", occurred_at=self._when(6, 5)), agent, "service_agent", sid, v)
            return
        v = self._send(cs.ResolveServiceRequest(resolution="Reset the password and confirmed access.", occurred_at=opened + timedelta(minutes=rng.randint(1000, 7200))), agent, "service_agent", sid, v).version
        if rng.random() < 0.7:
            v = self._send(cs.RateServiceRequest(rating=rng.choice([3, 4, 5, 5, 2]), comment="Thanks", occurred_at=self._when(4, 3)), agent, "service_agent", sid).version
        if final == "closed":
            self._send(cs.ChangeServiceRequestStatus(status="closed", occurred_at=self._when(3, 2)), agent, "service_agent", sid, v)
        elif final == "reopened":
            self._send(cs.ChangeServiceRequestStatus(status="reopened", reason="the problem came back", occurred_at=self._when(2, 1)), agent, "service_agent", sid, v)

    def _task(self, cid: UUID, owner: str) -> None:
        rng = self.rng
        t = self._send(ct.CreateTask(
            title=rng.choice(["Send the proposal", "Call back", "Prepare the demo", "Check the contract"]),
            due_at=self.now + timedelta(days=rng.randint(-10, 20)), assignee_id=owner,
            related_type="customer", related_id=cid, occurred_at=self._when(30, 11)), owner, "sales_rep")
        r = rng.random()
        if r < 0.4:
            self._send(ct.CompleteTask(occurred_at=self._when(10, 1)), owner, "sales_rep", t.id, t.version)
        elif r < 0.5:
            self._send(ct.CancelTask(reason="no longer needed", occurred_at=self._when(10, 1)), owner, "sales_rep", t.id, t.version)
