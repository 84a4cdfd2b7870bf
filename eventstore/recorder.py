"""The event store's recorders: events, e-mail reservations and idempotency records
written in one transaction.

A command's events, the e-mail addresses it reserves or releases, and the answer to
its Idempotency-Key commit together or not at all: a retry after a crash between
commit and response finds the answer, and never stores the events twice.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal

from eventstore.admission import EmailTaken, IdempotencyKeyTaken, LogState, admit
from events.chain import GENESIS, LINK_VERSION, LinkMeta, link_body, link_from_body, link_hash, meta_of
from events.keys import InMemoryKeyRing, PostgresKeyRing

KEY_DESTROYED = "crm: personal-data key destroyed"
CHAIN_TABLE = "crm_event_chain"
CHECKPOINTS_TABLE = "crm_chain_checkpoints"
#: the session setting that lets the tables' owner (or a superuser) change them anyway
MAINTENANCE_SETTING = "crm.log_maintenance"


def append_only_function(schema: str) -> Composed:
    """The trigger function that refuses UPDATE, DELETE and TRUNCATE of the guarded
    tables, unless the session set ``crm.log_maintenance`` to ``on`` and its role owns
    the table (or is a superuser)."""
    return SQL(
        "CREATE OR REPLACE FUNCTION {0}.crm_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $f$"
        " BEGIN"
        "  IF current_setting({1}, true) = 'on' AND pg_has_role(current_user,"
        "   (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN"
        "   RETURN NULL;"
        "  END IF;"
        "  RAISE EXCEPTION 'crm: % on % refused: the event log is append-only', TG_OP, TG_TABLE_NAME"
        "   USING ERRCODE = 'insufficient_privilege';"
        " END $f$").format(Identifier(schema), Literal(MAINTENANCE_SETTING))


@dataclass
class IdempotencyRecord:
    """The first answer to a request with an Idempotency-Key."""

    principal: str
    key: str
    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass
class WriteExtras:
    """What a command writes beside its events, in the same transaction."""

    reserve_emails: list[tuple[bytes, UUID]] = field(default_factory=list)
    #: customers whose key seals personal data in these events: the append fails if
    #: any of their keys was destroyed meanwhile (checked under the table lock).
    sealed_subjects: set[UUID] = field(default_factory=set)
    release_emails: list[tuple[bytes, UUID]] = field(default_factory=list)
    idempotency: IdempotencyRecord | None = None
    #: users' new password hashes (user id, argon2 hash), kept outside the log
    passwords: list[tuple[UUID, str]] = field(default_factory=list)
    #: users whose sign-in is switched on (True) or off (False)
    sign_in: list[tuple[UUID, bool]] = field(default_factory=list)
    #: users whose role, team or password changed: every token issued before ends
    end_tokens: list[UUID] = field(default_factory=list)
    #: API keys issued: their secrets' hashes, kept outside the log
    api_keys: list[ApiKeySecret] = field(default_factory=list)
    #: API keys revoked (refused from the moment this commits)
    revoked_api_keys: list[UUID] = field(default_factory=list)


@dataclass(frozen=True)
class ApiKeySecret:
    """What a request's API key is checked against (never in an event)."""

    key_id: UUID
    secret_sha256: bytes
    role: str
    expires_at: datetime | None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class WebSession:
    """A browser's sign-in session: what its refresh cookie is checked against (the
    secrets only as SHA-256; never in an event)."""

    secret_sha256: bytes
    csrf_sha256: bytes
    user_id: UUID
    auth_time: datetime
    expires_at: datetime
    valid_until: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Credential:
    """A user's password hash, whether they may sign in, and the generation of their
    tokens (raised by every change of role, team or password; a token of an earlier
    generation is refused)."""

    user_id: UUID
    password_hash: str
    active: bool
    generation: int = 0


def checkpoint_table_statements(schema: str) -> list[Composed]:
    """The signed checkpoints' table (numbered since version 2 of checkpoints)."""
    table = SQL("{0}.{1}").format(Identifier(schema), Identifier(CHECKPOINTS_TABLE))
    return [
        SQL("CREATE TABLE IF NOT EXISTS {0} ("
            " checkpoint_id bigserial PRIMARY KEY,"
            " notification_id bigint NOT NULL,"
            " hash bytea NOT NULL,"
            " signed_at text NOT NULL,"
            " key_id text NOT NULL,"
            " signature bytea NOT NULL)").format(table),
        SQL("ALTER TABLE {0} ADD COLUMN IF NOT EXISTS seq bigint UNIQUE").format(table),
        SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} (notification_id)").format(
            Identifier(CHECKPOINTS_TABLE + "_position_idx"), table),
    ]


def append_only_statements(schema: str, events_table: str = "crm_events") -> list[Composed]:
    """The trigger that keeps the log, its chain and its checkpoints append-only
    (created once: a process starting later takes no lock on them)."""
    out: list[Composed] = [append_only_function(schema)]
    for name in (events_table, CHAIN_TABLE, CHECKPOINTS_TABLE):
        table = SQL("{0}.{1}").format(Identifier(schema), Identifier(name))
        out.append(SQL(
            "DO $d$ BEGIN"
            " IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'crm_append_only'"
            "  AND tgrelid = {0}::regclass) THEN"
            "  CREATE TRIGGER crm_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {1}"
            "   FOR EACH STATEMENT EXECUTE FUNCTION {2}.crm_log_append_only();"
            " END IF;"
            " END $d$").format(Literal(f'"{schema}"."{name}"'), table, Identifier(schema)))
    return out


