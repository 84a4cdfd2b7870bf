"""The automation runner: follows the event log, runs the rules, fires durable timers.

Exactly once, across replays, restarts and crashes:

- every command carries a deterministic idempotency key (``rule:event id`` or
  ``timer id:step``) under the ``automation`` principal; a key already used means the
  command was issued, so it is skipped;
- the runner's position, its timers and its load table move in one transaction per
  event, after that event's commands: a crash in between re-runs the event, whose
  commands are then skipped;
- a timer is marked fired (and its notifications written) in one transaction after its
  commands: a crash in between fires it again, to the same effect.

An event whose rules fail on its data (``projections.follow.classify``) is parked
(``crm_automation_parked``) and passed at once; a failure of the database, the event
store or a concurrent change parks nothing: the step is tried again after a pause that
doubles up to ``retry_max_seconds``.

Leadership: one runner at a time holds a session advisory lock; another waits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from commands import AGGREGATE_TYPES, DomainError
from commands import service_request as cs
from commands import task as ct
from commands.application import CommandService, CrmApplication, Principal, Request
from commands.clock import Clock
from commands.errors import ConcurrencyConflict, IdempotencyKeyReused
from events import customer as ce
from events import interaction as ie
from events import opportunity as oe
from events import service_request as se
from events import task as te
from events.base import CrmEvent
from automation import survey
from projections.follow import MOMENT, Backoff, FollowerStats, LogFollower, classify, clean_text
from automation.mail import Mailer
from automation.config import AutomationConfig, Team, add_working_days, raised

log = structlog.get_logger("crm.automation")

PRINCIPAL = Principal(id="automation", role="integration")
NAME = "automation"
PARK_AFTER = 3
TABLES = (
    "CREATE TABLE IF NOT EXISTS crm_automation_tracking (name text PRIMARY KEY,"
    " position bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS crm_automation_timers (id text PRIMARY KEY,"
    " due_at timestamptz NOT NULL, kind text NOT NULL, payload jsonb NOT NULL,"
    " fired_at timestamptz, outcome text)",
    "CREATE INDEX IF NOT EXISTS crm_automation_timers_due ON crm_automation_timers (due_at)"
    " WHERE fired_at IS NULL",
    "CREATE TABLE IF NOT EXISTS crm_automation_notifications (id text PRIMARY KEY,"
    " recipient text NOT NULL, kind text NOT NULL, message text NOT NULL,"
    " related_type text, related_id uuid, link text, created_at timestamptz NOT NULL,"
    " emailed_at timestamptz)",
    "CREATE INDEX IF NOT EXISTS crm_automation_notifications_recipient"
    " ON crm_automation_notifications (recipient, created_at)",
    "CREATE TABLE IF NOT EXISTS crm_automation_surveys (request_id uuid PRIMARY KEY,"
    " token text NOT NULL, expires_at timestamptz NOT NULL, created_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crm_automation_customers (customer_id uuid PRIMARY KEY,"
    " owner_id text NOT NULL, segment text, last_contact_at timestamptz NOT NULL,"
    " last_contact_event text NOT NULL, last_contact_correlation text NOT NULL,"
    " attended_for timestamptz)",
    "CREATE TABLE IF NOT EXISTS crm_automation_purchases (event_id uuid PRIMARY KEY,"
    " customer_id uuid NOT NULL, amount numeric NOT NULL, currency text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS crm_automation_purchases_customer ON crm_automation_purchases (customer_id)",
    "CREATE TABLE IF NOT EXISTS crm_automation_parked (position bigint PRIMARY KEY,"
    " event_type text NOT NULL, error text NOT NULL, parked_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS crm_automation_load (request_id uuid PRIMARY KEY,"
    " assignee_id text, open boolean NOT NULL)",
)
CUSTOMER_EVENTS = (ce.CustomerRegistered, ce.OwnerReassigned, ce.CustomerClassified,
                   ce.PurchaseRecorded, ie.InteractionLogged)
STAGE_EVENTS = (oe.OpportunityOpened, oe.OpportunityStageChanged, oe.OpportunityReopened)
TOPICS = frozenset(e.type_name for e in (
    *STAGE_EVENTS, *CUSTOMER_EVENTS, se.ServiceRequestOpened, se.ServiceRequestAssigned, se.ServiceRequestResolved,
    se.ServiceRequestStatusChanged, se.ServiceRequestPriorityChanged, te.TaskCreated, te.TaskDueChanged))


def create_tables(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for sql in TABLES:
            conn.execute(sql)
        conn.execute("INSERT INTO crm_automation_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                     (NAME,))


def notifications_for(conn: psycopg.Connection[Any], recipient: str, limit: int = 100) -> list[dict[str, Any]]:
    """The recipient's notifications, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id, kind, message, related_type, related_id, link, created_at"
            " FROM crm_automation_notifications WHERE recipient = %s"
            " ORDER BY created_at DESC, id LIMIT %s", (recipient, limit)).fetchall()


