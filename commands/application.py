"""The write application: event store wiring, optimistic concurrency, idempotency.

``CrmApplication`` is an eventsourcing ``Application`` whose mapper seals personal data
per customer and whose recorder writes reservations and idempotency records in the
events' transaction. ``CommandService`` runs one command: load, decide, save.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, Recording
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment
from pydantic import BaseModel

from aggregates import AGGREGATE_TYPES
from aggregates.base import Aggregate, CommandContext
from aggregates.customer import normalise_email
from aggregates.errors import DomainError, Duplicate, InvalidValue, NotFound, PersonalDataErased, no_record, record_label
from eventstore.admission import EmailTaken, IdempotencyKeyTaken
from commands.clock import Clock, SystemClock, random_ids
from commands.errors import ConcurrencyConflict, IdempotencyKeyReused, PreconditionRequired
from eventstore.recorder import (
    CrmMemoryRecorder,
    CrmPostgresRecorder,
    IdempotencyRecord,
    WriteExtras,
)
from events.base import Actor, CrmEvent
from events.codec import CrmMapper, EventCodec, seals_personal_data
from events.keys import InMemoryKeyRing, KeyRing, KeyWrapper, PostgresKeyRing, SubjectKeyDestroyed

A = TypeVar("A", bound=Aggregate)
MAX_FUTURE_SKEW_SECONDS = 300
MAX_RETRIES = 5
#: The fingerprint of an Idempotency-Key's request once its customer was erased.
ERASED_FINGERPRINT = "erased"
#: What a command decided on a record from the cache may have owed to that record being
#: behind the log (another process changed it since): a refusal by a rule -- every
#: ``DomainError``: the rules read the record (InvalidValue, InvalidTransition,
#: Duplicate, PersonalDataErased), the record's type (NotFound), the caller's reach over
#: it (the guard's Forbidden or NotFound) and its version against If-Match
#: (ConcurrencyConflict). Such a refusal is decided again on records rebuilt from the
#: log; any other exception (a database error, an undecodable event, a fault) is raised.
STALE_REFUSALS: tuple[type[Exception], ...] = (DomainError,)


class CrmApplication(Application[UUID]):
    """The event store of the CRM: eventsourcing, with the CRM's own stored form."""

    name = "crm"

    def __init__(self, env: dict[str, str], *, kek: bytes, keys: KeyRing | None = None,
                 key_cache_seconds: float = 5.0):
        self._kek = kek
        self._key_cache_seconds = key_cache_seconds
        self._given_keys = keys
        self.keys: KeyRing
        super().__init__(env)

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only the composition root reads the process environment; it hands us all.
        return Environment(name, dict(env or {}))

    def construct_mapper(self) -> CrmMapper:
        if self._given_keys is not None:
            self.keys = self._given_keys
        elif isinstance(self.factory, PostgresFactory):
            ring = PostgresKeyRing(
                self.factory.datastore.get_connection,
                KeyWrapper(self._kek),
                events_table="crm_events",
                cache_seconds=self._key_cache_seconds,
            )
            ring.create_table()
            self.keys = ring
        else:
            self.keys = InMemoryKeyRing()
        return CrmMapper(EventCodec(self.keys))

    def construct_recorder(self) -> Any:
        if isinstance(self.factory, PostgresFactory):
            recorder = CrmPostgresRecorder(self.factory.datastore, events_table_name="crm_events")
            if self.factory.env_create_table():
                recorder.create_table()
            if isinstance(self.keys, PostgresKeyRing):
                recorder.keys = self.keys
            return recorder
        memory = CrmMemoryRecorder()
        if isinstance(self.keys, InMemoryKeyRing):
            memory.keys = self.keys
        return memory

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Store the pending events of the given records (eventsourcing's ``save``
        without its runtime protocol checks, which cost more than the rest of it)."""
        if not all(isinstance(o, Aggregate) for o in objs):
            return super().save(*objs, **kwargs)
        events: list[CrmEvent] = []
        for obj in objs:
            events.extend(obj.collect_events())
        recordings = self.events.put(events, **kwargs)
        self._notify(recordings)
        return recordings

    @property
    def codec(self) -> EventCodec:
        return self.mapper.codec  # type: ignore[attr-defined,no-any-return]

    def load(self, cls: type[A], aggregate_id: UUID, *, version: int | None = None) -> A:
        """The aggregate rebuilt from its events; ``NotFound`` if absent or another type."""
        try:
            aggregate = self.repository.get(
                aggregate_id, version=version, projector_func=cls.project
            )
        except AggregateNotFoundError:
            raise no_record(cls.type_name, aggregate_id) from None
        if not isinstance(aggregate, cls):
            raise no_record(cls.type_name, aggregate_id)
        return aggregate

    def load_any(self, aggregate_id: UUID) -> Aggregate:
        """The aggregate of whatever type the id names."""
        first = self.events.get(aggregate_id, limit=1)
        event = next(iter(first), None)
        if not isinstance(event, CrmEvent):
            raise NotFound(f"no record {aggregate_id}")
        return self.load(AGGREGATE_TYPES[event.aggregate_type], aggregate_id)

    def stored_events(self, aggregate_id: UUID) -> Iterator[CrmEvent]:
        return iter(self.events.get(aggregate_id))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: becomes the events' actor."""

    id: str
    role: str
    #: the team the caller belongs to (a manager's reach is the team's records)
    team_id: str | None = None


