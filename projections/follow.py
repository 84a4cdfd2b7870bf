"""What every log follower shares: telling a bad event from a bad moment.

A follower (a read model's runner, the DuckDB projection, the Kafka publisher, the
automation) applies the log in batches. When a batch fails, the error says whose fault
it is (``classify``):

- **the event's** (``"event"``): its data cannot be applied -- a handler raised, a value
  does not fit a column (PostgreSQL ``DataError``: NUL in text, a number out of range, a
  value too long; ``IntegrityError``: a constraint), DuckDB could not convert or accept
  it, the broker refused the record (too large). Trying again gives the same error, so
  the batch is split (``apply_splitting``): halves are tried until the one bad event is
  isolated; it is parked (recorded with its error) and every other event is applied;
- **the moment's** (``"moment"``): the connection or the server failed (PostgreSQL
  ``OperationalError``/``InterfaceError``: a lost connection, a shutdown, a
  serialization failure or deadlock, a lock or statement timeout; DuckDB I/O or out of
  memory; the Kafka broker unreachable). Nothing is parked: the follower tries the
  batch again after a pause that doubles up to a cap (``Backoff``).

Errors of the code or the schema (PostgreSQL ``ProgrammingError`` such as a dropped
table, ``InternalError``) are the moment's too: splitting cannot help and parking would
lose events.

``LogFollower`` is the frame every follower runs in: it leads (or waits to lead), is
woken by LISTEN/NOTIFY on the events table's channel (polling every ``poll_seconds`` in
case a notification is missed), goes on at once while behind, pauses after an error of
the moment (``Backoff``), counts what it did (``FollowerStats``, for /metrics and the
status commands) and shuts down cleanly. A follower supplies only ``try_lead``, ``advance``
(one batch, and what its transaction commits with the position) and ``close``.
``TrackedFollower`` adds what a plain PostgreSQL follower needs besides: its position and
parked events in ``crm_follower_tracking``/``crm_follower_parked``, each batch applied in
one transaction with its position and split down to the event at fault when its data
fails; it leaves only ``apply`` (what the follower does with a batch).

``clean`` is the rule for values a store cannot hold: PostgreSQL text cannot hold NUL
(U+0000) and UTF-8 cannot encode a lone surrogate (U+D800..U+DFFF, which JSON escapes
such as ``\\ud800`` can produce); both are replaced by U+FFFD. Followers apply it only to
a batch that failed (never on the happy path), so a clean value is written as it is.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import orjson
import psycopg
import structlog

Kind = Literal["event", "moment"]
EVENT: Kind = "event"
MOMENT: Kind = "moment"

T = TypeVar("T")

#: DB-API classes (psycopg, DuckDB, eventsourcing's persistence errors all follow the
#: DB-API hierarchy): the first of these names found in an error's class hierarchy decides.
_DB_EVENT = frozenset({"DataError", "IntegrityError",
                       # PostgreSQL's program limits (class 54), reached by one event's
                       # values: an index entry too large, too many elements
                       "ProgramLimitExceeded", "StatementTooComplex", "TooManyColumns",
                       "TooManyArguments"})
_DB_MOMENT = frozenset({"OperationalError", "InterfaceError", "InternalError", "ProgrammingError",
                        "NotSupportedError", "DatabaseError"})
#: DuckDB errors that come from the data although DuckDB files some under ProgrammingError
_DUCKDB_EVENT = frozenset({"ConversionException", "InvalidInputException", "ConstraintException",
                           "OutOfRangeException", "TypeMismatchException"})
#: Kafka errors about one record (everything else from kafka-python is the broker's or the
#: network's: retried)
_KAFKA_EVENT = frozenset({"MessageSizeTooLargeError", "RecordListTooLargeError", "InvalidRecordError",
                          "CorruptRecordError", "CorruptRecordException", "InvalidTopicError"})
_DRIVERS = ("psycopg", "duckdb", "_duckdb")
_EVENTSOURCING_STORE = frozenset({"PersistenceError", "ConnectionPoolClosedError",
                                  "ConnectionNotFromPoolError"})


class Moment(RuntimeError):
    """An error that is nobody's event: the follower tries again later."""