class AutomationRunner(LogFollower):
    """Runs the rules of ``config`` over the log, issuing commands through ``commands``
    (in the ``LogFollower`` frame: woken by an append, and every ``poll_seconds`` for the
    timers that fall due)."""

    def __init__(self, conninfo: str, app: CrmApplication, commands: CommandService,
                 config: AutomationConfig, clock: Clock, *, batch_size: int = 500,
                 poll_seconds: float = 1.0, survey_key: bytes | None = None,
                 survey_ttl: timedelta = timedelta(days=14), mailer: Mailer | None = None,
                 retry_max_seconds: float = 30.0, events_table: str = "crm_events"):
        self.name = "automation"
        self.conninfo = conninfo
        self.events_table = events_table
        self.stats = FollowerStats()
        self.app = app
        self.commands = commands
        self.config = config
        self.clock = clock
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.survey_key = survey_key
        self.survey_ttl = survey_ttl
        self.mailer = mailer
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._failures: dict[int | str, int] = {}
        self.issued = 0  # commands issued by this runner (not skipped as already issued)
        #: pauses after a failure of the moment: poll_seconds, doubling up to retry_max_seconds
        self.backoff = Backoff(poll_seconds, retry_max_seconds)

    @property
    def retries(self) -> int:
        """Steps that failed on the database or a concurrent change."""
        return self.stats.retries

    @property
    def parked(self) -> int:
        """Events this runner parked."""
        return self.stats.parked

    # -- leadership ------------------------------------------------------------
    def try_lead(self) -> bool:
        if self._lock_conn is not None and not self._lock_conn.closed:
            return True
        conn = psycopg.connect(self.conninfo, autocommit=True)
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext('crm_automation'))").fetchone()
        if not (row and row[0]):
            conn.close()
            return False
        self._lock_conn = conn
        self.stats.is_leader = True
        return True

    def close(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None
        self.stats.is_leader = False

    # -- loop --------------------------------------------------------------------
    def step(self, stop: threading.Event | None = None) -> int:
        """Follow the log to its end, then fire the timers that are due; how many
        events and timers were handled (0 when another runner leads). A stop asked for
        ends a long catch-up between two batches (each is committed with its position)."""
        if not self.try_lead():
            return 0
        done = 0
        while True:
            n = self.process_events()
            done += n
            if stop is not None and stop.is_set():
                return done
            if n < self.batch_size:
                break
        done += self.fire_due()
        done += self.attend()
        if self.mailer is not None:
            self.send_mail()
        return done

    def advance(self, stop: threading.Event) -> bool:
        self.step(stop)  # to the log's end, then the timers
        return False

    # -- events --------------------------------------------------------------------
    def process_events(self) -> int:
        started = time.perf_counter()
        with psycopg.connect(self.conninfo) as conn:
            row = conn.execute("SELECT position FROM crm_automation_tracking WHERE name = %s",
                               (NAME,)).fetchone()
            conn.commit()
            position = int(row[0]) if row else 0
            notes = self.app.recorder.select_notifications(start=position + 1, limit=self.batch_size)
            for n in notes:
                if n.topic in TOPICS:
                    try:
                        event: CrmEvent = self.app.mapper.to_domain_event(n)  # type: ignore[assignment]
                        with conn.transaction():
                            self._handle(conn, event)
                            self._track(conn, n.id)
                    except Exception as e:
                        if _of_the_moment(e):
                            raise  # passing: the next step tries again
                        self._park(conn, n.id, n.topic, e)
            if notes:
                with conn.transaction():
                    self._track(conn, notes[-1].id)
                self.note_batch(len(notes), 0, notes[-1].id, started)
            return len(notes)

    def _park(self, conn: psycopg.Connection[Any], position: int, topic: str, error: Exception) -> None:
        """An event whose rules fail on its data is parked (recorded, logged and passed)
        so one bad event does not stop the automation."""
        text = clean_text(f"{type(error).__name__}: {error}"[:2000])
        log.error("automation parked an event", position=position, event_type=topic, error=text)
        with conn.transaction():
            conn.execute("INSERT INTO crm_automation_parked (position, event_type, error) VALUES (%s, %s, %s)"
                         " ON CONFLICT (position) DO NOTHING", (position, clean_text(topic), text))
            self._track(conn, position)
        self.stats.parked += 1

    @staticmethod
    def _track(conn: psycopg.Connection[Any], position: int) -> None:
        conn.execute("INSERT INTO crm_automation_tracking (name, position) VALUES (%s, %s)"
                     " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
                     (NAME, position))

    def _handle(self, conn: psycopg.Connection[Any], event: CrmEvent) -> None:
        if isinstance(event, STAGE_EVENTS):
            self._playbook(event)
        elif isinstance(event, se.ServiceRequestOpened):
            self._route(conn, event)
        elif isinstance(event, se.ServiceRequestPriorityChanged):
            self._priority_changed(conn, event)
        elif isinstance(event, se.ServiceRequestAssigned):
            self._load(conn, event.originator_id, event.assignee_id, True)
        elif isinstance(event, se.ServiceRequestResolved):
            self._load(conn, event.originator_id, None, False)
            self._survey(conn, event)
        elif isinstance(event, se.ServiceRequestStatusChanged):
            self._load(conn, event.originator_id, None, event.to_status != "closed")
        elif isinstance(event, te.TaskCreated | te.TaskDueChanged) and event.due_at is not None:
            self._task_timers(conn, event, event.due_at)
        elif isinstance(event, CUSTOMER_EVENTS):
            self._customer(conn, event)

    def _issue(self, key: str, command: BaseModel, cause: CrmEvent | dict[str, Any], *,
               target: UUID | None = None, expected_version: int | None = None) -> bool:
        """Run the command once per key; False if it was issued before (or is moot)."""
        if self.app.recorder.idempotency_record(PRINCIPAL.id, key) is not None:  # type: ignore[attr-defined]
            return False
        if isinstance(cause, CrmEvent):
            causation, correlation = str(cause.meta.event_id), cause.meta.correlation_id
        else:
            causation, correlation = cause["causation_id"], cause["correlation_id"]
        request = Request(PRINCIPAL, correlation, target=target, expected_version=expected_version,
                          idempotency_key=key, causation_id=causation)
        try:
            self.commands.execute(command, request)
        except IdempotencyKeyReused:
            return False
        except ConcurrencyConflict:
            raise  # someone changed the record meanwhile: the next step tries again
        except DomainError as e:
            # The record no longer allows it (closed, erased...): nothing to do.
            log.info("automation command refused", key=key, error=str(e))
            return False
        self.issued += 1
        return True

    # -- stage playbooks ------------------------------------------------------------
    def _playbook(self, event: CrmEvent) -> None:
        stage = event.to_stage if isinstance(event, oe.OpportunityStageChanged) else event.stage  # type: ignore[attr-defined]
        deal = self.app.load(AGGREGATE_TYPES["opportunity"], event.originator_id,
                             version=event.originator_version)
        playbook = self.config.playbook(deal.pipeline, stage)  # type: ignore[attr-defined]
        if playbook is None:
            return
        for i, task in enumerate(playbook.tasks):
            due = add_working_days(event.meta.occurred_at, task.due_in_working_days)
            command = ct.CreateTask(title=task.title, description=task.description, due_at=due,
                                    assignee_id=deal.owner_id,  # type: ignore[attr-defined]
                                    related_type="opportunity", related_id=event.originator_id,
                                    reason=f"playbook: {playbook.pipeline}/{stage}")
            self._issue(f"playbook:{event.meta.event_id}:{i}", command, event)

    # -- service routing and SLA timers ----------------------------------------------
    def _route(self, conn: psycopg.Connection[Any], event: se.ServiceRequestOpened) -> None:
        team = self.config.route(event.request_type, event.channel, event.priority)
        request_id = event.originator_id
        sr: Any = self.app.load(AGGREGATE_TYPES["service_request"], request_id)
        if team is not None:
            agent = self._least_loaded(conn, team)
            if agent is not None and getattr(sr, "assignee_id", None) is None:
                command = cs.AssignServiceRequest(assignee_id=agent, reason=f"routed to team {team.name}")
                if self._issue(f"route:{event.meta.event_id}", command, event,
                               target=request_id, expected_version=sr.version):
                    self._load(conn, request_id, agent, True)
        self._set_sla(conn, event, sr, event.priority, event.meta.occurred_at,
                      team.name if team else None, "")

    def _priority_changed(self, conn: psycopg.Connection[Any], event: se.ServiceRequestPriorityChanged) -> None:
        """A person changed the priority: the SLA of the new priority applies, from the
        opening. The automation's own raise on a breach keeps the SLA that was missed (a
        tighter due would only be breached again at once)."""
        if event.meta.actor.id == PRINCIPAL.id:
            return
        sr: Any = self.app.load(AGGREGATE_TYPES["service_request"], event.originator_id)
        if sr.opened_at is None:
            return
        team = self.config.route(sr.request_type, sr.channel, event.priority)
        self._set_sla(conn, event, sr, event.priority, sr.opened_at,
                      team.name if team else None, f"; priority changed from {event.previous_priority}")

    def _set_sla(self, conn: psycopg.Connection[Any], event: CrmEvent, sr: Any, priority: str,
                 start: datetime, team: str | None, why: str) -> None:
        """Record the SLA of ``priority`` counted from ``start`` on the request ``sr`` (a
        command, so every reader sees the same due times, with who set them and why) and
        arm its breach timers (a timer that fired already stays fired)."""
        sla = self.config.sla.get(priority)  # type: ignore[call-overload]
        if sla is None:
            return
        request_id = sr.id
        first_due = start + timedelta(minutes=sla.first_response_minutes)
        resolution_due = start + timedelta(minutes=sla.resolution_minutes)
        command = cs.SetServiceRequestSla.model_validate({
            "priority": priority, "first_response_due_at": first_due, "resolution_due_at": resolution_due,
            "reason": (f"SLA policy for {priority} priority: first response within {sla.first_response_minutes:g}"
                       f" min and resolution within {sla.resolution_minutes:g} min of opening{why}")})
        if getattr(sr, "status", None) not in ("resolved", "closed"):
            # (a request already done when the automation catches up has no SLA to meet)
            self._issue(f"sla:{event.meta.event_id}", command, event, target=request_id)
        cause = {"causation_id": str(event.meta.event_id), "correlation_id": event.meta.correlation_id,
                 "request_id": str(request_id), "team": team}
        self._timer(conn, f"sla-first-response:{request_id}", first_due, "sla_first_response", cause,
                    retime=True)
        self._timer(conn, f"sla-resolution:{request_id}", resolution_due, "sla_resolution", cause, retime=True)

    @staticmethod
    def _least_loaded(conn: psycopg.Connection[Any], team: Team) -> str | None:
        agents = [a.id for a in team.agents if a.active]
        if not agents:
            return None
        rows = conn.execute(
            "SELECT assignee_id, count(*) FROM crm_automation_load WHERE open AND assignee_id = ANY(%s)"
            " GROUP BY assignee_id", (agents,)).fetchall()
        load = {r[0]: int(r[1]) for r in rows}
        return min(agents, key=lambda a: (load.get(a, 0), agents.index(a)))

    @staticmethod
    def _load(conn: psycopg.Connection[Any], request_id: UUID, assignee: str | None, is_open: bool) -> None:
        conn.execute(
            "INSERT INTO crm_automation_load (request_id, assignee_id, open) VALUES (%s, %s, %s)"
            " ON CONFLICT (request_id) DO UPDATE SET open = EXCLUDED.open,"
            " assignee_id = coalesce(EXCLUDED.assignee_id, crm_automation_load.assignee_id)",
            (request_id, assignee, is_open))

    @staticmethod
    def _timer(conn: psycopg.Connection[Any], timer_id: str, due_at: datetime, kind: str,
               payload: dict[str, Any], *, retime: bool = False) -> None:
        """Arm a timer once; with ``retime`` an armed timer that has not fired moves to ``due_at``."""
        on_conflict = (" ON CONFLICT (id) DO UPDATE SET due_at = EXCLUDED.due_at"
                       " WHERE crm_automation_timers.fired_at IS NULL" if retime else " ON CONFLICT (id) DO NOTHING")
        conn.execute("INSERT INTO crm_automation_timers (id, due_at, kind, payload) VALUES (%s, %s, %s, %s)"
                     + on_conflict, (timer_id, due_at, kind, Jsonb(payload)))

    # -- satisfaction surveys ----------------------------------------------------------
    def _survey(self, conn: psycopg.Connection[Any], event: se.ServiceRequestResolved) -> None:
        """An invitation with a signed, expiring link; the request's agent is told the link."""
        if self.survey_key is None:
            return
        request_id = event.originator_id
        expires = event.meta.recorded_at + self.survey_ttl
        token = survey.sign(self.survey_key, request_id, expires)
        conn.execute("INSERT INTO crm_automation_surveys (request_id, token, expires_at, created_at)"
                     " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                     (request_id, token, expires, event.meta.recorded_at))
        row = conn.execute("SELECT assignee_id FROM crm_automation_load WHERE request_id = %s",
                           (request_id,)).fetchone()
        if row and row[0]:
            conn.execute(
                "INSERT INTO crm_automation_notifications (id, recipient, kind, message, related_type,"
                " related_id, link, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (f"survey:{event.meta.event_id}", row[0], "survey_invitation",
                 f"Satisfaction survey for service request {request_id}: send the customer the link",
                 "service_request", request_id, f"/api/v1/survey/{token}", event.meta.recorded_at))

    # -- attention: quiet high-value customers ----------------------------------------
    @staticmethod
    def _customer(conn: psycopg.Connection[Any], event: CrmEvent) -> None:
        meta = event.meta
        if isinstance(event, ce.CustomerRegistered):
            conn.execute(
                "INSERT INTO crm_automation_customers (customer_id, owner_id, last_contact_at,"
                " last_contact_event, last_contact_correlation) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (event.originator_id, event.owner_id, meta.occurred_at, str(meta.event_id), meta.correlation_id))
        elif isinstance(event, ce.OwnerReassigned):
            conn.execute("UPDATE crm_automation_customers SET owner_id = %s WHERE customer_id = %s",
                         (event.owner_id, event.originator_id))
        elif isinstance(event, ce.CustomerClassified):
            conn.execute("UPDATE crm_automation_customers SET segment = %s WHERE customer_id = %s",
                         (event.segment, event.originator_id))
        elif isinstance(event, ce.PurchaseRecorded):
            conn.execute("INSERT INTO crm_automation_purchases (event_id, customer_id, amount, currency)"
                         " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                         (meta.event_id, event.originator_id, event.amount, event.currency))
        elif isinstance(event, ie.InteractionLogged):
            conn.execute(
                "UPDATE crm_automation_customers SET last_contact_at = %s, last_contact_event = %s,"
                " last_contact_correlation = %s WHERE customer_id = %s AND last_contact_at < %s",
                (meta.occurred_at, str(meta.event_id), meta.correlation_id, event.customer_id, meta.occurred_at))

    def attend(self) -> int:
        """A task for the owner of each high-value customer quiet for too long; once per
        quiet spell (keyed by the customer's last contact)."""
        rule = self.config.attention
        if not rule.enabled:
            return 0
        now = self.clock.now()
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute(
                "SELECT c.customer_id, c.owner_id, c.last_contact_at, c.last_contact_event,"
                " c.last_contact_correlation FROM crm_automation_customers c"
                " WHERE c.last_contact_at <= %s"
                " AND (c.attended_for IS NULL OR c.attended_for < c.last_contact_at)"
                " AND (c.segment = ANY(%s) OR (%s::numeric IS NOT NULL AND %s::numeric <= (SELECT"
                "  coalesce(sum(p.amount), 0) FROM crm_automation_purchases p"
                "  WHERE p.customer_id = c.customer_id AND p.currency = %s)))"
                " ORDER BY c.last_contact_at LIMIT 500",
                (now - timedelta(days=rule.quiet_days), rule.segments, rule.min_purchases,
                 rule.min_purchases, rule.currency)).fetchall()
            conn.commit()
            for customer_id, owner_id, last_at, last_event, correlation in rows:
                command = ct.CreateTask(
                    title=rule.title, due_at=add_working_days(now, rule.due_in_working_days),
                    assignee_id=owner_id, related_type="customer", related_id=customer_id,
                    description=f"No interaction since {last_at.date().isoformat()}.",
                    reason=f"attention: no interaction for {rule.quiet_days:g} days")
                cause = {"causation_id": last_event, "correlation_id": correlation}
                self._issue(f"attention:{customer_id}:{last_at.isoformat()}", command, cause)
                with conn.transaction():
                    conn.execute("UPDATE crm_automation_customers SET attended_for = %s WHERE customer_id = %s",
                                 (last_at, customer_id))
            return len(rows)

    # -- task reminders ---------------------------------------------------------------
    def _task_timers(self, conn: psycopg.Connection[Any], event: CrmEvent, due_at: datetime) -> None:
        payload = {"causation_id": str(event.meta.event_id), "correlation_id": event.meta.correlation_id,
                   "task_id": str(event.originator_id), "due_at": due_at.isoformat()}
        soon = due_at - timedelta(minutes=self.config.reminders.due_soon_minutes)
        self._timer(conn, f"task-due-soon:{event.meta.event_id}", soon, "task_due_soon", payload)
        self._timer(conn, f"task-overdue:{event.meta.event_id}", due_at, "task_overdue", payload)

    # -- timers ------------------------------------------------------------------------
    def fire_due(self) -> int:
        """Fire every timer due by the clock's now, oldest first; how many fired."""
        now = self.clock.now()
        fired = 0
        with psycopg.connect(self.conninfo) as conn:
            due = conn.execute(
                "SELECT id, kind, payload FROM crm_automation_timers WHERE fired_at IS NULL"
                " AND due_at <= %s ORDER BY due_at, id LIMIT 1000", (now,)).fetchall()
            conn.commit()
            for timer_id, kind, payload in due:
                notes: list[tuple[str, str, str, str, str, UUID]] = []
                try:
                    outcome = self._fire(timer_id, kind, payload, notes)
                except Exception as e:  # noqa: BLE001 -- retried, then given up (recorded)
                    if _of_the_moment(e):
                        raise  # passing: the next step tries again
                    failures = self._failures[timer_id] = self._failures.get(timer_id, 0) + 1
                    if failures < PARK_AFTER:
                        raise
                    log.error("automation gave up a timer", timer=timer_id, error=str(e))
                    outcome = clean_text(f"failed: {type(e).__name__}: {e}"[:2000])
                self._failures.pop(timer_id, None)
                with conn.transaction():
                    conn.cursor().executemany(
                        "INSERT INTO crm_automation_notifications (id, recipient, kind, message,"
                        " related_type, related_id, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (id) DO NOTHING",
                        [(*n, now) for n in notes])
                    conn.execute("UPDATE crm_automation_timers SET fired_at = %s, outcome = %s"
                                 " WHERE id = %s AND fired_at IS NULL", (now, outcome, timer_id))
                fired += 1
        return fired

    # -- e-mail -------------------------------------------------------------------------
    def send_mail(self) -> int:
        """E-mail the notifications not sent yet to recipients with an address (an
        outbox: at least once; a crash between sending and marking sends again)."""
        assert self.mailer is not None
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute(
                "SELECT id, recipient, kind, message, link FROM crm_automation_notifications"
                " WHERE emailed_at IS NULL ORDER BY created_at, id LIMIT 200").fetchall()
            conn.commit()
            outgoing: list[tuple[str, str, str]] = []
            sent: list[str] = []
            for nid, recipient, kind, message, link in rows:
                address = self.config.email_of(recipient)
                sent.append(nid)
                if address is not None:
                    subject = f"[CRM] {kind.replace('_', ' ')}"
                    outgoing.append((address, subject, message + (f"\n\n{link}" if link else "")))
            if outgoing:
                self.mailer.send(outgoing)
            if sent:
                with conn.transaction():
                    conn.execute("UPDATE crm_automation_notifications SET emailed_at = %s WHERE id = ANY(%s)",
                                 (self.clock.now(), sent))
            return len(outgoing)

    def _fire(self, timer_id: str, kind: str, payload: dict[str, Any],
              notes: list[tuple[str, str, str, str, str, UUID]]) -> str:
        if kind in ("sla_first_response", "sla_resolution"):
            return self._breach(timer_id, kind, payload, notes)
        if kind in ("task_due_soon", "task_overdue"):
            task_id = UUID(payload["task_id"])
            task: Any = self.app.load(AGGREGATE_TYPES["task"], task_id)
            if task.status != "open" or task.due_at is None or task.due_at.isoformat() != payload["due_at"]:
                return "moot"
            word = "is due soon" if kind == "task_due_soon" else "is overdue"
            notes.append((timer_id, task.assignee_id, kind,
                          f"Task \"{task.title or ''}\" {word} (due {task.due_at.isoformat()})",
                          "task", task_id))
            return "notified"
        return "unknown"

    def _breach(self, timer_id: str, kind: str, payload: dict[str, Any],
                notes: list[tuple[str, str, str, str, str, UUID]]) -> str:
        request_id = UUID(payload["request_id"])
        cls = AGGREGATE_TYPES["service_request"]
        sr: Any = self.app.load(cls, request_id)
        if kind == "sla_first_response" and sr.status != "open":
            return "met"
        if sr.status in ("resolved", "closed"):
            return "met"
        what = "first response" if kind == "sla_first_response" else "resolution"
        team = self.config.team(payload["team"]) if payload.get("team") else None
        reason = f"SLA breach: {what} overdue"
        self._issue(f"{timer_id}:priority", cs.ChangeServiceRequestPriority.model_validate({"priority": raised(sr.priority), "reason": reason}),
                    payload, target=request_id, expected_version=sr.version)
        if team is not None and team.escalate_to and sr.assignee_id != team.escalate_to:
            sr = self.app.load(cls, request_id)
            self._issue(f"{timer_id}:assign", cs.AssignServiceRequest(assignee_id=team.escalate_to, reason=reason),
                        payload, target=request_id, expected_version=sr.version)
        sr = self.app.load(cls, request_id)  # as escalated: its assignee must act now
        if team is not None:
            notes.append((f"{timer_id}:manager", team.manager, "sla_breach",
                          f"Service request {request_id}: {what} SLA breached; escalated",
                          "service_request", request_id))
        if sr.assignee_id and (team is None or sr.assignee_id != team.manager):
            notes.append((f"{timer_id}:assignee", sr.assignee_id, "sla_breach",
                          f"Service request {request_id}: {what} SLA breached",
                          "service_request", request_id))
        return "escalated"


def _of_the_moment(error: Exception) -> bool:
    """A failure to try again later (the database, the event store, a concurrent
    change), not one of the event's data."""
    return isinstance(error, ConcurrencyConflict) or classify(error) == MOMENT


@dataclass(frozen=True)
class AutomationStatus:
    """The automation's position, lag and parked events (for /ready and /metrics)."""

    position: int
    head: int
    lag_events: int
    lag_seconds: float
    parked: int


def automation_status(conn: psycopg.Connection[Any], events_table: str = "crm_events") -> AutomationStatus:
    """Read on ``conn`` (any row factory); zeros before the automation's tables exist."""
    from projections.store import lag_seconds

    with conn.cursor(row_factory=dict_row) as cur:
        head_row = cur.execute(f'SELECT coalesce(max(notification_id), 0) AS m FROM "{events_table}"').fetchone()
        head = int((head_row or {}).get("m") or 0)
        exists = cur.execute("SELECT to_regclass('crm_automation_tracking') IS NOT NULL"
                             " AND to_regclass('crm_automation_parked') IS NOT NULL AS ok").fetchone()
        if not (exists and exists["ok"]):
            return AutomationStatus(0, head, head, 0.0, 0)
        row = cur.execute("SELECT (SELECT position FROM crm_automation_tracking WHERE name = %s) AS position,"
                          " (SELECT count(*) FROM crm_automation_parked) AS parked", (NAME,)).fetchone()
    position = int((row or {}).get("position") or 0)
    waited = lag_seconds(conn, events_table, position) if position < head else 0.0
    return AutomationStatus(position, head, head - position, waited, int((row or {}).get("parked") or 0))
