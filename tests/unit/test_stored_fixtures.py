"""Stored history must stay readable: one stored fixture per event type and version.

``tests/fixtures/stored/<TypeName>.v<version>.json`` holds an event as the codec once
stored it, with its subject's data key. Every registered type needs a fixture for each
version from 1 to its ``class_version`` (bumping a version without adding one fails
here), and every fixture must decode into the current event class with the fields
listed below. Make new fixtures with ``tests/fixtures/make_stored_fixtures.py``.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock
from uuid import UUID

import pytest

import events.codec
from events.base import Actor, EventMeta, all_event_types, event_type
from events.codec import EventCodec
from events.keys import SubjectKey, SubjectKeyDestroyed
from events.values import ContactPoint, PurchaseLine

STORED = Path(__file__).resolve().parents[1] / "fixtures" / "stored"
NAME = re.compile(r"^(?P<type>[A-Za-z0-9]+)\.v(?P<version>[1-9][0-9]*)\.json$")


class FixedKeyRing:
    """A key ring holding given keys; it never makes one."""

    def __init__(self, keys: dict[UUID, bytes]):
        self._keys = dict(keys)
        self._destroyed: set[UUID] = set()

    def key_for(self, subject_id: UUID, *, create: bool, new: bool = False) -> SubjectKey | None:
        key = self._keys.get(subject_id)
        if key is None:
            if create and subject_id in self._destroyed:
                raise SubjectKeyDestroyed(subject_id)
            if create:
                raise LookupError(f"no fixed key for {subject_id}")
            return None
        return SubjectKey(kid=subject_id.hex, key=key)

    def destroy(self, subject_id: UUID) -> bool:
        self._destroyed.add(subject_id)
        return self._keys.pop(subject_id, None) is not None


def _fixture_files() -> list[Path]:
    return sorted(STORED.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _decode(fixture: dict[str, Any]) -> Any:
    state = fixture["state"]
    ring = FixedKeyRing({UUID(state["subject_id"]): bytes.fromhex(fixture["key_hex"])})
    return EventCodec(ring).decode(
        UUID(fixture["originator_id"]),
        fixture["originator_version"],
        fixture["topic"],
        json.dumps(state).encode(),
    )


# -- what the fixtures hold ----------------------------------------------------------

CUSTOMER_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e01")
OPPORTUNITY_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e02")
INTERACTION_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e03")
REQUEST_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e04")
TASK_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e05")
EXPORT_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e41")
USER_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e51")
TEAM_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e52")
OTHER_TEAM_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e53")
API_KEY_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e54")
EMAIL_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e11")
PHONE_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e12")
COMMENT_ID = UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e21")

META = EventMeta(
    event_id=UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e31"),
    occurred_at=datetime(2024, 4, 30, 16, 45, tzinfo=timezone(timedelta(hours=2))),
    recorded_at=datetime(2024, 5, 1, 9, 30, 15, 250000, tzinfo=UTC),
    actor=Actor("u1", "sales_rep"),
    correlation_id="corr-fixture",
    causation_id="cause-fixture",
    command_id=UUID("5f0c1a2e-7d1b-4c3a-9e8f-0a1b2c3d4e32"),
    reason="fixture",
)
EMAIL = ContactPoint(EMAIL_ID, "email", "grete.mueller@example.ch", "work", None, True)
PHONE = ContactPoint(PHONE_ID, "phone", "+41 44 668 18 00", "", "Hans Müller", False)
DUE = datetime(2024, 5, 3, 15, 0, tzinfo=UTC)

#: (stored type name, stored version) -> (originator id, originator version, fields).
EXPECTED: dict[tuple[str, int], tuple[UUID, int, dict[str, Any]]] = {
    ("CustomerRegistered", 1): (CUSTOMER_ID, 1, {
        "kind": "company", "name": "Bäckerei Müller AG", "contacts": (EMAIL, PHONE),
        "source": "trade_fair", "owner_id": "u1", "lifecycle_stage": "prospect",
        "industry": "Bäckerei", "country": "CH", "preferred_language": "de",
        "tags": ("b2b", "vip"),
    }),
    ("CustomerDetailsChanged", 1): (CUSTOMER_ID, 2, {
        "changes": {"industry": {"before": "Bäckerei", "after": "Konditorei"}},
        "personal_changes": {"name": {"before": "Bäckerei Müller AG",
                                      "after": "Müller Konditorei AG"}},
    }),
    ("ContactAdded", 1): (CUSTOMER_ID, 2, {"contact": EMAIL}),
    ("ContactRemoved", 1): (CUSTOMER_ID, 2, {"contact_id": PHONE_ID, "kind": "phone"}),
    ("CustomerOwnerReassigned", 1): (CUSTOMER_ID, 2, {"previous_owner_id": "u1",
                                                      "owner_id": "u2"}),
    ("CustomerShared", 1): (CUSTOMER_ID, 2, {"user_id": "u3"}),
    ("CustomerUnshared", 1): (CUSTOMER_ID, 3, {"user_id": "u3"}),
    ("CustomerLifecycleStageChanged", 1): (CUSTOMER_ID, 2, {"from_stage": "prospect",
                                                            "to_stage": "customer"}),
    ("CustomerClassified", 1): (CUSTOMER_ID, 2, {"previous_segment": None, "segment": "smb"}),
    ("CustomerTagged", 1): (CUSTOMER_ID, 2, {"tag": "key-account"}),
    ("CustomerUntagged", 1): (CUSTOMER_ID, 2, {"tag": "vip"}),
    ("CustomerPersonalDataErased", 1): (CUSTOMER_ID, 2, {"request_reference": "DSR-2024-17"}),
    ("CustomerConsentSet", 1): (CUSTOMER_ID, 2, {"channel": "email", "granted": False,
                                                 "previous": True}),
    ("CustomerPreferencesSet", 1): (CUSTOMER_ID, 2, {
        "changes": {"newsletter": {"before": None, "after": "monthly"},
                    "calls": {"before": True, "after": False}},
    }),
    ("CustomerPurchaseRecorded", 1): (CUSTOMER_ID, 2, {
        "order_id": "ORD-2024-0042", "amount": Decimal("38.50"), "currency": "CHF",
        "lines": (PurchaseLine("ZOPF", "Butterzopf", Decimal("2"), Decimal("12.25")),
                  PurchaseLine("GIPF", "Gipfeli", Decimal("7"), Decimal("2.00"))),
        "purchased_at": datetime(2024, 4, 29, 7, 15, tzinfo=UTC),
    }),
    ("OpportunityOpened", 1): (OPPORTUNITY_ID, 1, {
        "customer_id": CUSTOMER_ID, "title": "Müller: Kassensystem 3 Filialen",
        "amount": Decimal("1250000"), "currency": "JPY", "expected_close": date(2024, 9, 30),
        "pipeline": "default", "stage": "qualification", "probability": 10, "owner_id": "u1",
    }),
    ("OpportunityStageChanged", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "from_stage": "qualification", "to_stage": "proposal",
        "probability": 50,
    }),
    ("OpportunityAmountChanged", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_amount": Decimal("1250000"),
        "amount": Decimal("3500.125"), "previous_currency": "JPY", "currency": "KWD",
    }),
    ("OpportunityCloseDateChanged", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_expected_close": date(2024, 9, 30),
        "expected_close": date(2024, 12, 31),
    }),
    ("OpportunityOwnerChanged", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_owner_id": "u1", "owner_id": "u3",
    }),
    ("OpportunityShared", 1): (OPPORTUNITY_ID, 2, {"customer_id": CUSTOMER_ID, "user_id": "u3"}),
    ("OpportunityUnshared", 1): (OPPORTUNITY_ID, 3, {"customer_id": CUSTOMER_ID, "user_id": "u3"}),
    ("OpportunityWon", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "from_stage": "negotiation", "amount": Decimal("3500.125"),
        "currency": "KWD",
    }),
    ("OpportunityLost", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "from_stage": "proposal", "loss_reason": "no_budget",
    }),
    ("OpportunityReopened", 1): (OPPORTUNITY_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_outcome": "lost", "stage": "proposal",
        "probability": 50,
    }),
    ("InteractionLogged", 1): (INTERACTION_ID, 1, {
        "customer_id": CUSTOMER_ID, "channel": "meeting", "direction": "outbound",
        "subject": "Demo bei Frau Müller", "body": "Will drei Kassen, Budget im Herbst.",
        "participants": ("u1", "grete.mueller@example.ch"), "duration_minutes": 45,
        "opportunity_id": OPPORTUNITY_ID, "service_request_id": None,
    }),
    ("ServiceRequestOpened", 1): (REQUEST_ID, 1, {
        "customer_id": CUSTOMER_ID, "channel": "phone", "request_type": "complaint",
        "priority": "high", "subject": "Rechnung an Frau Müller doppelt",
        "description": "Rechnung 2024-117 wurde zweimal belastet.",
    }),
    ("ServiceRequestAssigned", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_assignee_id": None, "assignee_id": "agent-7",
    }),
    ("ServiceRequestPriorityChanged", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_priority": "high", "priority": "urgent",
    }),
    ("ServiceRequestSlaSet", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "priority": "urgent",
        "first_response_due_at": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        "resolution_due_at": datetime(2024, 5, 1, 16, 0, tzinfo=UTC),
    }),
    ("ServiceRequestStatusChanged", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "from_status": "open", "to_status": "waiting_on_customer",
    }),
    ("ServiceRequestCommented", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "comment_id": COMMENT_ID, "visibility": "internal",
        "body": "Frau Müller schickt den Kontoauszug.",
    }),
    ("ServiceRequestResolved", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "from_status": "in_progress",
        "resolution": "Doppelbuchung an Frau Müller erstattet.",
    }),
    ("ServiceRequestSatisfactionRated", 1): (REQUEST_ID, 2, {
        "customer_id": CUSTOMER_ID, "rating": 5, "comment": "Sehr freundlich, danke!",
    }),
    ("TaskCreated", 1): (TASK_ID, 1, {
        "customer_id": CUSTOMER_ID, "title": "Frau Müller zurückrufen",
        "description": "Wegen Filiale Oerlikon", "due_at": DUE, "assignee_id": "u1",
        "related_type": "opportunity", "related_id": OPPORTUNITY_ID,
    }),
    ("TaskReassigned", 1): (TASK_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_assignee_id": "u1", "assignee_id": "u2",
    }),
    ("TaskDueChanged", 1): (TASK_ID, 2, {
        "customer_id": CUSTOMER_ID, "previous_due_at": DUE, "due_at": None,
    }),
    ("TaskCommented", 1): (TASK_ID, 2, {
        "customer_id": CUSTOMER_ID, "comment_id": COMMENT_ID,
        "body": "Frau Müller ist bis Montag weg.",
    }),
    ("TaskCompleted", 1): (TASK_ID, 2, {"customer_id": CUSTOMER_ID}),
    ("TaskCancelled", 1): (TASK_ID, 2, {"customer_id": CUSTOMER_ID}),
    ("AuditExported", 1): (EXPORT_ID, 1, {
        "customer_id": CUSTOMER_ID, "occurred_from": None,
        "occurred_to": datetime(2026, 3, 1, tzinfo=UTC), "events": 42, "last_position": 1234,
        "head_position": 1240, "manifest_sha256": "ab" * 32,
    }),
    ("UserCreated", 1): (USER_ID, 1, {
        "username": "grete", "display_name": "Grete Müller", "email": "grete@example.ch",
        "role": "sales_rep", "team_id": TEAM_ID,
    }),
    ("UserRoleChanged", 1): (USER_ID, 2, {"role": "manager", "previous_role": "sales_rep"}),
    ("UserJoinedTeam", 1): (USER_ID, 3, {"team_id": OTHER_TEAM_ID, "previous_team_id": TEAM_ID}),
    ("UserDeactivated", 1): (USER_ID, 4, {}),
    ("UserReactivated", 1): (USER_ID, 5, {}),
    ("UserPasswordChanged", 1): (USER_ID, 6, {}),
    ("TeamCreated", 1): (TEAM_ID, 1, {"name": "Team Nord", "manager_id": USER_ID}),
    ("TeamRenamed", 1): (TEAM_ID, 2, {"name": "Team Nordost", "previous_name": "Team Nord"}),
    ("ApiKeyIssued", 1): (API_KEY_ID, 1, {
        "name": "ERP", "role": "integration", "expires_at": datetime(2027, 1, 1, tzinfo=UTC),
    }),
    ("ApiKeyRevoked", 1): (API_KEY_ID, 2, {}),
}


# -- every version of every type has a fixture ----------------------------------------

REQUIRED = sorted(
    (type_name, version)
    for type_name, cls in all_event_types().items()
    for version in range(1, cls.class_version + 1)
)


@pytest.mark.parametrize(("type_name", "version"), REQUIRED,
                         ids=[f"{t}.v{v}" for t, v in REQUIRED])
def test_every_event_type_has_a_fixture_for_every_version(type_name, version):
    path = STORED / f"{type_name}.v{version}.json"
    assert path.is_file(), (
        f"{path.name} is missing: stored {type_name} events of version {version} must stay "
        "readable; run tests/fixtures/make_stored_fixtures.py and list its fields in EXPECTED"
    )


def test_every_fixture_names_a_known_type_and_version():
    files = _fixture_files()
    assert files, f"no fixtures in {STORED}"
    for path in files:
        match = NAME.match(path.name)
        assert match, f"{path.name} is not named <TypeName>.v<version>.json"
        cls = all_event_types().get(match["type"])
        assert cls is not None, f"{path.name}: no event type {match['type']!r}"
        assert 1 <= int(match["version"]) <= cls.class_version, path.name


# -- every fixture decodes into the current event class --------------------------------

FILES = _fixture_files()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_decodes_into_the_expected_event(path):
    match = NAME.match(path.name)
    assert match
    type_name, version = match["type"], int(match["version"])
    fixture = _load(path)
    state = fixture["state"]
    assert fixture["topic"] == type_name
    assert (state["type"], state["version"], state["format"]) == (type_name, version, 1)
    assert len(bytes.fromhex(fixture["key_hex"])) == 32
    assert (type_name, version) in EXPECTED, f"list the fields of {path.name} in EXPECTED"
    originator_id, originator_version, fields = EXPECTED[(type_name, version)]

    event = _decode(fixture)

    assert type(event) is event_type(type_name)
    assert (event.originator_id, event.originator_version) == (originator_id,
                                                               originator_version)
    assert event.payload() == fields
    assert event.meta == META
    assert event.meta.occurred_at.utcoffset() == timedelta(hours=2)
    assert event.timestamp == META.recorded_at
    assert event.personal_data_erased is False


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_personal_data_in_fixtures_is_sealed(path):
    fixture = _load(path)
    cls = event_type(fixture["topic"])
    raw = json.dumps(fixture["state"], ensure_ascii=False)
    assert not set(cls.personal_fields) & set(fixture["state"]["data"])
    if cls.personal_fields:
        assert "sealed" in fixture["state"]
        for value in _strings(_decode(fixture).payload(), cls.personal_fields):
            assert value not in raw


def _strings(payload: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The longer text values inside the named personal fields."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if len(value) >= 8:
                out.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))

    for name in names:
        walk(payload[name])
    return out


def _current_version_files() -> list[Path]:
    """Fixtures of each type's current version (older ones only need to decode)."""
    out = []
    for path in FILES:
        match = NAME.match(path.name)
        assert match
        if int(match["version"]) == all_event_types()[match["type"]].class_version:
            out.append(path)
    return out