@dataclass(frozen=True)
class Request:
    """Everything about one command request that is not the command itself."""

    principal: Principal
    correlation_id: str
    target: UUID | None = None
    expected_version: int | None = None
    idempotency_key: str | None = None
    causation_id: str | None = None
    #: checks every record the command loads (created=False) or creates (created=True):
    #: record-level access; raises to refuse (None: no limit, e.g. the system's own rules)
    guard: Callable[[Aggregate, bool], None] | None = field(default=None, compare=False)


@dataclass
class WriteResult:
    """The answer to a command: which record, its new version, the log position."""

    id: UUID
    type: str
    version: int
    position: int | None
    created: bool
    result: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "version": self.version,
            "position": self.position,
            "result": self.result,
        }

    @property
    def status(self) -> int:
        return 201 if self.created else 200


class AggregateCache:
    """Records as this process's last successful command left them, so the next command
    on one of them need not rebuild it from its events.

    A record is *taken* out for one command at a time (another command on it meanwhile
    rebuilds its own from the log) and put back only once its events are stored, so a
    failed command's half-changed record is never seen again. A record can still be
    behind the log when another process wrote to it: the append then finds its version
    taken (or its predecessor missing) and the command is decided again on fresh loads.
    """

    def __init__(self, maxsize: int = 10_000):
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._records: OrderedDict[UUID, Aggregate] = OrderedDict()
        #: records taken out, and how many of those came from the cache
        self.hits = 0
        self.misses = 0

    def take(self, aggregate_id: UUID) -> Aggregate | None:
        with self._lock:
            record = self._records.pop(aggregate_id, None)
            if record is None:
                self.misses += 1
            else:
                self.hits += 1
            return record

    def put(self, records: Iterable[Aggregate]) -> None:
        with self._lock:
            for record in records:
                held = self._records.get(record.id)
                if held is not None and held.version > record.version:
                    continue  # a later command's put came first
                self._records[record.id] = record
                self._records.move_to_end(record.id)
            while len(self._records) > self.maxsize:
                self._records.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class UnitOfWork:
    """The records one command touches, and what it writes beside their events."""

    def __init__(self, app: CrmApplication, request: Request, email_key: bytes,
                 cache: AggregateCache | None = None):
        self.app = app
        self.request = request
        self._email_key = email_key
        self._cache = cache
        #: records this command took from the cache (they may be behind the log)
        self.cached: set[UUID] = set()
        self.loaded: dict[UUID, Aggregate] = {}
        self.extras = WriteExtras()
        self.result: dict[str, Any] = {}
        self.email_fields: dict[bytes, str] = {}

    def get(self, cls: type[A], aggregate_id: UUID) -> A:
        """The record, checked against the version the caller based its change on."""
        existing = self.loaded.get(aggregate_id)
        if existing is not None:
            if not isinstance(existing, cls):
                raise no_record(cls.type_name, aggregate_id)
            return existing
        record = self._cache.take(aggregate_id) if self._cache is not None else None
        if record is not None and not isinstance(record, cls):
            self._cache.put([record])  # type: ignore[union-attr]
            record = None
        if record is not None:
            self.cached.add(aggregate_id)
            aggregate: A = record
        else:
            aggregate = self.app.load(cls, aggregate_id)
        if self.request.guard is not None:
            self.request.guard(aggregate, False)
        if aggregate_id == self.request.target and self.request.expected_version is not None:
            if aggregate.version != self.request.expected_version:
                raise ConcurrencyConflict(
                    aggregate_id, self.request.expected_version, aggregate.version
                )
        self.loaded[aggregate_id] = aggregate
        return aggregate

    def get_reference(self, cls: type[A], aggregate_id: UUID, field: str) -> A:
        """A record named in the request body: missing is bad input (422), not 404."""
        try:
            return self.get(cls, aggregate_id)
        except NotFound:
            raise InvalidValue(f"no {record_label(cls.type_name)} {aggregate_id}", field=field) from None

    def add(self, aggregate: Aggregate) -> None:
        self.loaded[aggregate.id] = aggregate

    def email_hmac(self, address: str) -> bytes:
        return hmac.new(self._email_key, normalise_email(address).encode(), hashlib.sha256).digest()

    def reserve_email(self, address: str, customer_id: UUID, field: str) -> None:
        """Reserve the address for the customer; another customer's address fails the save
        (a unique key in the events' transaction: race-safe)."""
        digest = self.email_hmac(address)
        self.email_fields[digest] = field
        self.extras.reserve_emails.append((digest, customer_id))

    def release_email(self, address: str, customer_id: UUID) -> None:
        self.extras.release_emails.append((self.email_hmac(address), customer_id))