@dataclass(eq=False)
class _Append:
    """One command's append, waiting for (or being) its group's transaction."""

    stored_events: Sequence[StoredEvent]
    extras: WriteExtras | None
    #: (originator id, version) of each event: what the append claims
    claims: list[tuple[UUID, int]] = field(default_factory=list)
    #: each event's look-up columns for the chain (subject, times, actor)
    lookups: list[LinkMeta] = field(default_factory=list)
    #: each event's chain-link body (``events.chain.link_body``)
    bodies: list[bytes] = field(default_factory=list)
    ids: list[int] | None = None
    error: Exception | None = None
    #: set when this append's thread is to commit the next group
    lead: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class GroupCommitter:
    """Commits appends in groups: whoever arrives while no group is committing commits
    at once (a lone writer never waits for company); appends arriving meanwhile queue
    up, and when the running group is done the first of them commits all queued, up to
    ``max_group``. Each append's own result (ids or error) is set by ``commit``."""

    def __init__(self, commit: Callable[[list[_Append]], None], *, max_group: int = 256):
        self._commit = commit
        self._max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[_Append] = []
        self._busy = False
        #: groups committed, and the most appends one of them held
        self.groups = 0
        self.largest = 0

    def queued(self) -> int:
        """Appends waiting for the running group to finish."""
        with self._lock:
            return len(self._queue)

    def submit(self, append: _Append) -> None:
        with self._lock:
            self._queue.append(append)
            lead = not self._busy
            self._busy = True
        if not lead:
            append.wake.wait()
            if not append.lead:
                return  # committed (or refused) by another append's thread
        with self._lock:
            group = self._queue[: self._max_group]
            del self._queue[: self._max_group]
            self.groups += 1
            self.largest = max(self.largest, len(group))
        try:
            self._commit(group)
        except BaseException as e:
            for a in group:
                if a.ids is None and a.error is None:
                    a.error = e if isinstance(e, Exception) else RuntimeError("append interrupted")
            raise
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].wake.set()
                else:
                    self._busy = False
            for a in group:
                if a is not append:
                    a.wake.set()


@dataclass
class _Group:
    """What a group of appends concerns, worked out before the log is locked."""

    batch: list[_Append]
    #: each append's new personal-data keys (subject -> wrapped key)
    new_keys: list[dict[UUID, bytes]]
    originators: list[Any]
    versions: list[int]
    emails: list[bytes]
    idempotency: list[IdempotencyRecord]
    subjects: list[UUID]

    @classmethod
    def of(cls, batch: list[_Append], keys: PostgresKeyRing | None) -> _Group:
        extras = [a.extras for a in batch if a.extras]
        return cls(
            batch=batch,
            new_keys=[dict(keys.pending_rows(a.extras.sealed_subjects)) if keys is not None and a.extras
                      else {} for a in batch],
            originators=[e.originator_id for a in batch for e in a.stored_events],
            versions=[e.originator_version for a in batch for e in a.stored_events],
            emails=sorted({h for x in extras for h, _ in x.reserve_emails + x.release_emails}),
            idempotency=[x.idempotency for x in extras if x.idempotency],
            subjects=sorted({s for x in extras for s in x.sealed_subjects}),
        )


@dataclass
class _Head:
    """The log's head as read under its lock: the last position, the chain's last link
    and the newest signed checkpoint's position."""

    position: int
    link: bytes
    signed: int

    @classmethod
    def of(cls, row: dict[str, Any] | None) -> _Head:
        if row is None:
            return cls(0, GENESIS, 0)
        return cls(int(row["head"]), bytes(row["link"]) if row["link"] is not None else GENESIS,
                   int(row["signed"]))


@dataclass
class _Placed:
    """The admitted appends' events with their positions and chain links."""

    position: int
    signed: int
    stored_events: list[StoredEvent] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    metas: list[LinkMeta] = field(default_factory=list)
    links: list[bytes] = field(default_factory=list)


def _place(accepted: list[_Append], head: _Head) -> _Placed:
    """Positions after the head, one per event, and each event's chain link (version 2:
    its look-up columns and the newest checkpoint covered too), following on from the
    last link stored. Only this group's events are linked: an event stored by other
    means is left without a link, which verification reports."""
    placed = _Placed(head.position, head.signed)
    link = head.link
    for a in accepted:
        a.ids = list(range(placed.position + 1, placed.position + 1 + len(a.stored_events)))
        placed.position += len(a.stored_events)
        placed.stored_events.extend(a.stored_events)
        placed.ids.extend(a.ids)
        for nid, meta, body in zip(a.ids, a.lookups, a.bodies, strict=True):
            link = link_from_body(link, nid, body, head.signed)
            placed.metas.append(meta._replace(checkpoint_at=head.signed))
            placed.links.append(link)
        if a.extras is not None and a.extras.idempotency is not None:
            _finish_body(a.extras.idempotency, a.ids)
    return placed


def _finish_body(record: IdempotencyRecord, notification_ids: Sequence[int] | None) -> None:
    if notification_ids:
        record.body["position"] = max(notification_ids)


class CrmPostgresRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder, plus reservations and
    idempotency records in the events' transaction (under the same table lock that
    keeps the notification log gap-free)."""

    def __init__(self, datastore: Any, *, events_table_name: str = "crm_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        #: set by the application: new personal-data keys are stored with their events
        self.keys: PostgresKeyRing | None = None
        #: called with the number of events each committed append stored (the chain's
        #: checkpoint signer counts them)
        self.on_appended: Callable[[int], None] | None = None
        schema = Identifier(self.datastore.schema)
        self.reservations_table = SQL("{0}.{1}").format(schema, Identifier("crm_email_reservations"))
        self.idempotency_table = SQL("{0}.{1}").format(schema, Identifier("crm_idempotency"))
        self.credentials_table = SQL("{0}.{1}").format(schema, Identifier("crm_credentials"))
        self.api_keys_table = SQL("{0}.{1}").format(schema, Identifier("crm_api_keys"))
        self.web_sessions_table = SQL("{0}.{1}").format(schema, Identifier("crm_web_sessions"))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                " user_id uuid PRIMARY KEY,"
                " password_hash text NOT NULL,"
                " active boolean NOT NULL DEFAULT true,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(self.credentials_table)
        )
        self.sql_create_statements.append(
            SQL("ALTER TABLE {0} ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 0").format(
                self.credentials_table)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                " key_id uuid PRIMARY KEY,"
                " secret_sha256 bytea NOT NULL,"
                " role text NOT NULL,"
                " expires_at timestamptz,"
                " revoked_at timestamptz,"
                " last_used_at timestamptz,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            ).format(self.api_keys_table)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                " secret_sha256 bytea PRIMARY KEY,"
                " csrf_sha256 bytea NOT NULL,"
                " user_id uuid NOT NULL,"
                " auth_time timestamptz NOT NULL,"
                " expires_at timestamptz NOT NULL,"
                " valid_until timestamptz NOT NULL,"
                " revoked_at timestamptz,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            ).format(self.web_sessions_table)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                " email_hmac bytea PRIMARY KEY,"
                " customer_id uuid NOT NULL,"
                " reserved_at timestamptz NOT NULL DEFAULT now())"
            ).format(self.reservations_table)
        )
        self._add_chain_statements()
        self._add_group_statements()
        self.committer = GroupCommitter(self._commit_group)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                " principal text NOT NULL,"
                " key text NOT NULL,"
                " fingerprint text NOT NULL,"
                " status int NOT NULL,"
                " body jsonb NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (principal, key))"
            ).format(self.idempotency_table)
        )

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        extras: WriteExtras | None = kwargs.get("extras")
        subjects = extras.sealed_subjects if extras is not None else set()
        stored = False
        try:
            if not stored_events:
                return []
            # What can be worked out alone is, here, before joining a group: the
            # group's transaction holds the log's lock.
            append = _Append(
                stored_events, extras,
                claims=[(UUID(str(e.originator_id)), e.originator_version) for e in stored_events],
                lookups=[meta_of(e.state) for e in stored_events],
            )
            # The links' bodies but for the position (known under the lock): the chain
            # costs the locked transaction one SHA-256 over little more than the body each.
            append.bodies = [link_body(oid, version, e.topic, e.state, meta)
                             for (oid, version), e, meta in zip(append.claims, stored_events,
                                                                append.lookups, strict=True)]
            self.committer.submit(append)
            if append.error is not None:
                raise append.error
            stored = True
            if self.on_appended is not None:
                self.on_appended(len(stored_events))
            return append.ids
        finally:
            if self.keys is not None and subjects:
                self.keys.settle(subjects, stored=stored)

    # -- group commit ------------------------------------------------------------
    # Appends that arrive while another transaction is committing wait for it and are
    # then appended together, in one transaction under the events table's lock, by one
    # of them (see ``GroupCommitter``). Each append is checked on its own before
    # anything is written (versions, e-mail reservations, Idempotency-Keys, destroyed
    # keys), so a refused append is left out and the others go on; notification ids
    # are given explicitly, one after the highest stored, so a transaction that rolls
    # back leaves no gap in the log.
    def _commit_group(self, batch: list[_Append]) -> None:
        try:
            self._append_together(batch)
        except Exception as e:
            if len(batch) == 1:
                batch[0].error = self._mapped(e, batch[0])
                return
            # Nothing of the group was stored: each append is tried again alone, so a
            # failure is the failing append's own.
            for append in batch:
                append.ids, append.error = None, None
                try:
                    self._append_together([append])
                except Exception as alone:
                    append.error = self._mapped(alone, append)

    def _mapped(self, error: Exception, append: _Append) -> Exception:
        """A failure of a lone append, as the command layer knows it."""
        if isinstance(error, IntegrityError):
            constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", "") or ""
            if constraint.startswith("crm_email_reservations") and append.extras:
                taken = self._first_taken(append.extras)
                if taken is not None:
                    return EmailTaken(taken)
            if constraint.startswith("crm_idempotency"):
                return IdempotencyKeyTaken()
        return error

    @retry((InterfaceError, OperationalError), max_attempts=3, wait=0.2)
    def _append_together(self, batch: list[_Append]) -> None:
        for append in batch:
            append.ids, append.error = None, None
        with self.datastore.get_connection() as conn:
            with conn.pipeline() as pipeline, conn.transaction():
                self._append_in(conn, pipeline, batch)

    # The group's transaction, in named steps: what the group concerns is worked out;
    # one round trip reads, under the log's lock, what the admission rules need
    # (``eventstore.admission``); each append is admitted or refused on its own; the
    # admitted ones get their positions and chain links; everything is written in the
    # same pipeline (the commit sends it, and fails if any of it failed).
    def _append_in(self, conn: Any, pipeline: Any, batch: list[_Append]) -> None:
        group = _Group.of(batch, self.keys)
        head, state = self._read_under_lock(conn, pipeline, group)
        stored_owner = dict(state.owner)
        accepted = self._admitted(group, state)
        if not accepted:
            return
        placed = _place(accepted, head)
        with conn.cursor() as curs:
            curs.execute(self._notify_statement, prepare=True)
            self._write_keys_and_credentials(curs, group, accepted)
            self._write_reservations(curs, group.emails, stored_owner, state.owner)
            self._write_events_and_chain(curs, placed)
            self._write_idempotency(curs, accepted)
            # Writers that take ids from the sequence (eventsourcing's own insert) carry
            # on after these.
            curs.execute(self._setval_statement, (placed.position,), prepare=True)

    def _read_under_lock(self, conn: Any, pipeline: Any, group: _Group) -> tuple[_Head, LogState]:
        """Lock the log and read, in one round trip, its head and what the group's
        appends claim: versions (each event's own and the one before it), e-mail
        holders, answered Idempotency-Keys, sealed subjects' keys."""
        with conn.cursor() as head, conn.cursor() as taken, conn.cursor() as owners, \
                conn.cursor() as used, conn.cursor() as keyrows:
            for statement in self._lock_statements:
                head.execute(statement, prepare=True)
            head.execute(self._head_statement, prepare=True)
            taken.execute(self._taken_statement, (group.originators + group.originators,
                                                  group.versions + [v - 1 for v in group.versions]),
                          prepare=True)
            if group.emails:
                owners.execute(self._owners_statement, (group.emails,), prepare=True)
            if group.idempotency:
                used.execute(self._used_keys_statement, ([r.principal for r in group.idempotency],
                                                         [r.key for r in group.idempotency]), prepare=True)
            if group.subjects:
                keyrows.execute(self._key_rows_statement, (group.subjects,), prepare=True)
            pipeline.sync()
            found = _Head.of(head.fetchone())
            owner: dict[bytes, UUID | None] = dict.fromkeys(group.emails)
            if group.emails:
                owner.update({bytes(r["email_hmac"]): r["customer_id"] for r in owners.fetchall()})
            state = LogState(
                stored_versions={(r["originator_id"], r["originator_version"]) for r in taken.fetchall()},
                owner=owner,
                used_keys={(r["principal"], r["key"]) for r in used.fetchall()} if group.idempotency else set(),
                key_destroyed=({r["subject_id"]: r["destroyed"] for r in keyrows.fetchall()}
                               if group.subjects else {}),
            )
        return found, state

    @staticmethod
    def _admitted(group: _Group, state: LogState) -> list[_Append]:
        """The appends that pass the admission rules, each after those before it; a
        refused one gets its own error and is left out."""
        accepted = []
        for a, rows in zip(group.batch, group.new_keys, strict=True):
            a.error = admit(a.claims, a.extras, rows, state)
            if a.error is None:
                accepted.append(a)
        return accepted

    def _write_keys_and_credentials(self, curs: Any, group: _Group, accepted: list[_Append]) -> None:
        key_rows = [row for a, rows in zip(group.batch, group.new_keys, strict=True)
                    if a.error is None for row in rows.items()]
        if key_rows:
            curs.execute(self._insert_keys_statement,
                         ([s for s, _ in key_rows], [w for _, w in key_rows]), prepare=True)
        for a in accepted:
            if a.extras is not None:
                self._insert_credentials(curs, a.extras)

    def _write_reservations(self, curs: Any, emails: list[bytes], stored_owner: dict[bytes, UUID | None],
                            owner: dict[bytes, UUID | None]) -> None:
        """The reservations as the admitted appends leave them, one after the other."""
        changed = [h for h in emails if owner[h] != stored_owner[h]]
        gone = [h for h in changed if stored_owner[h] is not None]
        if gone:
            curs.execute(self._release_statement, (gone,), prepare=True)
        reserved = [(h, owner[h]) for h in changed if owner[h] is not None]
        if reserved:
            curs.execute(self._reserve_statement,
                         ([h for h, _ in reserved], [c for _, c in reserved]), prepare=True)

    def _write_events_and_chain(self, curs: Any, placed: _Placed) -> None:
        events = placed.stored_events
        curs.execute(self._insert_statement, (
            placed.ids,
            [e.originator_id for e in events],
            [e.originator_version for e in events],
            [e.topic for e in events],
            [e.state for e in events],
        ), prepare=True)
        metas = placed.metas
        curs.execute(self._chain_statement, (
            placed.signed, placed.ids, [m.subject_id for m in metas], [m.occurred_at for m in metas],
            [m.recorded_at for m in metas], [m.actor_id for m in metas], placed.links), prepare=True)

    def _write_idempotency(self, curs: Any, accepted: list[_Append]) -> None:
        records = [a.extras.idempotency for a in accepted
                   if a.extras is not None and a.extras.idempotency is not None]
        if records:
            curs.execute(self._insert_idempotency_statement, (
                [r.principal for r in records], [r.key for r in records],
                [r.fingerprint for r in records], [r.status for r in records],
                [json.dumps(r.body) for r in records],
            ), prepare=True)

    def _add_group_statements(self) -> None:
        schema = Identifier(self.datastore.schema)
        events = SQL("{0}.{1}").format(schema, Identifier(self.events_table_name))
        self._head_statement = SQL(
            "SELECT COALESCE(max(notification_id), 0) AS head,"
            " (SELECT hash FROM {1} ORDER BY notification_id DESC LIMIT 1) AS link,"
            " (SELECT COALESCE(max(notification_id), 0) FROM {2}) AS signed FROM {0}"
        ).format(events, self.chain_table, self.checkpoints_table)
        self._taken_statement = SQL(
            "SELECT e.originator_id, e.originator_version FROM {0} e"
            " JOIN unnest(%b::uuid[], %b::bigint[]) AS c(originator_id, originator_version)"
            " USING (originator_id, originator_version)").format(events)
        self._owners_statement = SQL(
            "SELECT email_hmac, customer_id FROM {0} WHERE email_hmac = ANY(%b)"
        ).format(self.reservations_table)
        self._used_keys_statement = SQL(
            "SELECT i.principal, i.key FROM {0} i"
            " JOIN unnest(%b::text[], %b::text[]) AS u(principal, key) USING (principal, key)"
        ).format(self.idempotency_table)
        keys_table = SQL("{0}.{1}").format(schema, Identifier(PostgresKeyRing.TABLE))
        self._key_rows_statement = SQL(
            "SELECT subject_id, wrapped_key IS NULL AS destroyed FROM {0}"
            " WHERE subject_id = ANY(%b)").format(keys_table)
        self._insert_keys_statement = SQL(
            "INSERT INTO {0} (subject_id, wrapped_key)"
            " SELECT * FROM unnest(%b::uuid[], %b::bytea[])").format(keys_table)
        self._release_statement = SQL(
            "DELETE FROM {0} WHERE email_hmac = ANY(%b)").format(self.reservations_table)
        self._reserve_statement = SQL(
            "INSERT INTO {0} (email_hmac, customer_id)"
            " SELECT * FROM unnest(%b::bytea[], %b::uuid[])").format(self.reservations_table)
        self._insert_statement = SQL(
            "INSERT INTO {0} (notification_id, originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%b::bigint[], %b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
        ).format(events)
        self._insert_idempotency_statement = SQL(
            "INSERT INTO {0} (principal, key, fingerprint, status, body)"
            " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::jsonb[])"
        ).format(self.idempotency_table)
        self._setval_statement = SQL(
            "SELECT setval(pg_get_serial_sequence({0}, 'notification_id'), %b)"
        ).format(Literal(f"{self.datastore.schema}.{self.events_table_name}"))
        self._notify_statement = SQL("NOTIFY {0}").format(Identifier(self.channel_name))
        self._chain_statement = self.chain_statement
        # Rendered once: a composed statement would be rendered again at every execution.
        for name in ("_head_statement", "_taken_statement", "_owners_statement",
                     "_used_keys_statement", "_key_rows_statement", "_insert_keys_statement",
                     "_release_statement", "_reserve_statement", "_insert_statement",
                     "_insert_idempotency_statement", "_setval_statement", "_notify_statement",
                     "_chain_statement"):
            setattr(self, name, getattr(self, name).as_bytes(None))
        self._lock_statements = [s.as_bytes(None) for s in self.lock_table_statements
                                 if isinstance(s, Composable)]

    # -- the hash chain ----------------------------------------------------------
    # Each event's chain link (see events/chain.py) and the columns an audit looks
    # events up by, written by one statement in the append's own transaction, under
    # the events table's lock, so "the link before" is well defined. The log, the
    # chain and the signed checkpoints are append-only in the database itself.
    def _add_chain_statements(self) -> None:
        schema = Identifier(self.datastore.schema)
        self.chain_table = SQL("{0}.{1}").format(schema, Identifier(CHAIN_TABLE))
        self.checkpoints_table = SQL("{0}.{1}").format(schema, Identifier(CHECKPOINTS_TABLE))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                " notification_id bigint PRIMARY KEY,"
                " subject_id uuid,"
                " occurred_at timestamptz,"
                " recorded_at timestamptz,"
                " actor_id text,"
                " hash bytea NOT NULL)"
            ).format(self.chain_table)
        )
        # Links written before version 2 keep version 1 (and no checkpoint position).
        self.sql_create_statements.append(
            SQL("ALTER TABLE {0} ADD COLUMN IF NOT EXISTS checkpoint_at bigint NOT NULL DEFAULT 0,"
                " ADD COLUMN IF NOT EXISTS link_version smallint NOT NULL DEFAULT 1").format(self.chain_table)
        )
        self.sql_create_statements.append(
            SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} (subject_id, notification_id)").format(
                Identifier(CHAIN_TABLE + "_subject_idx"), self.chain_table
            )
        )
        self.sql_create_statements.extend(checkpoint_table_statements(self.datastore.schema))
        self.sql_create_statements.extend(append_only_statements(self.datastore.schema, self.events_table_name))
        self.chain_statement = SQL(
            "INSERT INTO {chain} (notification_id, subject_id, occurred_at, recorded_at, actor_id,"
            " checkpoint_at, link_version, hash)"
            " SELECT d.notification_id, d.subject_id, d.occurred_at, d.recorded_at, d.actor_id,"
            "  %b::bigint, {version}, d.hash"
            " FROM unnest(%b::bigint[], %b::uuid[], %b::timestamptz[], %b::timestamptz[], %b::text[],"
            "  %b::bytea[]) AS d(notification_id, subject_id, occurred_at, recorded_at, actor_id, hash)"
            # A link left at this position by events since deleted stays (and verification
            # reports the mismatch): a damaged log does not stop appends.
            " ON CONFLICT (notification_id) DO NOTHING"
        ).format(chain=self.chain_table, version=Literal(LINK_VERSION))

    def link_backlog(self, batch: int = 20_000, *, chain_started: bool = False) -> int:
        """Link the events stored before the chain existed (an installation from before
        it, or a log loaded in bulk into a new database), under the events table's lock;
        the number linked. Only while the chain has no link and no checkpoint was ever
        signed (nor ``chain_started`` says one was, e.g. in a heads file kept elsewhere):
        an event without a link after the chain started is a gap, which verification
        reports, never something to link over."""
        def started(conn: Any) -> bool:
            row = conn.execute(SQL(
                "SELECT EXISTS (SELECT 1 FROM {0}) OR EXISTS (SELECT 1 FROM {1})"
                " OR NOT EXISTS (SELECT 1 FROM {2}.{3}) AS started"
            ).format(self.chain_table, self.checkpoints_table, Identifier(self.datastore.schema),
                     Identifier(self.events_table_name))).fetchone()
            return bool(row and row["started"])

        if chain_started:
            return 0
        linked = 0
        with self.datastore.get_connection() as conn:
            # Without the lock first: a process starting on a linked log blocks no writer.
            if started(conn):
                return 0
        with self.datastore.get_connection() as conn, conn.transaction():
            conn.execute(SQL("LOCK TABLE {0}.{1} IN EXCLUSIVE MODE").format(
                Identifier(self.datastore.schema), Identifier(self.events_table_name)))
            if started(conn):
                return 0
            position, previous = 0, GENESIS
            while True:
                rows = conn.execute(SQL(
                    "SELECT notification_id, originator_id, originator_version, topic, state"
                    " FROM {0}.{1} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
                ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name)),
                    (position, batch)).fetchall()
                if not rows:
                    return linked
                with conn.cursor() as cur, cur.copy(SQL(
                    "COPY {0} (notification_id, subject_id, occurred_at, recorded_at, actor_id,"
                    " checkpoint_at, link_version, hash) FROM STDIN"
                ).format(self.chain_table)) as copy:
                    for row in rows:
                        state = bytes(row["state"])
                        meta = meta_of(state)
                        previous = link_hash(previous, row["notification_id"], row["originator_id"],
                                             row["originator_version"], row["topic"], state, meta)
                        copy.write_row((row["notification_id"], meta.subject_id, meta.occurred_at,
                                        meta.recorded_at, meta.actor_id, 0, LINK_VERSION, previous))
                position = rows[-1]["notification_id"]
                linked += len(rows)

    def _first_taken(self, extras: WriteExtras) -> bytes | None:
        for email_hmac, customer_id in extras.reserve_emails:
            owner = self.email_owner(email_hmac)
            if owner is not None and owner != customer_id:
                return email_hmac
        return None

    def _insert_credentials(self, curs: Any, extras: WriteExtras) -> None:
        for user_id, password_hash in extras.passwords:
            curs.execute(
                SQL("INSERT INTO {0} (user_id, password_hash) VALUES (%s, %s)"
                    " ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
                    " updated_at = now()").format(self.credentials_table),
                (user_id, password_hash),
            )
        for user_id, active in extras.sign_in:
            curs.execute(
                SQL("UPDATE {0} SET active = %s, updated_at = now() WHERE user_id = %s").format(
                    self.credentials_table),
                (active, user_id),
            )
        for user_id in extras.end_tokens:
            curs.execute(
                SQL("UPDATE {0} SET generation = generation + 1, updated_at = now() WHERE user_id = %s").format(
                    self.credentials_table),
                (user_id,),
            )
            curs.execute(  # the web UI's sessions of the user end with their tokens
                SQL("UPDATE {0} SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL").format(
                    self.web_sessions_table),
                (user_id,),
            )
        for key in extras.api_keys:
            curs.execute(
                SQL("INSERT INTO {0} (key_id, secret_sha256, role, expires_at) VALUES (%s, %s, %s, %s)"
                    ).format(self.api_keys_table),
                (key.key_id, key.secret_sha256, key.role, key.expires_at),
            )
        for key_id in extras.revoked_api_keys:
            curs.execute(
                SQL("UPDATE {0} SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL").format(
                    self.api_keys_table),
                (key_id,),
            )

    # -- reads -----------------------------------------------------------------
    def email_owner(self, email_hmac: bytes) -> UUID | None:
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL("SELECT customer_id FROM {0} WHERE email_hmac = %s").format(
                    self.reservations_table
                ),
                (email_hmac,),
            ).fetchone()
        return row["customer_id"] if row else None

    def idempotency_record(self, principal: str, key: str) -> IdempotencyRecord | None:
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL(
                    "SELECT fingerprint, status, body FROM {0} WHERE principal = %s AND key = %s"
                ).format(self.idempotency_table),
                (principal, key),
            ).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(principal, key, row["fingerprint"], row["status"], row["body"])

    def credential(self, user_id: UUID) -> Credential | None:
        """The user's password hash and sign-in state (None: no such user)."""
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL("SELECT password_hash, active, generation FROM {0} WHERE user_id = %s").format(
                    self.credentials_table),
                (user_id,),
            ).fetchone()
        return Credential(user_id, row["password_hash"], row["active"], row["generation"]) if row else None

    def rehash_password(self, user_id: UUID, old_hash: str, new_hash: str) -> None:
        """Store a stronger hash of the same password (unless it changed meanwhile)."""
        with self.datastore.get_connection() as conn:
            conn.execute(
                SQL("UPDATE {0} SET password_hash = %s WHERE user_id = %s AND password_hash = %s"
                    ).format(self.credentials_table),
                (new_hash, user_id, old_hash),
            )

    def api_key_secret(self, key_id: UUID) -> ApiKeySecret | None:
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL("SELECT key_id, secret_sha256, role, expires_at, revoked_at, last_used_at"
                    " FROM {0} WHERE key_id = %s").format(self.api_keys_table),
                (key_id,),
            ).fetchone()
        return _api_key(row) if row else None

    def api_keys(self) -> list[ApiKeySecret]:
        with self.datastore.get_connection() as conn:
            rows = conn.execute(
                SQL("SELECT key_id, secret_sha256, role, expires_at, revoked_at, last_used_at"
                    " FROM {0} ORDER BY created_at, key_id").format(self.api_keys_table),
            ).fetchall()
        return [_api_key(r) for r in rows]

    def touch_api_key(self, key_id: UUID, at: datetime) -> None:
        """Record when the key was last used."""
        with self.datastore.get_connection() as conn:
            conn.execute(
                SQL("UPDATE {0} SET last_used_at = %s WHERE key_id = %s"
                    " AND (last_used_at IS NULL OR last_used_at < %s)").format(self.api_keys_table),
                (at, key_id, at),
            )

    # -- browsers' sign-in sessions (the refresh cookie) ---------------------------------
    def open_web_session(self, session: WebSession) -> None:
        """Store a new session; sessions ended more than a day ago are deleted on the way."""
        with self.datastore.get_connection() as conn:
            conn.execute(
                SQL("DELETE FROM {0} WHERE LEAST(expires_at, valid_until, COALESCE(revoked_at, 'infinity'))"
                    " < now() - interval '1 day'").format(self.web_sessions_table))
            conn.execute(
                SQL("INSERT INTO {0} (secret_sha256, csrf_sha256, user_id, auth_time, expires_at, valid_until)"
                    " VALUES (%s, %s, %s, %s, %s, %s)").format(self.web_sessions_table),
                (session.secret_sha256, session.csrf_sha256, session.user_id, session.auth_time,
                 session.expires_at, session.valid_until),
            )

    def web_session(self, secret_sha256: bytes) -> WebSession | None:
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL("SELECT secret_sha256, csrf_sha256, user_id, auth_time, expires_at, valid_until, revoked_at"
                    " FROM {0} WHERE secret_sha256 = %s").format(self.web_sessions_table),
                (secret_sha256,),
            ).fetchone()
        return _web_session(row) if row else None

    def extend_web_session(self, secret_sha256: bytes, valid_until: datetime) -> bool:
        """Move the session's idle end on (False: it was revoked meanwhile)."""
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL("UPDATE {0} SET valid_until = GREATEST(valid_until, %s)"
                    " WHERE secret_sha256 = %s AND revoked_at IS NULL RETURNING 1").format(self.web_sessions_table),
                (valid_until, secret_sha256),
            ).fetchone()
        return row is not None

    def revoke_web_session(self, secret_sha256: bytes, at: datetime) -> None:
        with self.datastore.get_connection() as conn:
            conn.execute(
                SQL("UPDATE {0} SET revoked_at = %s WHERE secret_sha256 = %s AND revoked_at IS NULL").format(
                    self.web_sessions_table),
                (at, secret_sha256),
            )

    def positions(self, originator_id: UUID) -> dict[int, int]:
        """Log position of each of an aggregate's events, by version."""
        with self.datastore.get_connection() as conn:
            rows = conn.execute(
                SQL(
                    "SELECT originator_version, notification_id FROM {0}.{1}"
                    " WHERE originator_id = %s"
                ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name)),
                (originator_id,),
            ).fetchall()
        return {r["originator_version"]: r["notification_id"] for r in rows}

    def position_of(self, originator_id: UUID, version: int) -> int | None:
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                SQL(
                    "SELECT notification_id FROM {0}.{1}"
                    " WHERE originator_id = %s AND originator_version = %s"
                ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name)),
                (originator_id, version),
            ).fetchone()
        return row["notification_id"] if row else None