def classify(error: BaseException) -> Kind:
    """Whose fault ``error`` is: one event's data (``"event"``), or the moment's --
    the connection, the server, the broker (``"moment"``)."""
    if isinstance(error, Moment | OSError | MemoryError | TimeoutError):
        return MOMENT
    mro = type(error).__mro__
    if any(c.__module__.startswith("eventsourcing") and c.__name__ in _EVENTSOURCING_STORE for c in mro):
        # the event store's: a conflicting append, a closed pool, the database gone
        return EVENT if any(c.__name__ == "DataError" for c in mro) else MOMENT
    for cls in mro:
        module = cls.__module__.split(".", 1)[0]
        name = cls.__name__
        if module == "kafka":
            return EVENT if name in _KAFKA_EVENT else MOMENT
        if module in _DRIVERS:
            if name in _DUCKDB_EVENT or name in _DB_EVENT:
                return EVENT
            if name in _DB_MOMENT or name == "Error":
                return MOMENT
    # Anything else was raised by code on the event's data (a handler, a decoder, an
    # encoder): the same event fails the same way again.
    return EVENT


def apply_splitting(items: Sequence[T], apply: Callable[[Sequence[T]], Any],
                    park: Callable[[T, BaseException], Any], *,
                    failed: BaseException | None = None) -> int:
    """Apply ``items`` in order, as few calls of ``apply`` (each all or nothing) as the
    data allows: a part that fails with an event's error is split in halves, and a single
    item that fails is handed to ``park`` with its error. An error of the moment is
    raised at once (what was applied before it stays applied). ``failed``: the error
    ``items`` already failed with as a whole (they are split at once). How many items
    were parked."""
    parked = 0
    todo: list[tuple[int, int, BaseException | None]] = [(0, len(items), failed)]
    while todo:
        lo, hi, error = todo.pop()
        if hi <= lo:
            continue
        if error is None:
            try:
                apply(items[lo:hi])
                continue
            except Exception as e:
                if classify(e) == MOMENT:
                    raise
                error = e
        if hi - lo == 1:
            park(items[lo], error)
            parked += 1
            continue
        mid = (lo + hi) // 2
        todo.append((mid, hi, None))  # popped last: the halves go in log order
        todo.append((lo, mid, None))
    return parked