Handler = Callable[[Any, UnitOfWork, CommandContext], Aggregate]


class CommandService:
    """Runs commands: one handler each, one transaction each, at most once per key."""

    def __init__(
        self,
        app: CrmApplication,
        handlers: dict[type[BaseModel], Handler],
        *,
        email_key: bytes,
        clock: Clock | None = None,
        new_id: Callable[[], UUID] = random_ids,
        cache_size: int = 10_000,
    ):
        self.app = app
        self.handlers = handlers
        self.clock = clock or SystemClock()
        self.new_id = new_id
        self._email_key = email_key
        #: records kept in memory between commands (cache_size 0: rebuilt every time)
        self.cache = AggregateCache(cache_size) if cache_size > 0 else None

    def execute(self, command: BaseModel, request: Request) -> WriteResult:
        """Run the command: its preconditions, then decide and save (again, on records
        rebuilt from the log, when a cached record may have misled the decision or
        another writer came first), at most ``MAX_RETRIES`` times."""
        handler = self._handler(command, request)
        fingerprint = ""
        if request.idempotency_key:
            fingerprint = self._fingerprint(command, request)
            earlier = self._earlier_answer(request)
            if earlier is not None:
                return self._replay(earlier, fingerprint)
        command_id = self.new_id()
        fresh = self.cache is None
        for attempt in range(MAX_RETRIES):
            decision = self._decide(handler, command, request, command_id, fresh=fresh)
            if decision is not None:
                result = self._save(*decision, request, fingerprint, last=attempt == MAX_RETRIES - 1)
                if result is not None:
                    return result
            fresh = True
        raise AssertionError("unreachable")  # pragma: no cover

    def _handler(self, command: BaseModel, request: Request) -> Handler:
        """The command's handler, once its request names the version it needs."""
        handler = self.handlers.get(type(command))
        if handler is None:
            raise TypeError(f"no handler for {type(command).__name__}")
        if getattr(command, "requires_version", False) and request.expected_version is None:
            raise PreconditionRequired(
                "send If-Match with the record's ETag (its version) to change it",
                field="If-Match",
            )
        return handler

    def _earlier_answer(self, request: Request) -> IdempotencyRecord | None:
        return self.app.recorder.idempotency_record(  # type: ignore[attr-defined,no-any-return]
            request.principal.id, request.idempotency_key or ""
        )

    def _decide(self, handler: Handler, command: BaseModel, request: Request, command_id: UUID,
                *, fresh: bool) -> tuple[UnitOfWork, Aggregate] | None:
        """The handler's decision (records from the cache unless ``fresh``); None when it
        refused on a cached record, which may be behind the log."""
        ctx = self._context(command, request, command_id)
        uow = UnitOfWork(self.app, request, self._email_key, None if fresh else self.cache)
        try:
            aggregate = handler(command, uow, ctx)
            if request.guard is not None:
                for a in uow.loaded.values():
                    if a.pending_events and a.version == len(a.pending_events):
                        request.guard(a, True)
        except STALE_REFUSALS:
            if not uow.cached:
                raise
            # A record from the cache may be behind the log: the refusal may be
            # wrong, so the command is decided again on records rebuilt from it.
            return None
        return uow, aggregate

    def _save(self, uow: UnitOfWork, aggregate: Aggregate, request: Request, fingerprint: str,
              *, last: bool) -> WriteResult | None:
        """Store the decision's events with what it writes beside them; the answer, or
        None when another writer appended to one of its records first (and the command
        is to be decided again)."""
        created = aggregate.version == len(aggregate.pending_events)
        pending = [a for a in uow.loaded.values() if a.pending_events]
        if not pending:  # nothing changed: answer with the current state
            self._keep(uow)
            position = self.app.recorder.position_of(aggregate.id, aggregate.version)  # type: ignore[attr-defined]
            return WriteResult(aggregate.id, aggregate.type_name, aggregate.version,
                               position, created=False, result=uow.result)
        result = WriteResult(aggregate.id, aggregate.type_name, aggregate.version,
                             None, created=created, result=_jsonable(uow.result))
        self._set_extras(uow, pending, request, fingerprint, result)
        try:
            recordings = self.app.save(*pending, extras=uow.extras)
        except EmailTaken as e:
            raise self._duplicate(uow, e) from None
        except IdempotencyKeyTaken:
            earlier = self._earlier_answer(request)
            assert earlier is not None
            return self._replay(earlier, fingerprint)
        except SubjectKeyDestroyed:
            raise PersonalDataErased("this customer's personal data was erased") from None
        except IntegrityError:
            # Another writer appended to one of these records since we loaded it.
            if request.expected_version is not None or last:
                current = self.app.load(type(aggregate), aggregate.id).version if not created else 0
                raise ConcurrencyConflict(aggregate.id, request.expected_version, current) from None
            return None
        self._keep(uow)
        positions = [r.notification.id for r in recordings if r.notification.id is not None]
        result.position = max(positions) if positions else None
        return result

    @staticmethod
    def _set_extras(uow: UnitOfWork, pending: list[Aggregate], request: Request, fingerprint: str,
                    result: WriteResult) -> None:
        """What the append writes beside the events: the subjects whose keys seal them,
        and the first answer to the request's Idempotency-Key."""
        uow.extras.sealed_subjects = {
            e.subject_id() for a in pending for e in a.pending_events if seals_personal_data(e)
        }
        if request.idempotency_key:
            uow.extras.idempotency = IdempotencyRecord(
                principal=request.principal.id,
                key=request.idempotency_key,
                fingerprint=fingerprint,
                status=result.status,
                body=result.body(),
            )

    def _duplicate(self, uow: UnitOfWork, taken: EmailTaken) -> Duplicate:
        owner = self.app.recorder.email_owner(taken.email_hmac)  # type: ignore[attr-defined]
        return Duplicate(
            f"this e-mail address is already registered to customer {owner}",
            field=uow.email_fields.get(taken.email_hmac, "contacts"),
            existing_customer_id=str(owner),
        )

    def _keep(self, uow: UnitOfWork) -> None:
        """Put the command's records (all stored now) in the cache for the next one."""
        if self.cache is not None:
            self.cache.put(uow.loaded.values())

    def _context(self, command: BaseModel, request: Request, command_id: UUID) -> CommandContext:
        recorded_at = self.clock.now()
        occurred_at = (getattr(command, "occurred_at", None) or recorded_at).astimezone(UTC)
        if (occurred_at - recorded_at).total_seconds() > MAX_FUTURE_SKEW_SECONDS:
            raise InvalidValue("occurred_at must not be in the future", field="occurred_at")
        return CommandContext(
            actor=Actor(id=request.principal.id, role=request.principal.role),
            recorded_at=recorded_at,
            occurred_at=occurred_at,
            correlation_id=request.correlation_id,
            causation_id=request.causation_id or str(command_id),
            command_id=command_id,
            new_id=self.new_id,
            reason=getattr(command, "reason", None),
        )

    @staticmethod
    def _fingerprint(command: BaseModel, request: Request) -> str:
        doc = {
            "command": type(command).__name__,
            "target": str(request.target),
            "expected_version": request.expected_version,
            "body": command.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def _replay(earlier: IdempotencyRecord, fingerprint: str) -> WriteResult:
        # An erasure replaces the fingerprint (a digest of personal data): the repeat
        # can no longer be compared, and gets the first answer.
        if earlier.fingerprint not in (fingerprint, ERASED_FINGERPRINT):
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request",
                field="Idempotency-Key",
            )
        body = earlier.body
        return WriteResult(
            id=UUID(body["id"]),
            type=body["type"],
            version=body["version"],
            position=body.get("position"),
            created=earlier.status == 201,
            result=body.get("result") or {},
            replayed=True,
        )


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, UUID) else v for k, v in values.items()}