def _web_session(row: dict[str, Any]) -> WebSession:
    return WebSession(bytes(row["secret_sha256"]), bytes(row["csrf_sha256"]), row["user_id"], row["auth_time"],
                      row["expires_at"], row["valid_until"], row["revoked_at"])


def _api_key(row: dict[str, Any]) -> ApiKeySecret:
    return ApiKeySecret(row["key_id"], bytes(row["secret_sha256"]), row["role"], row["expires_at"],
                        row["revoked_at"], row["last_used_at"])


class CrmMemoryRecorder(POPOApplicationRecorder):
    """The in-memory twin of ``CrmPostgresRecorder``, for unit tests."""

    def __init__(self) -> None:
        super().__init__()
        self._reservations: dict[bytes, UUID] = {}
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._credentials: dict[UUID, Credential] = {}
        self._api_keys: dict[UUID, ApiKeySecret] = {}
        self._web_sessions: dict[bytes, WebSession] = {}
        #: set by the application: sealed subjects' keys (their destruction refuses an append)
        self.keys: InMemoryKeyRing | None = None

    def _insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        extras: WriteExtras | None = kwargs.get("extras")
        claims = [(UUID(str(e.originator_id)), e.originator_version) for e in stored_events]
        with self._database_lock:
            state = self._log_state(claims, extras)
            emails = dict(state.owner)
            error = admit(claims, extras, {}, state)
            if error is not None:
                raise error
            ids = self._update_table(stored_events, **kwargs)
            if extras is not None:
                for email_hmac, customer_id in state.owner.items():
                    if customer_id is None:
                        self._reservations.pop(email_hmac, None)
                    elif emails[email_hmac] != customer_id:
                        self._reservations[email_hmac] = customer_id
                if extras.idempotency is not None:
                    rec = extras.idempotency
                    _finish_body(rec, ids)
                    self._idempotency[(rec.principal, rec.key)] = rec
                self._keep_credentials(extras)
            return ids

    def _log_state(self, claims: list[tuple[UUID, int]], extras: WriteExtras | None) -> LogState:
        """What the admission rules read, as the PostgreSQL recorder reads it under the
        log's lock: the claimed versions and their predecessors stored, the concerned
        addresses' holders, the answered key, the sealed subjects' keys."""
        stored = {(oid, v) for oid, version in claims for v in (version, version - 1)
                  if v in self._stored_events_index.get(str(oid), {})}
        if extras is None:
            return LogState(stored, {}, set(), {})
        emails = {h for h, _ in extras.reserve_emails + extras.release_emails}
        record = extras.idempotency
        used = {(record.principal, record.key)} if record is not None and (
            record.principal, record.key) in self._idempotency else set()
        found = {s: self.keys.destroyed(s) for s in extras.sealed_subjects} if self.keys is not None else {}
        destroyed = {s: d for s, d in found.items() if d is not None}
        return LogState(stored, {h: self._reservations.get(h) for h in emails}, used, destroyed)

    def _keep_credentials(self, extras: WriteExtras) -> None:
        for user_id, password_hash in extras.passwords:
            old = self._credentials.get(user_id)
            self._credentials[user_id] = (replace(old, password_hash=password_hash) if old
                                          else Credential(user_id, password_hash, True))
        for user_id, active in extras.sign_in:
            if (old := self._credentials.get(user_id)) is not None:
                self._credentials[user_id] = replace(old, active=active)
        for user_id in extras.end_tokens:
            if (old := self._credentials.get(user_id)) is not None:
                self._credentials[user_id] = replace(old, generation=old.generation + 1)
            now = datetime.now(UTC)
            for secret, session in list(self._web_sessions.items()):
                if session.user_id == user_id and session.revoked_at is None:
                    self._web_sessions[secret] = replace(session, revoked_at=now)
        for key in extras.api_keys:
            self._api_keys[key.key_id] = key
        for key_id in extras.revoked_api_keys:
            if (k := self._api_keys.get(key_id)) is not None and k.revoked_at is None:
                self._api_keys[key_id] = replace(k, revoked_at=datetime.now(UTC))

    def credential(self, user_id: UUID) -> Credential | None:
        with self._database_lock:
            return self._credentials.get(user_id)

    def rehash_password(self, user_id: UUID, old_hash: str, new_hash: str) -> None:
        with self._database_lock:
            old = self._credentials.get(user_id)
            if old is not None and old.password_hash == old_hash:
                self._credentials[user_id] = replace(old, password_hash=new_hash)

    def api_key_secret(self, key_id: UUID) -> ApiKeySecret | None:
        with self._database_lock:
            return self._api_keys.get(key_id)

    def api_keys(self) -> list[ApiKeySecret]:
        with self._database_lock:
            return list(self._api_keys.values())

    def touch_api_key(self, key_id: UUID, at: datetime) -> None:
        with self._database_lock:
            k = self._api_keys.get(key_id)
            if k is not None and (k.last_used_at is None or k.last_used_at < at):
                self._api_keys[key_id] = replace(k, last_used_at=at)

    def open_web_session(self, session: WebSession) -> None:
        with self._database_lock:
            self._web_sessions[session.secret_sha256] = session

    def web_session(self, secret_sha256: bytes) -> WebSession | None:
        with self._database_lock:
            return self._web_sessions.get(secret_sha256)

    def extend_web_session(self, secret_sha256: bytes, valid_until: datetime) -> bool:
        with self._database_lock:
            s = self._web_sessions.get(secret_sha256)
            if s is None or s.revoked_at is not None:
                return False
            self._web_sessions[secret_sha256] = replace(s, valid_until=max(s.valid_until, valid_until))
            return True

    def revoke_web_session(self, secret_sha256: bytes, at: datetime) -> None:
        with self._database_lock:
            s = self._web_sessions.get(secret_sha256)
            if s is not None and s.revoked_at is None:
                self._web_sessions[secret_sha256] = replace(s, revoked_at=at)

    def email_owner(self, email_hmac: bytes) -> UUID | None:
        with self._database_lock:
            return self._reservations.get(email_hmac)

    def idempotency_record(self, principal: str, key: str) -> IdempotencyRecord | None:
        with self._database_lock:
            return self._idempotency.get((principal, key))

    def positions(self, originator_id: UUID) -> dict[int, int]:
        with self._database_lock:
            index = self._stored_events_index[str(originator_id)]
            return {version: i + 1 for version, i in index.items()}

    def position_of(self, originator_id: UUID, version: int) -> int | None:
        with self._database_lock:
            for i, s in enumerate(self._stored_events):
                if s.originator_id == originator_id and s.originator_version == version:
                    return i + 1
        return None