CURRENT_FILES = _current_version_files()


@pytest.mark.parametrize("path", CURRENT_FILES, ids=[p.stem for p in CURRENT_FILES])
def test_fixture_of_the_current_version_is_what_the_codec_writes_today(path):
    fixture = _load(path)
    event = _decode(fixture)
    sealed = fixture["state"].get("sealed")
    nonce = bytes.fromhex("00" * 12) if sealed is None else base64.b64decode(sealed["nonce"])
    ring = FixedKeyRing({event.subject_id(): bytes.fromhex(fixture["key_hex"])})
    with mock.patch.object(events.codec, "os", SimpleNamespace(urandom=lambda n: nonce[:n])):
        topic, state = EventCodec(ring).encode(event)
    assert topic == fixture["topic"]
    assert json.loads(state) == fixture["state"]


def test_fixture_key_ring_reads_nothing_after_destroy():
    path = STORED / "TaskCommented.v1.json"
    fixture = _load(path)
    subject = UUID(fixture["state"]["subject_id"])
    ring = FixedKeyRing({subject: bytes.fromhex(fixture["key_hex"])})
    assert ring.destroy(subject) is True
    state = json.dumps(fixture["state"]).encode()
    event = EventCodec(ring).decode(UUID(fixture["originator_id"]),
                                    fixture["originator_version"], fixture["topic"], state)
    assert (event.personal_data_erased, event.body, event.comment_id) == (True, None, COMMENT_ID)
    with pytest.raises(SubjectKeyDestroyed):
        ring.key_for(subject, create=True)
