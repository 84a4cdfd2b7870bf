"""Timelines, time travel and history on a real PostgreSQL, through the commands a user
sends (with a clock the test moves) and through the HTTP routes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import httpx

from commands import HANDLERS
from commands import customer as cc
from commands import interaction as ci
from commands import opportunity as co
from commands import service_request as cs
from commands import task as ct
from commands.application import CommandService, Principal, Request
from commands.clock import FixedClock
from events import base as events_base
from events.base import CrmEvent
from events.keys import KeyWrapper
from replay.state import Replayer, history
from replay.timeline import TimelineQuery, timeline
from tests.conftest import MASTER_KEY
from tests.e2e.test_http import serving

pytestmark = pytest.mark.postgres

REP = Principal("rep-1", "sales_rep")
AGENT = Principal("agent-7", "service_agent")
MANAGER = Principal("boss", "manager")


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


class Story:
    """Commands sent at given recording times (the test's clock)."""

    def __init__(self, system: Any):
        self.system = system
        self.clock = FixedClock(at(1, 10))
        self.service = CommandService(system.app, HANDLERS, email_key=b"e" * 32, clock=self.clock)

    def send(self, when: datetime, command: Any, *, who: Principal = REP, target: UUID | None = None,
             version: int | None = None) -> Any:
        self.clock.set(when)
        return self.service.execute(command, Request(principal=who, correlation_id="corr-story",
                                                     target=target, expected_version=version))

    def replayer(self, **kw: Any) -> Replayer:
        return Replayer(self.system.app.factory.datastore.get_connection, self.system.app.codec, **kw)


@pytest.fixture
def story(system: Any) -> Story:
    return Story(system)


def _customer_with_a_correction(s: Story) -> UUID:
    """Registered on Jan 10 (retail); changed to finance on Feb 15; on Mar 5 a correction
    back-dated to Feb 1 says insurance."""
    cid: UUID = s.send(at(1, 10), cc.RegisterCustomer(kind="company", name="Acme", industry="retail")).id
    s.send(at(2, 15), cc.ChangeCustomerDetails(industry="finance"), target=cid, version=1)
    s.send(at(3, 5), cc.ChangeCustomerDetails(industry="insurance", occurred_at=at(2, 1),
                                              reason="correction: insurer since February"),
           who=MANAGER, target=cid, version=2)
    return cid


def _industry(r: Replayer, cid: UUID, as_of: datetime | None, known: datetime | None) -> str | None:
    state = r.state(cid, as_of=as_of, as_known_at=known)
    return None if state is None else state.industry  # type: ignore[attr-defined,no-any-return]


def test_as_of_and_as_known_at_around_a_back_dated_correction(story: Story) -> None:
    cid = _customer_with_a_correction(story)
    r = story.replayer()
    now = at(3, 6)
    # What was true on Feb 10, as we know it now: the correction counts from Feb 1.
    assert _industry(r, cid, at(2, 10), None) == "insurance"
    # What we believed on Mar 1 about Feb 10: the correction was not recorded yet.
    assert _industry(r, cid, at(2, 10), at(3, 1)) == "retail"
    # Feb 20 as believed on Mar 1: the Feb 15 change only.
    assert _industry(r, cid, at(2, 20), at(3, 1)) == "finance"
    # Among events that count, the stored order decides: as of now equals the current record.
    assert _industry(r, cid, at(2, 20), None) == "insurance"
    assert _industry(r, cid, now, now) == story.system.app.load_any(cid).industry == "insurance"
    # Before it existed (in either time), there is no record.
    assert r.state(cid, as_of=at(1, 5)) is None
    assert r.state(cid, as_known_at=at(1, 5)) is None
    assert _industry(r, cid, None, at(2, 20)) == "finance"


def test_snapshots_give_the_same_answers_as_a_full_replay(story: Story) -> None:
    cid = _customer_with_a_correction(story)
    for day in range(1, 8):  # more changes, some back-dated into January
        story.send(at(3, 10 + day), cc.TagCustomer(tag=f"t{day}", occurred_at=at(1, 10 + day * 2)
                                                   if day % 2 else None), target=cid)
    plain, snap = story.replayer(snapshots=False), story.replayer(snapshot_every=2)
    assert snap.refresh_snapshots(cid) == 5
    times = [None, *(at(1, 1) + timedelta(days=d) for d in range(0, 90, 4))]
    for as_of in times:
        for known in times:
            a, b = plain.state(cid, as_of=as_of, as_known_at=known), snap.state(cid, as_of=as_of,
                                                                                   as_known_at=known)
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.state() == b.state(), (as_of, known)


@pytest.mark.parametrize("tamper", [
    # an early business time: the snapshot (with later changes in it) is picked for an early as-of
    "max_occurred_at = '2026-01-01T00:00:00Z'",
    "max_recorded_at = '2026-01-01T00:00:00Z'",
    "version = version + 100",
    "state = (SELECT state FROM crm_snapshots s2 ORDER BY s2.version LIMIT 1)",
    "mac = NULL",
])
def test_a_changed_snapshot_is_not_used(story: Story, db: psycopg.Connection[Any], tamper: str) -> None:
    """Snapshots are a cache written by the CRM and authenticated by a MAC over every
    column: one changed in the database is passed over and the record rebuilt from its
    events (which the chain covers), so as-of answers do not move."""
    cid = _customer_with_a_correction(story)
    for day in range(1, 8):
        story.send(at(3, 10 + day), cc.TagCustomer(tag=f"t{day}"), target=cid)
    plain, snap = story.replayer(snapshots=False), story.replayer(snapshot_every=2)
    assert snap.refresh_snapshots(cid) == 5
    db.execute(f"UPDATE crm_snapshots SET {tamper} WHERE aggregate_id = %s AND version = "
               "(SELECT max(version) FROM crm_snapshots WHERE aggregate_id = %s)", (cid, cid))
    for as_of in (at(1, 20), at(2, 10), at(3, 14), None):
        a, b = plain.state(cid, as_of=as_of), snap.state(cid, as_of=as_of)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a.state() == b.state(), (tamper, as_of)
    # the untouched snapshots are still used: the MAC is per row
    assert snap._best_snapshot(cid, as_of=None, as_known_at=None, max_version=4) is not None


def test_history_between_two_times_field_by_field(story: Story) -> None:
    cid = _customer_with_a_correction(story)
    r = story.replayer()
    before, after, seen = history(r, cid, start=at(1, 15), end=at(2, 20), as_known_at=at(3, 1))
    assert before is not None and after is not None
    assert (before.industry, after.industry) == ("retail", "finance")  # type: ignore[attr-defined]
    assert [(e.originator_version, ch) for e, ch in seen] == [
        (2, [{"field": "industry", "before": "retail", "after": "finance"}])]


def _related_story(s: Story) -> tuple[UUID, UUID]:
    cid = s.send(at(1, 10), cc.RegisterCustomer(
        kind="person", name="Mia Berg", contacts=[{"kind": "email", "value": "mia@example.org"}])).id
    other = s.send(at(1, 10, 13), cc.RegisterCustomer(kind="person", name="Other Person")).id
    opp = s.send(at(1, 11), co.OpenOpportunity(customer_id=cid, title="Licence", amount=Decimal("1200"),
                                               currency="EUR")).id
    s.send(at(1, 11, 13), co.OpenOpportunity(customer_id=other, title="Not hers", amount=Decimal("1"),
                                             currency="EUR"))
    s.send(at(1, 12), ci.LogInteraction(customer_id=cid, channel="call", direction="outbound",
                                        subject="Intro", body="Wants a demo", occurred_at=at(1, 9)))
    sr = s.send(at(1, 13), cs.OpenServiceRequest(customer_id=cid, channel="email", type="question",
                                                 subject="Invoice?"), who=AGENT).id
    s.send(at(1, 14), ct.CreateTask(title="Call back", related_type="customer", related_id=cid))
    s.send(at(1, 15), co.ChangeOpportunityStage(stage="proposal", reason="sent the offer"),
           target=opp, version=1)
    s.send(at(1, 16), cc.RecordPurchase(order_id="ORD-1", amount=Decimal("10.00"), currency="EUR",
                                        lines=[]), target=cid)
    s.send(at(1, 17), cs.AssignServiceRequest(assignee_id="agent-9"), who=AGENT, target=sr, version=1)
    s.send(at(1, 18), cc.ChangeCustomerDetails(name="Mia Berg-Lund", reason="married"), target=cid,
           version=2)
    return cid, other


def test_the_timeline_holds_every_related_event_in_log_order_with_diffs(story: Story) -> None:
    cid, other = _related_story(story)
    page = timeline(story.replayer(), cid, TimelineQuery(limit=100))
    items = page.items
    assert page.next_after is None
    assert [i["type"] for i in items] == [
        "CustomerRegistered", "OpportunityOpened", "InteractionLogged", "ServiceRequestOpened",
        "TaskCreated", "OpportunityStageChanged", "CustomerPurchaseRecorded",
        "ServiceRequestAssigned", "CustomerDetailsChanged"]
    positions = [i["position"] for i in items]
    assert positions == sorted(positions)
    assert all(str(other) not in json.dumps(i) for i in items)
    stage = items[5]
    assert stage["actor_id"] == "rep-1" and stage["actor_role"] == "sales_rep"
    assert stage["reason"] == "sent the offer"
    assert stage["occurred_at"] == stage["recorded_at"] == at(1, 15).isoformat()
    assert stage["changes"] == [
        {"field": "last_open_stage", "before": "qualification", "after": "proposal"},
        {"field": "probability", "before": 10, "after": 50},
        {"field": "stage", "before": "qualification", "after": "proposal"}]
    interaction = items[2]
    assert interaction["occurred_at"] == at(1, 9).isoformat()  # logged late: both times kept
    assert interaction["recorded_at"] == at(1, 12).isoformat()
    purchase = items[6]
    assert [c["field"] for c in purchase["changes"]] == ["purchases.ORD-1"]
    assert purchase["changes"][0]["before"] is None and purchase["changes"][0]["after"]["amount"] == "10.00"
    details = items[8]
    assert details["changes"] == [{"field": "name", "before": "Mia Berg", "after": "Mia Berg-Lund"}]
    assert details["reason"] == "married"
    created = items[0]
    assert {"field": "name", "before": None, "after": "Mia Berg"} in created["changes"]


def test_timeline_filters_and_pages(story: Story) -> None:
    cid, _ = _related_story(story)
    r = story.replayer()
    every = timeline(r, cid, TimelineQuery()).items
    seen: list[int] = []
    after = 0
    while True:
        page = timeline(r, cid, TimelineQuery(after=after, limit=2))
        seen += [i["position"] for i in page.items]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [i["position"] for i in every]
    # Newest first, paging back with ``before``: the same events, the other way round.
    seen, before = [], None
    while True:
        page = timeline(r, cid, TimelineQuery(newest_first=True, before=before, limit=3))
        assert page.next_after is None
        seen += [i["position"] for i in page.items]
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == [i["position"] for i in reversed(every)]
    assert timeline(r, cid, TimelineQuery(newest_first=True, before=every[8]["position"])).items == every[7::-1]
    by_agent = timeline(r, cid, TimelineQuery(actor="agent-7")).items
    assert [i["type"] for i in by_agent] == ["ServiceRequestOpened", "ServiceRequestAssigned"]
    typed = timeline(r, cid, TimelineQuery(types=("CustomerPurchaseRecorded", "TaskCreated"))).items
    assert [i["type"] for i in typed] == ["TaskCreated", "CustomerPurchaseRecorded"]
    window = timeline(r, cid, TimelineQuery(occurred_from=at(1, 9), occurred_to=at(1, 12))).items
    assert [i["type"] for i in window] == ["CustomerRegistered", "OpportunityOpened",
                                           "InteractionLogged"]
    # A late page needs the state before it: its diffs are the same as on one long page.
    assert timeline(r, cid, TimelineQuery(after=every[7]["position"])).items == every[8:]


# -- old stored versions ------------------------------------------------------------------
class _LegacyNoteEvent(CrmEvent):
    aggregate_type = "test_legacy_note"
    subject_field = "customer_id"


class LegacyNoteTaken(_LegacyNoteEvent):
    """v1 stored ``text``; v2 calls it ``note`` and adds ``channel``."""

    type_name = "TestLegacyNoteTaken"
    class_version = 2
    creates = True

    customer_id: UUID
    note: str
    channel: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["note"] = state.pop("text")
        state.setdefault("channel", "unknown")


@pytest.fixture
def legacy_note() -> Iterator[None]:
    events_base.register(LegacyNoteTaken)
    try:
        yield
    finally:
        events_base._REGISTRY.pop(LegacyNoteTaken.type_name, None)


STORED = Path(__file__).resolve().parents[1] / "fixtures" / "stored"


def test_old_stored_versions_appear_upcast_in_the_timeline(system: Any, db: psycopg.Connection[Any],
                                                           legacy_note: None) -> None:
    # Stored forms as an older release wrote them: the v1 fixtures of a customer...
    registered = json.loads((STORED / "CustomerRegistered.v1.json").read_text())
    changed = json.loads((STORED / "CustomerDetailsChanged.v1.json").read_text())
    cid = UUID(registered["originator_id"])
    db.execute("INSERT INTO crm_subject_keys (subject_id, wrapped_key) VALUES (%s, %s)",
               (cid, KeyWrapper(bytes.fromhex(MASTER_KEY)).wrap(cid, bytes.fromhex(registered["key_hex"]))))
    for fixture in (registered, changed):
        db.execute("INSERT INTO crm_events (originator_id, originator_version, topic, state)"
                   " VALUES (%s, %s, %s, %s)",
                   (cid, fixture["originator_version"], fixture["topic"],
                    json.dumps(fixture["state"], sort_keys=True, separators=(",", ":")).encode()))
    # ... and an event of a type whose stored version 1 is now read as version 2.
    note = {**changed["state"], "type": "TestLegacyNoteTaken", "version": 1,
            "event_id": str(uuid.uuid4()), "subject_id": str(cid),
            "data": {"customer_id": str(cid), "text": "met at the fair"}}
    note.pop("sealed", None)
    db.execute("INSERT INTO crm_events (originator_id, originator_version, topic, state)"
               " VALUES (%s, 1, 'TestLegacyNoteTaken', %s)",
               (uuid.uuid4(), json.dumps(note, sort_keys=True, separators=(",", ":")).encode()))
    system.app.recorder.link_backlog()

    items = timeline(Replayer(system.app.factory.datastore.get_connection, system.app.codec), cid,
                     TimelineQuery()).items
    assert [i["type"] for i in items] == ["CustomerRegistered", "CustomerDetailsChanged",
                                          "TestLegacyNoteTaken"]
    assert items[0]["data"]["name"] and not items[0]["personal_data_erased"]  # unsealed with its key
    assert items[0]["actor_id"] == registered["state"]["actor"]["id"]
    assert items[0]["recorded_at"] == datetime.fromisoformat(registered["state"]["recorded_at"]).isoformat()
    assert items[1]["changes"] == [  # the sealed part too, opened with the customer's key
        {"field": "industry", "before": "Bäckerei", "after": "Konditorei"},
        {"field": "name", "before": "Bäckerei Müller AG", "after": "Müller Konditorei AG"}]
    assert items[2]["data"] == {"customer_id": str(cid), "note": "met at the fair", "channel": "unknown"}
    assert items[2]["class_version"] == 2 and items[2]["changes"] is None


# -- over HTTP -------------------------------------------------------------------------------
@pytest.fixture
def client(system: Any) -> Iterator[httpx.Client]:
    with serving(system.http_app()) as base:
        with httpx.Client(base_url=base, timeout=20) as c:
            yield c


def _auth(system: Any, role: str, user: str = "someone") -> dict[str, str]:
    return {"Authorization": f"Bearer {system.tokens.issue(user, role)}"}


def test_routes_for_time_travel_history_and_timeline(story: Story, client: httpx.Client) -> None:
    system = story.system
    cid = _customer_with_a_correction(story)
    auditor = _auth(system, "auditor")
    r = client.get(f"/api/v1/customers/{cid}", params={"as_of": "2026-02-10T00:00:00Z",
                                                      "as_known_at": "2026-03-01T00:00:00Z"},
                   headers=auditor)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data"]["industry"] == "retail" and body["version"] == 1
    assert body["as_known_at"] == "2026-03-01T00:00:00+00:00"
    assert client.get(f"/api/v1/customers/{cid}", params={"as_of": "2026-02-10T00:00:00Z"},
                      headers=auditor).json()["data"]["industry"] == "insurance"
    r = client.get(f"/api/v1/customers/{cid}", params={"as_of": "2025-01-01T00:00:00Z"}, headers=auditor)
    assert r.status_code == 404
    r = client.get(f"/api/v1/customers/{cid}", params={"as_of": "yesterday"}, headers=auditor)
    assert r.status_code == 422 and r.json()["field"] == "as_of"
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.get(f"/api/v1/customers/{cid}", params={"as_known_at": "2026-02-10T00:00:00"},
                   headers=auditor)  # no time zone
    assert r.status_code == 422 and r.json()["field"] == "as_known_at"
    r = client.get(f"/api/v1/opportunities/{cid}", params={"as_of": "2026-02-10T00:00:00Z"},
                   headers=auditor)
    assert r.status_code == 404  # not an opportunity

    r = client.get(f"/api/v1/customers/{cid}/history",
                   params={"from": "2026-01-15T00:00:00Z", "to": "2026-02-20T00:00:00Z",
                           "as_known_at": "2026-03-01T00:00:00Z"}, headers=auditor)
    assert r.status_code == 200, r.text
    assert r.json()["changes"] == [{"field": "industry", "before": "retail", "after": "finance"}]
    assert [e["aggregate_version"] for e in r.json()["events"]] == [2]
    r = client.get(f"/api/v1/customers/{cid}/history", params={"from": "2026-02-20T00:00:00Z",
                                                               "to": "2026-01-15T00:00:00Z"},
                   headers=auditor)
    assert r.status_code == 422 and r.json()["field"] == "to"

    r = client.get(f"/api/v1/customers/{cid}/timeline", params={"limit": 2}, headers=auditor)
    assert r.status_code == 200, r.text
    page = r.json()
    assert [i["aggregate_version"] for i in page["items"]] == [1, 2] and page["next_after"]
    r = client.get(f"/api/v1/customers/{cid}/timeline", params={"after": page["next_after"]},
                   headers=auditor)
    last = r.json()["items"]
    assert [i["reason"] for i in last] == ["correction: insurer since February"]
    assert last[0]["changes"] == [{"field": "industry", "before": "finance", "after": "insurance"}]
    r = client.get(f"/api/v1/customers/{cid}/timeline", params={"type": "NoSuchEvent"}, headers=auditor)
    assert r.status_code == 422 and r.json()["field"] == "type"
    r = client.get(f"/api/v1/customers/{cid}/timeline", params={"from": "soon"}, headers=auditor)
    assert r.status_code == 422 and r.json()["field"] == "from"
    # Analysts see the timeline with personal data masked.
    masked = client.get(f"/api/v1/customers/{cid}/timeline", headers=_auth(system, "analyst")).json()
    first = masked["items"][0]
    assert first["data"]["name"] == "***"
    assert {"field": "name", "before": None, "after": "***"} in first["changes"]
    assert client.get(f"/api/v1/customers/{uuid.uuid4()}/timeline", headers=auditor).status_code == 404


def test_an_auditor_reads_but_never_writes(story: Story, client: httpx.Client) -> None:
    system = story.system
    cid = _customer_with_a_correction(story)
    auditor = _auth(system, "auditor")
    assert client.get(f"/api/v1/customers/{cid}/timeline", headers=auditor).status_code == 200
    r = client.post("/api/v1/customers", json={"kind": "person", "name": "X"}, headers=auditor)
    assert r.status_code == 403
    r = client.patch(f"/api/v1/customers/{cid}", json={"industry": "x"},
                     headers={**auditor, "If-Match": '"3"'})
    assert r.status_code == 403
    assert client.get(f"/api/v1/customers/{cid}/audit-export",
                      headers=_auth(system, "sales_rep")).status_code == 403
