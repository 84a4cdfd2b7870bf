"""The event store's recorders: events, e-mail reservations and idempotency records
written in one transaction.

A command's events, the e-mail addresses it reserves or releases, and the answer to
its Idempotency-Key commit together or not at all: a retry after a crash between
commit and response finds the answer, and never stores the events twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier, Literal

from events.chain import GENESIS, link_hash, subject_of
from events.keys import PostgresKeyRing, SubjectKeyDestroyed

KEY_DESTROYED = "crm: personal-data key destroyed"
CHAIN_TABLE = "crm_event_chain"


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
class Credential:
    """A user's password hash and whether they may sign in."""

    user_id: UUID
    password_hash: str
    active: bool


def _lookup(state: bytes) -> tuple[UUID | None, str | None, str | None, str | None]:
    """(subject, business time, recording time, actor) of a stored event; None where its
    state does not say (an event stored by other means may not even be JSON)."""
    try:
        doc = json.loads(state)
        actor = doc.get("actor") or {}
        return subject_of(state), doc.get("occurred_at"), doc.get("recorded_at"), actor.get("id")
    except (ValueError, AttributeError):
        return None, None, None, None


def _lookup_columns(ids: Sequence[int], stored_events: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
    rows = [(i, *_lookup(e.state)) for i, e in zip(ids, stored_events, strict=True)]
    return tuple(list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [], [], [])


class EmailTaken(Exception):
    """An e-mail reservation collided with another customer's."""

    def __init__(self, email_hmac: bytes):
        super().__init__("e-mail already registered")
        self.email_hmac = email_hmac


class IdempotencyKeyTaken(Exception):
    """Another request with the same Idempotency-Key committed first."""


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
        schema = Identifier(self.datastore.schema)
        self.reservations_table = SQL("{0}.{1}").format(schema, Identifier("crm_email_reservations"))
        self.idempotency_table = SQL("{0}.{1}").format(schema, Identifier("crm_idempotency"))
        self.credentials_table = SQL("{0}.{1}").format(schema, Identifier("crm_credentials"))
        self.api_keys_table = SQL("{0}.{1}").format(schema, Identifier("crm_api_keys"))
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
                " email_hmac bytea PRIMARY KEY,"
                " customer_id uuid NOT NULL,"
                " reserved_at timestamptz NOT NULL DEFAULT now())"
            ).format(self.reservations_table)
        )
        self._add_chain_statements()
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
            ids = self._insert_with_errors_mapped(stored_events, **kwargs)
            stored = True
            return ids
        finally:
            if self.keys is not None and subjects:
                self.keys.settle(subjects, stored=stored)

    def _insert_with_errors_mapped(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        try:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        except IntegrityError as e:
            constraint = getattr(getattr(e.__cause__, "diag", None), "constraint_name", "") or ""
            extras: WriteExtras | None = kwargs.get("extras")
            if constraint.startswith("crm_email_reservations") and extras:
                taken = self._first_taken(extras)
                if taken is not None:
                    raise EmailTaken(taken) from e
            if constraint.startswith("crm_idempotency"):
                raise IdempotencyKeyTaken() from e
            raise
        except PersistenceError as e:
            message = str(e)
            if KEY_DESTROYED in message:
                subject = message.split(KEY_DESTROYED, 1)[1].strip(' "').split('"')[0]
                raise SubjectKeyDestroyed(UUID(subject)) from e
            raise

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        self._lock_table(curs)
        extras: WriteExtras | None = kwargs.get("extras")
        new_keys = self.keys.pending_subjects() if self.keys is not None else set()
        existing = extras.sealed_subjects - new_keys if extras is not None else set()
        if existing:
            # Under the events table's lock, which key destruction also takes: a key
            # destroyed before this point fails the append; one destroyed later sees
            # these events already stored (and makes them unreadable like the rest).
            # A plain statement that fails only if a key is gone: the cast of the text
            # to int runs only for destroyed keys' rows and its error names the subject.
            curs.execute(
                SQL(
                    "SELECT ({0} || subject_id::text)::int FROM {1}.{2}"
                    " WHERE subject_id = ANY(%s) AND wrapped_key IS NULL"
                ).format(
                    Literal(KEY_DESTROYED + " "),
                    Identifier(self.datastore.schema),
                    Identifier(PostgresKeyRing.TABLE),
                ),
                (sorted(existing),),
                prepare=True,
            )
        self._notify_channel(curs)
        # The plain insert (the table is locked above, the channel notified).
        PostgresAggregateRecorder._insert_stored_events(self, curs, stored_events, **kwargs)

    # -- the hash chain ----------------------------------------------------------
    # Each event's chain link (see events/chain.py) and the columns an audit looks
    # events up by, written by one statement in the append's own transaction, under
    # the events table's lock, so "the link before" is well defined.
    def _add_chain_statements(self) -> None:
        schema = Identifier(self.datastore.schema)
        self.chain_table = SQL("{0}.{1}").format(schema, Identifier(CHAIN_TABLE))
        events = SQL("{0}.{1}").format(schema, Identifier(self.events_table_name))
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
        self.sql_create_statements.append(
            SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} (subject_id, notification_id)").format(
                Identifier(CHAIN_TABLE + "_subject_idx"), self.chain_table
            )
        )
        # Links every event after the last linked one (normally just this append's),
        # one after the other in notification order, each found by the index (a backlog
        # of bulk-loaded events costs one index step each). The look-up columns come from
        # the append itself (parsed in Python); an event stored by other means gets them
        # NULL here, and its link all the same: a foreign or undecodable stored event
        # never blocks writes (``link_backlog`` fills them in at startup).
        self.chain_statement = SQL(
            "WITH RECURSIVE head AS ("
            "  SELECT notification_id, hash FROM {chain} ORDER BY notification_id DESC LIMIT 1),"
            " link(notification_id, hash) AS ("
            "  SELECT COALESCE((SELECT notification_id FROM head), 0)::bigint,"
            "   COALESCE((SELECT hash FROM head), {genesis})"
            "  UNION ALL"
            "  SELECT e.notification_id, sha256(link.hash"
            "   || int8send(e.notification_id::bigint) || uuid_send(e.originator_id)"
            "   || int8send(e.originator_version::bigint)"
            "   || int4send(octet_length(convert_to(e.topic, 'UTF8')))"
            "   || convert_to(e.topic, 'UTF8')"
            "   || int4send(octet_length(e.state)) || e.state)"
            "  FROM link CROSS JOIN LATERAL ("
            "   SELECT n.notification_id, n.originator_id, n.originator_version, n.topic, n.state"
            "   FROM {events} n WHERE n.notification_id > link.notification_id"
            "   ORDER BY n.notification_id LIMIT 1) e)"
            " INSERT INTO {chain} (notification_id, subject_id, occurred_at, recorded_at,"
            "  actor_id, hash)"
            " SELECT link.notification_id, d.subject_id, d.occurred_at, d.recorded_at,"
            "  d.actor_id, link.hash"
            " FROM link LEFT JOIN unnest(%s::bigint[], %s::uuid[], %s::timestamptz[],"
            "  %s::timestamptz[], %s::text[])"
            "  AS d(notification_id, subject_id, occurred_at, recorded_at, actor_id)"
            "  USING (notification_id)"
            " WHERE link.notification_id > COALESCE((SELECT notification_id FROM head), 0)"
        ).format(chain=self.chain_table, events=events, genesis=Literal(GENESIS))

    def link_backlog(self, batch: int = 20_000) -> int:
        """Link every stored event not linked yet (events loaded in bulk, or stored before
        the chain existed), under the events table's lock; the number linked."""
        linked = 0
        with self.datastore.get_connection() as conn:
            # Without the lock first: a process starting on a linked log blocks no writer.
            behind = conn.execute(SQL(
                "SELECT (SELECT max(notification_id) FROM {0}.{1})"
                " > COALESCE((SELECT max(notification_id) FROM {2}), 0) AS behind"
            ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name),
                     self.chain_table)).fetchone()
            if not behind or not behind["behind"]:
                return 0
        with self.datastore.get_connection() as conn, conn.transaction():
            conn.execute(SQL("LOCK TABLE {0}.{1} IN EXCLUSIVE MODE").format(
                Identifier(self.datastore.schema), Identifier(self.events_table_name)))
            head = conn.execute(SQL(
                "SELECT notification_id, hash FROM {0} ORDER BY notification_id DESC LIMIT 1"
            ).format(self.chain_table)).fetchone()
            position, previous = (head["notification_id"], bytes(head["hash"])) if head else (0, GENESIS)
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
                    " hash) FROM STDIN"
                ).format(self.chain_table)) as copy:
                    for row in rows:
                        state = bytes(row["state"])
                        previous = link_hash(previous, row["notification_id"], row["originator_id"],
                                             row["originator_version"], row["topic"], state)
                        subject, occurred, recorded, actor = _lookup(state)
                        copy.write_row((row["notification_id"], subject, occurred, recorded,
                                        actor, previous))
                position = rows[-1]["notification_id"]
                linked += len(rows)

    def _first_taken(self, extras: WriteExtras) -> bytes | None:
        for email_hmac, customer_id in extras.reserve_emails:
            owner = self.email_owner(email_hmac)
            if owner is not None and owner != customer_id:
                return email_hmac
        return None

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        extras: WriteExtras | None = kwargs.get("extras")
        if extras is None:
            return
        if self.keys is not None:
            for subject_id, wrapped in self.keys.pending_rows(extras.sealed_subjects):
                curs.execute(
                    SQL("INSERT INTO {0}.{1} (subject_id, wrapped_key) VALUES (%s, %s)").format(
                        Identifier(self.datastore.schema), Identifier(PostgresKeyRing.TABLE)
                    ),
                    (subject_id, wrapped),
                )
        for email_hmac, customer_id in extras.release_emails:
            curs.execute(
                SQL("DELETE FROM {0} WHERE email_hmac = %s AND customer_id = %s").format(
                    self.reservations_table
                ),
                (email_hmac, customer_id),
            )
        self._insert_credentials(curs, extras)
        for email_hmac, customer_id in extras.reserve_emails:
            # Another customer's address violates the primary key and fails the whole
            # transaction (a customer never re-reserves an address it holds: the
            # aggregate refuses duplicate contacts).
            curs.execute(
                SQL("INSERT INTO {0} (email_hmac, customer_id) VALUES (%s, %s)").format(
                    self.reservations_table
                ),
                (email_hmac, customer_id),
                prepare=True,
            )

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

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        curs.execute(self.chain_statement, _lookup_columns(ids or [], stored_events), prepare=True)
        extras: WriteExtras | None = kwargs.get("extras")
        if extras is not None and extras.idempotency is not None:
            record = extras.idempotency
            _finish_body(record, ids)
            curs.execute(
                SQL(
                    "INSERT INTO {0} (principal, key, fingerprint, status, body)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ).format(self.idempotency_table),
                (record.principal, record.key, record.fingerprint, record.status,
                 json.dumps(record.body)),
            )
        return ids

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
                SQL("SELECT password_hash, active FROM {0} WHERE user_id = %s").format(
                    self.credentials_table),
                (user_id,),
            ).fetchone()
        return Credential(user_id, row["password_hash"], row["active"]) if row else None

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

    def _insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        extras: WriteExtras | None = kwargs.get("extras")
        with self._database_lock:
            if extras is not None:
                for email_hmac, customer_id in extras.reserve_emails:
                    owner = self._reservations.get(email_hmac)
                    if owner is not None and owner != customer_id:
                        raise EmailTaken(email_hmac)
                if extras.idempotency is not None:
                    rec = extras.idempotency
                    if (rec.principal, rec.key) in self._idempotency:
                        raise IdempotencyKeyTaken()
            self._assert_uniqueness(stored_events, **kwargs)
            ids = self._update_table(stored_events, **kwargs)
            if extras is not None:
                for email_hmac, customer_id in extras.release_emails:
                    if self._reservations.get(email_hmac) == customer_id:
                        del self._reservations[email_hmac]
                for email_hmac, customer_id in extras.reserve_emails:
                    self._reservations[email_hmac] = customer_id
                if extras.idempotency is not None:
                    rec = extras.idempotency
                    _finish_body(rec, ids)
                    self._idempotency[(rec.principal, rec.key)] = rec
                self._keep_credentials(extras)
            return ids

    def _keep_credentials(self, extras: WriteExtras) -> None:
        for user_id, password_hash in extras.passwords:
            old = self._credentials.get(user_id)
            self._credentials[user_id] = Credential(user_id, password_hash, old.active if old else True)
        for user_id, active in extras.sign_in:
            if (old := self._credentials.get(user_id)) is not None:
                self._credentials[user_id] = replace(old, active=active)
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