class Backoff:
    """Pauses after errors of the moment: ``first`` seconds, doubling to at most
    ``cap``; back to ``first`` after a success."""

    def __init__(self, first: float = 1.0, cap: float = 30.0):
        self.first = first
        self.cap = max(cap, first)
        self.failures = 0

    def next_delay(self) -> float:
        """The pause before the next attempt (and count this failure)."""
        delay: float = min(self.cap, self.first * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay

    def wait(self, stop: threading.Event) -> float:
        delay = self.next_delay()
        stop.wait(delay)
        return delay

    def reset(self) -> None:
        self.failures = 0


# -- values a store cannot hold --------------------------------------------------------------
_UNHOLDABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD (the same object when
    there is none)."""
    if _UNHOLDABLE.search(text) is None:
        return text
    return _UNHOLDABLE.sub(REPLACEMENT, text)


def clean(value: Any) -> Any:
    """``value`` with every text in it cleaned (lists, tuples and dicts, keys too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clean(v) for v in value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value


def clean_json(text: str) -> str | None:
    """A JSON document that escapes NUL or lone surrogates (which PostgreSQL's jsonb and
    DuckDB refuse) written again with them replaced; None if ``text`` is not JSON."""
    try:
        doc = json.loads(text)  # the standard library accepts lone surrogates
    except ValueError:
        return None
    return json.dumps(clean(doc), sort_keys=True, separators=(",", ":"))


def recorded_at(state: bytes | memoryview | None) -> datetime | None:
    """The recording time in a stored event's document (None if it has none or is not
    JSON): read in Python, as PostgreSQL refuses some documents the log may hold."""
    if state is None:
        return None
    data = bytes(state)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(data)
        except ValueError:
            return None
    value = doc.get("recorded_at") if isinstance(doc, dict) else None
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


# -- the frame --------------------------------------------------------------------------------
log = structlog.get_logger("crm.projections")


def listen(conninfo: str, events_table: str) -> psycopg.Connection[Any]:
    """A connection notified of every append to the events table."""
    listener = psycopg.connect(conninfo, autocommit=True)
    listener.execute(f'LISTEN "{events_table}"')
    return listener


def wait_for_events(listener: psycopg.Connection[Any], stop: threading.Event, seconds: float) -> None:
    """Until an append is notified on ``listener``, ``stop`` is set or ``seconds`` pass
    (the poll that covers a missed notification)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        if any(True for _ in listener.notifies(timeout=0.1, stop_after=1)):
            return


@dataclass
class FollowerStats:
    """What this process's follower did (for /metrics and the status commands)."""

    batches: int = 0
    events: int = 0
    parked: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0
    position: int = 0
    is_leader: bool = False
    #: attempts that failed on the connection or the server (tried again, nothing parked)
    retries: int = 0


class LogFollower:
    """The frame of a log follower: leadership, wake-up, backoff, stats and shutdown.

    A follower sets ``name``, ``conninfo``, ``events_table``, ``poll_seconds``,
    ``backoff`` and ``stats`` and implements ``try_lead``, ``advance`` and ``close``.
    """

    name: str = "follower"
    conninfo: str
    events_table: str = "crm_events"
    poll_seconds: float = 1.0
    backoff: Backoff
    stats: FollowerStats
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    # -- what a follower supplies --------------------------------------------------------
    def try_lead(self) -> bool:
        """Take the follower's leadership if free (held until ``close``)."""
        raise NotImplementedError

    def advance(self, stop: threading.Event) -> bool:
        """Follow the log one step (a batch, or a catch-up); True when there is more to
        do at once (a backlog), False to wait for the next append."""
        raise NotImplementedError

    def close(self) -> None:
        """Give up the connections (and so the leadership)."""

    def prepare(self) -> None:
        """Before each attempt to lead (e.g. follow a blue/green switch)."""

    def recover(self, error: Exception) -> None:
        """After an error of the moment, before the pause: by default start afresh."""
        self.close()

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Lead (or wait to lead), then follow the log until ``stop`` is set. Woken by
        LISTEN/NOTIFY on the events table's channel, polling every ``poll_seconds`` in
        case a notification is missed; after an error (of the moment: the data's are
        parked) it tries again after a pause of ``poll_seconds``, doubling up to the
        backoff's cap."""
        listener: psycopg.Connection[Any] | None = None
        try:
            while not stop.is_set():
                try:
                    self.prepare()
                    if not self.try_lead():
                        stop.wait(self.poll_seconds)
                        continue
                    if listener is None or listener.closed:
                        listener = listen(self.conninfo, self.events_table)
                    behind = self.advance(stop)
                    self.backoff.reset()
                    if behind:
                        continue
                    wait_for_events(listener, stop, self.poll_seconds)
                except Exception as e:  # noqa: BLE001 -- logged; the follower must not die
                    delay = self.backoff.next_delay()
                    self.stats.retries += 1
                    log.error(f"{self.name} failed; retrying", follower=self.name,
                              error=clean_text(f"{type(e).__name__}: {e}"), retry_in_seconds=delay,
                              exc_info=True)
                    self.recover(e)
                    if listener is not None:
                        listener.close()
                        listener = None
                    stop.wait(delay)
        finally:
            if listener is not None:
                listener.close()
            self.close()

    def start(self, thread_name: str | None = None) -> None:
        """Follow the log in a thread of this process (until ``stop``)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name=thread_name or self.name,
                                        daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread ``start`` began to stop (without waiting: several followers
        stop at once)."""
        if self._stop is not None:
            self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread ``start`` began (it finishes its batch) and close."""
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.close()

    def note_batch(self, events: int, parked: int, position: int, started: float) -> None:
        """Count a committed batch (``started``: its ``time.perf_counter()``)."""
        self.stats.batches += 1
        self.stats.events += events
        self.stats.parked += parked
        self.stats.last_batch_size = events
        self.stats.last_batch_seconds = time.perf_counter() - started
        if position:
            self.stats.position = position


# -- a plain PostgreSQL follower --------------------------------------------------------------
FOLLOWER_DDL = (
    "CREATE TABLE IF NOT EXISTS crm_follower_tracking (name text PRIMARY KEY,"
    " position bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS crm_follower_parked (name text NOT NULL, position bigint NOT NULL,"
    " topic text NOT NULL, error text NOT NULL, parked_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (name, position))",
)


@dataclass(frozen=True)
class StoredEvent:
    """One stored event as the log holds it (``state``: the codec's document)."""

    position: int
    originator_id: str
    originator_version: int
    topic: str
    state: bytes


@dataclass(frozen=True)
class FollowerStatus:
    """A tracked follower's position, the log's head and its parked events."""

    name: str
    position: int
    head: int
    lag_events: int
    parked: int


class TrackedFollower(LogFollower):
    """A follower whose position and parked events live in PostgreSQL: it implements
    only ``apply`` (what it does with a batch, in the transaction that records the
    batch's position) and, if it has tables of its own, ``setup``.

    Each batch (up to ``batch_size`` stored events, those of ``topics`` handed to
    ``apply``) commits with its position. A batch that fails on its data is split until
    the event at fault is isolated and parked (``crm_follower_parked``); an error of the
    moment is retried by the frame after a growing pause.
    """

    def __init__(self, name: str, conninfo: str, *, events_table: str = "crm_events",
                 batch_size: int = 1000, poll_seconds: float = 1.0, retry_max_seconds: float = 30.0,
                 topics: frozenset[str] | None = None):
        self.name = name
        self.conninfo = conninfo
        self.events_table = events_table
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.topics = topics
        self.backoff = Backoff(poll_seconds, retry_max_seconds)
        self.stats = FollowerStats()
        self._conn: psycopg.Connection[Any] | None = None

    # -- what the follower does ----------------------------------------------------------
    def setup(self, conn: psycopg.Connection[Any]) -> None:
        """Create the follower's own tables (in a transaction; idempotent)."""

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[StoredEvent]) -> None:
        """Apply ``events`` in ``conn``'s open transaction (committed with the position)."""
        raise NotImplementedError

    # -- the frame's part ----------------------------------------------------------------
    def connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=True)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_projection_setup'))")
                for ddl in FOLLOWER_DDL:
                    conn.execute(ddl)
                conn.execute("INSERT INTO crm_follower_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                             (self.name,))
                self.setup(conn)
            self._conn = conn
            self.stats.is_leader = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        self.stats.is_leader = False

    def try_lead(self) -> bool:
        if self.stats.is_leader and self._conn is not None and not self._conn.closed:
            return True
        row = self.connect().execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                     ("crm_follower:" + self.name,)).fetchone()
        self.stats.is_leader = bool(row and row[0])
        return self.stats.is_leader

    def position(self) -> int:
        row = self.connect().execute("SELECT position FROM crm_follower_tracking WHERE name = %s",
                                     (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def advance(self, stop: threading.Event) -> bool:
        return self.run_batch() >= self.batch_size

    def run_batch(self) -> int:
        """Apply the next batch; how many stored events it covered (0: at the log's end)."""
        if not self.try_lead():
            raise Moment(f"another follower leads {self.name}")
        conn = self.connect()
        started = time.perf_counter()
        rows = conn.execute(
            "SELECT notification_id, originator_id::text, originator_version, topic, state"
            f' FROM "{self.events_table}" WHERE notification_id > %s ORDER BY notification_id LIMIT %s',
            (self.position(), self.batch_size), binary=True).fetchall()
        if not rows:
            return 0
        last = int(rows[-1][0])
        events = [StoredEvent(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in rows
                  if self.topics is None or r[3] in self.topics]
        parked = 0
        try:
            with conn.transaction():
                self.apply(conn, events)
                self._track(conn, last)
        except Exception as e:
            if conn.closed or classify(e) == MOMENT:
                raise
            log.warning(f"{self.name}: batch failed on its data; splitting it", follower=self.name,
                        last=last, error=clean_text(f"{type(e).__name__}: {e}"))
            parked = apply_splitting(events, self._commit, self._park, failed=e)
            self._track(conn, last)  # the events after the last handled one
        self.note_batch(len(rows), parked, last, started)
        return len(rows)

    def _commit(self, part: Sequence[StoredEvent]) -> None:
        conn = self.connect()
        with conn.transaction():
            self.apply(conn, part)
            self._track(conn, part[-1].position)

    def _park(self, event: StoredEvent, error: BaseException) -> None:
        text = clean_text(f"{type(error).__name__}: {error}"[:2000])
        log.error(f"{self.name} parked an event", follower=self.name, position=event.position,
                  topic=clean_text(event.topic), error=text)
        conn = self.connect()
        with conn.transaction():
            conn.execute("INSERT INTO crm_follower_parked (name, position, topic, error) VALUES (%s, %s, %s, %s)"
                         " ON CONFLICT DO NOTHING", (self.name, event.position, clean_text(event.topic), text))
            self._track(conn, event.position)

    def _track(self, conn: psycopg.Connection[Any], position: int) -> None:
        conn.execute("UPDATE crm_follower_tracking SET position = GREATEST(position, %s), updated_at = now()"
                     " WHERE name = %s", (position, self.name), prepare=True)


def follower_statuses(conn: psycopg.Connection[Any], events_table: str = "crm_events") -> list[FollowerStatus]:
    """Every tracked follower's status, read on ``conn`` (any row factory; none before
    the first follower ran)."""
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cur:
        exists = cur.execute("SELECT to_regclass('crm_follower_tracking') IS NOT NULL"
                             " AND to_regclass('crm_follower_parked') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return []
        head_row = cur.execute(f'SELECT coalesce(max(notification_id), 0) FROM "{events_table}"').fetchone()
        head = int(head_row[0]) if head_row else 0
        rows = cur.execute("SELECT t.name, t.position, (SELECT count(*) FROM crm_follower_parked p"
                           " WHERE p.name = t.name) FROM crm_follower_tracking t ORDER BY t.name").fetchall()
    return [FollowerStatus(str(name), int(position), head, max(0, head - int(position)), int(parked))
            for name, position, parked in rows]
