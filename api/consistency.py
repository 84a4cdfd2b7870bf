"""Read-your-writes for the read-model routes.

A write answers with the event-log ``position`` of its last event. A client that wants
its next read to show that write passes the position back: ``?min_position=N`` or the
header ``X-Min-Position: N`` (both given: the larger one). The route then waits until
every read model has applied the log up to ``N`` -- ``wait_ms`` milliseconds at most
(default 2000, at most 10000; 0 checks once) -- and only then reads.

A position beyond the end of the event log (no write has returned it) is a bad request:
422 naming ``min_position``. When the read models do not get there in time the answer is **503 Service Unavailable**
(problem+json, code ``read-model-behind``, with ``position_wanted``, ``position_reached``
and a ``Retry-After`` header). Why 503 and not the alternatives:

* 409 Conflict says the request conflicts with the resource's state; nothing is wrong
  with the request or the resource, the server is only temporarily unable to answer it.
* 425 Too Early is defined for TLS early data (RFC 8470); clients and proxies that know
  it retry it only in that sense, and most generic HTTP tooling does not.
* 503 with ``Retry-After`` is the standard "not now, try again shortly" that retry
  middleware, proxies and SDKs already honour, and the body says how far behind the
  read side is.

Routes served from the event store itself (``/{collection}/{id}/current`` and
``/{collection}/{id}/events``) accept the same parameters but never wait: the event
store always includes every position a write has returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from projections.service import ReadSide
from api.problems import Problem

DEFAULT_WAIT_MS = 2000
MAX_WAIT_MS = 10_000
RETRY_AFTER_SECONDS = 1
#: The query parameters every GET route takes for read-your-writes.
PARAMS = ("min_position", "wait_ms")
OPENAPI_PARAMETERS: list[dict[str, Any]] = [
    {"name": "min_position", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0},
     "description": "Read only once the read models have applied this event-log position "
                    "(the `position` a write returned); 503 `read-model-behind` if not in time."},
    {"name": "X-Min-Position", "in": "header", "required": False,
     "schema": {"type": "integer", "minimum": 0}, "description": "Same as `min_position`."},
    {"name": "wait_ms", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS, "default": DEFAULT_WAIT_MS},
     "description": "How long to wait for `min_position` at most."},
]


def invalid(field: str, msg: str, *, source: str = "query") -> RequestValidationError:
    """A 422 problem naming the parameter (or header) ``field``."""
    return RequestValidationError([{"loc": (source, field), "msg": msg, "type": "value_error"}])


def _int(value: str, field: str, *, source: str = "query", maximum: int | None = None) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise invalid(field, "must be a whole number of at least 0", source=source)
    number = int(text)
    if maximum is not None and number > maximum:
        raise invalid(field, f"must be at most {maximum}", source=source)
    return number


@dataclass(frozen=True)
class ReadAfter:
    """The position a read must reflect (None: any) and how long to wait for it."""

    position: int | None
    wait_seconds: float


def read_after(request: Request) -> ReadAfter:
    """``min_position`` / ``X-Min-Position`` and ``wait_ms`` of the request (422 when bad)."""
    positions = []
    values = request.query_params.getlist("min_position")
    if len(values) > 1:
        raise invalid("min_position", "give it once")
    if values:
        positions.append(_int(values[0], "min_position"))
    header = request.headers.get("x-min-position")
    if header is not None:
        positions.append(_int(header, "x_min_position", source="header"))
    waits = request.query_params.getlist("wait_ms")
    if len(waits) > 1:
        raise invalid("wait_ms", "give it once")
    wait_ms = _int(waits[0], "wait_ms", maximum=MAX_WAIT_MS) if waits else DEFAULT_WAIT_MS
    return ReadAfter(max(positions) if positions else None, wait_ms / 1000)


def require_read(read: ReadSide | None) -> ReadSide:
    if read is None:
        raise Problem(503, "this process serves no read models", code="read-side-disabled",
                      headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return read


def reached_position(read: ReadSide) -> int:
    """The position every read model has applied (the slowest one's)."""
    with read.pool.connection() as conn:
        row = conn.execute(
            "SELECT min(t.position) AS p FROM crm_projections r"
            " JOIN crm_projection_tracking t ON t.schema_name = r.active_schema"
        ).fetchone()
    return int(row["p"]) if row and row["p"] is not None else 0


def log_head(read: ReadSide) -> int:
    """The event log's last position."""
    with read.pool.connection() as conn:
        row = conn.execute(f'SELECT max(notification_id) AS m FROM "{read.store.events_table}"').fetchone()
    return int(row["m"] or 0) if row else 0


def ensure(read: ReadSide | None, after: ReadAfter) -> None:
    """Return once the read models reflect ``after.position``; else a 503 problem."""
    if after.position is None or after.position == 0:
        return
    side = require_read(read)
    if side.wait_for(after.position, 0):
        return
    head = log_head(side)
    if after.position > head:  # no write returned it: waiting would not help
        raise invalid("min_position", f"no write has returned position {after.position}: the event "
                      f"log ends at {head}")
    if side.wait_for(after.position, after.wait_seconds):
        return
    reached = reached_position(side)
    if reached >= after.position:  # got there just now
        return
    raise Problem(
        503,
        f"the read models have applied the event log up to {reached}, not yet {after.position};"
        " try again shortly",
        title="Read model behind",
        code="read-model-behind",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        position_wanted=after.position,
        position_reached=reached,
    )
