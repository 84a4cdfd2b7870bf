"""Operations endpoints: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics``
(Prometheus text exposition format 0.0.4, written by hand).

``/metrics`` answers only a scraper that sends ``Authorization: Bearer <CRM_METRICS_TOKEN>``
(401 otherwise); with no token configured it is off (404).

HTTP metrics are collected by ``MetricsMiddleware``, labelled with the matched route's
path *template* (``/api/v1/customers/{id}``), never the raw path, so ids do not make new
series; requests that match no route are counted under ``route="<unmatched>"``.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from automation.runner import automation_status
from projections.follow import follower_statuses
from api.encoding import JSONResponse
from api.problems import Problem, problem

log = structlog.get_logger("crm.http")

#: Upper bounds (milliseconds) of the request-latency histogram's buckets.
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)
#: Readiness bounds (fixed on purpose: no setting to get wrong). A projection is not
#: ready when it is more than this many events behind the log, OR its oldest unapplied
#: event has waited longer than this: either means reads are noticeably stale (a stuck
#: runner shows as time, a burst as count).
MAX_LAG_EVENTS = 1000
MAX_LAG_SECONDS = 30.0
#: /ready answers within this: a check still waiting on the database then means "not ready".
READY_WITHIN_SECONDS = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "<unmatched>"


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_MS))
    count: int = 0
    total_ms: float = 0.0


class HttpMetrics:
    """Request counts and latencies by method, route template and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], _Histogram] = {}

    def observe(self, method: str, route: str, status: int, elapsed_ms: float) -> None:
        with self._lock:
            h = self._series.setdefault((method, route, str(status)), _Histogram())
            h.count += 1
            h.total_ms += elapsed_ms
            for i, bound in enumerate(BUCKETS_MS):
                if elapsed_ms <= bound:
                    h.buckets[i] += 1
                    break

    def snapshot(self) -> dict[tuple[str, str, str], _Histogram]:
        with self._lock:
            return {k: _Histogram(list(h.buckets), h.count, h.total_ms) for k, h in self._series.items()}

    def exposition(self) -> list[str]:
        series = sorted(self.snapshot().items())
        lines = [
            "# HELP crm_http_requests_total HTTP requests answered, by method, route template and status.",
            "# TYPE crm_http_requests_total counter",
        ]
        for (method, route, status), h in series:
            lines.append(sample("crm_http_requests_total", h.count, method=method, route=route, status=status))
        lines += [
            "# HELP crm_http_request_duration_milliseconds Time to answer a request, in milliseconds.",
            "# TYPE crm_http_request_duration_milliseconds histogram",
        ]
        for (method, route, status), h in series:
            running = 0
            for bound, n in zip(BUCKETS_MS, h.buckets, strict=True):
                running += n
                lines.append(sample("crm_http_request_duration_milliseconds_bucket", running,
                                    method=method, route=route, status=status, le=str(bound)))
            lines.append(sample("crm_http_request_duration_milliseconds_bucket", h.count,
                                method=method, route=route, status=status, le="+Inf"))
            lines.append(sample("crm_http_request_duration_milliseconds_sum", h.total_ms,
                                method=method, route=route, status=status))
            lines.append(sample("crm_http_request_duration_milliseconds_count", h.count,
                                method=method, route=route, status=status))
        return lines


class MetricsMiddleware:
    """Times every HTTP request and records it under its route template."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_see(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            self.metrics.observe(scope.get("method", "?"), template, status["code"],
                                 (time.perf_counter() - started) * 1000)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def sample(name: str, value: float | int | bool, **labels: str) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


Described = tuple[str, str, str, float | int | bool]


def families(prefix: str, values: Iterable[Described], **labels: str) -> list[str]:
    """One single-sample family per (metric, kind, help, value), named ``prefix + metric``."""
    lines: list[str] = []
    for metric, kind, help_text, value in values:
        name = f"{prefix}{metric}"
        lines += family(name, kind, help_text, [sample(name, value, **labels)])
    return lines


# -- the routes ----------------------------------------------------------------------------
def _services(request: Request) -> Any:
    return request.app.state.services


def _projection_metrics(read: Any) -> list[str]:
    statuses = read.status()
    stats = read.stats()
    per: dict[str, list[tuple[str, float | int | bool]]] = {}
    for s in statuses:
        st = stats.get(s.name)
        per[s.name] = [
            ("position", s.position),
            ("head", s.head),
            ("lag_events", s.lag_events),
            ("lag_seconds", s.lag_seconds),
            ("last_batch_size", st.last_batch_size if st else 0),
            ("events_applied_total", st.events if st else 0),
            ("batches_total", st.batches if st else 0),
            ("parked_events", s.parked),
            ("leader", st.is_leader if st else False),
            ("retries_total", st.retries if st else 0),
        ]
    described = {
        "position": ("gauge", "Event-log position the read model's active generation has applied."),
        "head": ("gauge", "Event-log head (highest position) when the status was read."),
        "lag_events": ("gauge", "Events in the log not yet applied."),
        "lag_seconds": ("gauge", "How long the oldest unapplied event has waited, in seconds."),
        "last_batch_size": ("gauge", "Events read by this process's runner in its last batch."),
        "events_applied_total": ("counter", "Events this process's runner has read and applied."),
        "batches_total": ("counter", "Batches this process's runner has committed."),
        "parked_events": ("gauge", "Events parked (not applicable) in the active generation."),
        "leader": ("gauge", "1 when this process's runner leads the projection's active generation."),
        "retries_total": ("counter", "Batches this process's runner tried again after a failure of the"
                                     " database (nothing parked)."),
    }
    lines: list[str] = []
    for metric, (kind, help_text) in described.items():
        name = f"crm_projection_{metric}"
        lines += family(name, kind, help_text,
                        (sample(name, dict(values)[metric], projection=p) for p, values in sorted(per.items())))
    return lines


def _kafka_metrics(kafka: Any) -> list[str]:
    s = kafka.status()
    st = kafka.publisher.stats
    values: list[Described] = [
        ("position", "gauge", "Event-log position the Kafka publisher has published and recorded.",
         s.position),
        ("lag_events", "gauge", "Events in the log not yet published to Kafka.", s.lag_events),
        ("lag_seconds", "gauge", "How long the oldest unpublished event has waited, in seconds.",
         s.lag_seconds),
        ("parked_events", "gauge", "Events the publisher could not publish.", s.parked),
        ("events_published_total", "counter", "Records this process's publisher had acknowledged.",
         st.events),
        ("batches_total", "counter", "Batches this process's publisher completed.", st.batches),
        ("send_failures_total", "counter", "Batches this process's publisher had to send again.",
         st.failures),
        ("leader", "gauge", "1 when this process's publisher leads.", st.is_leader),
        ("retries_total", "counter", "Attempts this process's publisher tried again after a failure of the"
         " broker or the database (nothing parked).", st.retries),
    ]
    return families("crm_kafka_publisher_", values, publisher=s.name)


def _automation(svc: Any) -> Any:
    """The automation's status (None when this process does not watch it)."""
    if not getattr(svc, "automation", False) or svc.read is None:
        return None
    with svc.read.pool.connection() as conn:
        return automation_status(conn)


def _automation_metrics(s: Any) -> list[str]:
    return families("crm_automation_", [
        ("position", "gauge", "Event-log position the automation has handled.", s.position),
        ("lag_events", "gauge", "Events in the log the automation has not handled yet.", s.lag_events),
        ("lag_seconds", "gauge", "How long the oldest unhandled event has waited, in seconds.", s.lag_seconds),
        ("parked_events", "gauge", "Events the automation parked (its rules failed on their data).", s.parked),
    ])


def _analytics_metrics(analytics: Any) -> list[str]:
    """This process's analytics follower (its counters; the file is read only by the leader)."""
    st = analytics.stats
    values: list[Described] = [
        ("position", "gauge", "Event-log position this process's analytics projection has applied"
         " (0 when it does not lead).", st.position),
        ("leader", "gauge", "1 when this process's analytics projection leads (owns the file).", st.is_leader),
        ("events_applied_total", "counter", "Events this process's analytics projection applied.", st.events),
        ("batches_total", "counter", "Batches this process's analytics projection committed.", st.batches),
        ("parked_total", "counter", "Events this process's analytics projection parked.", st.parked),
        ("retries_total", "counter", "Attempts this process's analytics projection tried again after a"
         " failure of the file or the database (nothing parked).", st.retries),
    ]
    return families("crm_analytics_", values)


def _followers(svc: Any) -> list[Any]:
    """The tracked followers' statuses (``projections.follow.TrackedFollower``)."""
    if svc.read is None:
        return []
    with svc.read.pool.connection() as conn:
        return follower_statuses(conn)


def _follower_metrics(statuses: list[Any]) -> list[str]:
    described = {
        "position": "Event-log position the follower has applied.",
        "lag_events": "Events in the log the follower has not applied yet.",
        "parked_events": "Events the follower parked (its batch failed on their data).",
    }
    values = {s.name: {"position": s.position, "lag_events": s.lag_events, "parked_events": s.parked}
              for s in statuses}
    lines: list[str] = []
    for metric, help_text in described.items():
        name = f"crm_follower_{metric}"
        lines += family(name, "gauge", help_text,
                        (sample(name, v[metric], follower=f) for f, v in sorted(values.items())))
    return lines


Readiness = tuple[list[str], int | None, list[dict[str, Any]], dict[str, Any]]


def _readiness(svc: Any) -> Readiness:
    """Why the service is not ready (nothing: it is), the log's head, each read model,
    and the automation's state when this process watches it."""
    reasons: list[str] = []
    position: int | None = None
    try:
        position = int(svc.app.recorder.max_notification_id() or 0)
    except Exception as e:  # noqa: BLE001 -- a reason, not a crash
        reasons.append(f"event store unreachable: {type(e).__name__}: {e}")
    projections: list[dict[str, Any]] = []
    if svc.read is not None and position is not None:
        try:
            statuses = svc.read.status()
        except Exception as e:  # noqa: BLE001
            reasons.append(f"read-model status unavailable: {type(e).__name__}: {e}")
            statuses = []
        for s in statuses:
            projections.append({"name": s.name, "position": s.position, "lag_events": s.lag_events,
                                "lag_seconds": round(s.lag_seconds, 3), "parked": s.parked})
            if not s.schema:
                reasons.append(f"{s.name}: not built")
            if s.lag_events > MAX_LAG_EVENTS:
                reasons.append(f"{s.name}: {s.lag_events} events behind (at most {MAX_LAG_EVENTS})")
            if s.lag_seconds > MAX_LAG_SECONDS:
                reasons.append(f"{s.name}: {s.lag_seconds:.1f} s behind (at most {MAX_LAG_SECONDS:g} s)")
            if s.parked:
                reasons.append(f"{s.name}: {s.parked} parked event(s)")
    extra: dict[str, Any] = {}
    if position is not None:
        try:
            a = _automation(svc)
        except Exception as e:  # noqa: BLE001
            reasons.append(f"automation status unavailable: {type(e).__name__}: {e}")
            a = None
        if a is not None:
            extra["automation"] = {"position": a.position, "lag_events": a.lag_events,
                                   "lag_seconds": round(a.lag_seconds, 3), "parked": a.parked}
            if a.lag_events > MAX_LAG_EVENTS:
                reasons.append(f"automation: {a.lag_events} events behind (at most {MAX_LAG_EVENTS})")
            if a.lag_seconds > MAX_LAG_SECONDS:
                reasons.append(f"automation: {a.lag_seconds:.1f} s behind (at most {MAX_LAG_SECONDS:g} s)")
            if a.parked:
                reasons.append(f"automation: {a.parked} parked event(s)")
        # The Kafka feed (when publishing is on) and the tracked followers: reported, and
        # not ready only for a parked event (a lag is the broker's, not this service's).
        kafka = getattr(svc, "kafka", None)
        if kafka is not None:
            try:
                k = kafka.status()
                extra["kafka"] = {"position": k.position, "lag_events": k.lag_events,
                                  "lag_seconds": round(k.lag_seconds, 3), "parked": k.parked}
                if k.parked:
                    reasons.append(f"kafka: {k.parked} parked event(s)")
            except Exception as e:  # noqa: BLE001
                reasons.append(f"kafka publisher status unavailable: {type(e).__name__}: {e}")
        try:
            followers = _followers(svc)
        except Exception as e:  # noqa: BLE001
            reasons.append(f"follower status unavailable: {type(e).__name__}: {e}")
            followers = []
        if followers:
            extra["followers"] = [{"name": f.name, "position": f.position, "lag_events": f.lag_events,
                                   "parked": f.parked} for f in followers]
            reasons += [f"{f.name}: {f.parked} parked event(s)" for f in followers if f.parked]
    # The analytics projection: this process's follower, reported only (its queries answer
    # for themselves when the file is not current).
    analytics = getattr(svc, "analytics", None)
    if analytics is not None and analytics.stats.is_leader:
        st = analytics.stats
        extra["analytics"] = {"leader": True, "position": st.position, "parked": st.parked,
                              "retries": st.retries}
    return reasons, position, projections, extra


class _Check:
    """One readiness check, run in a thread of its own so /ready answers within its bound."""

    def __init__(self, svc: Any):
        self.done = threading.Event()
        self.result: Readiness = ([], None, [], {})
        threading.Thread(target=self._run, args=(svc,), name="crm-ready-check", daemon=True).start()

    def _run(self, svc: Any) -> None:
        try:
            self.result = _readiness(svc)
        except Exception as e:  # noqa: BLE001 -- a reason, not a crash
            self.result = ([f"readiness check failed: {type(e).__name__}: {e}"], None, [], {})
        finally:
            self.done.set()


class _Checks:
    """At most one check runs at a time: callers while one hangs on the database share it
    (and are answered "not ready" at the bound) instead of stacking threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: _Check | None = None

    def current(self, svc: Any) -> _Check:
        with self._lock:
            if self._running is None or self._running.done.is_set():
                self._running = _Check(svc)
            return self._running




def _check_metrics_token(request: Request, token: str | None) -> None:
    """404 when /metrics is off (no token configured), 401 without the token."""
    if not token:
        raise Problem(404, "metrics are off: set CRM_METRICS_TOKEN to scrape them", code="not-found")
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Problem(401, "send the metrics token as Authorization: Bearer <token>", code="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="crm-metrics"'})


def build_ops_router(metrics: HttpMetrics, metrics_token: str | None = None) -> APIRouter:
    r = APIRouter(tags=["ops"])
    checks = _Checks()

    @r.get("/health", summary="Liveness only: the process answers (no database call; "
           "whether the database answers is /ready's)")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @r.get("/ready", summary="Readiness: event store reachable, read models current, nothing parked",
           responses={503: {"description": "Not ready; `reasons` says why"}})
    def ready(request: Request) -> JSONResponse:
        svc = _services(request)
        check = checks.current(svc)
        if not check.done.wait(READY_WITHIN_SECONDS):
            reasons = [f"event store did not answer within {READY_WITHIN_SECONDS:g} s"]
            return problem(503, "Not ready", reasons[0], code="not-ready", reasons=reasons,
                           event_log_position=None, projections=[])
        reasons, position, projections, extra = check.result
        if reasons:
            return problem(503, "Not ready", "; ".join(reasons), code="not-ready", reasons=reasons,
                           event_log_position=position, projections=projections, **extra)
        return JSONResponse({"status": "ready", "event_log_position": position, "projections": projections,
                             **extra})

    @r.get("/metrics", summary="Prometheus metrics (text exposition format; Bearer CRM_METRICS_TOKEN)",
           response_class=PlainTextResponse,
           responses={401: {"description": "No or wrong metrics token"},
                      404: {"description": "Metrics are off (no CRM_METRICS_TOKEN)"}})
    def metrics_endpoint(request: Request) -> PlainTextResponse:
        _check_metrics_token(request, metrics_token)
        svc = _services(request)
        lines: list[str] = []
        up = True
        try:
            head = int(svc.app.recorder.max_notification_id() or 0)
            lines += family("crm_event_log_head", "gauge", "Highest position in the event log.",
                            [sample("crm_event_log_head", head)])
        except Exception as e:  # noqa: BLE001 -- reported as a metric
            up = False
            log.warning("metrics: event store unreachable", error=str(e))
        if svc.read is not None and up:
            try:
                lines += _projection_metrics(svc.read)
            except Exception as e:  # noqa: BLE001
                up = False
                log.warning("metrics: read-model status unavailable", error=str(e))
        if up:
            try:
                a = _automation(svc)
                if a is not None:
                    lines += _automation_metrics(a)
            except Exception as e:  # noqa: BLE001
                log.warning("metrics: automation status unavailable", error=str(e))
        if up:
            try:
                statuses = _followers(svc)
                if statuses:
                    lines += _follower_metrics(statuses)
            except Exception as e:  # noqa: BLE001
                log.warning("metrics: follower status unavailable", error=str(e))
        analytics = getattr(svc, "analytics", None)
        if analytics is not None:
            lines += _analytics_metrics(analytics)
        kafka = getattr(svc, "kafka", None)
        if kafka is not None and up:
            try:
                lines += _kafka_metrics(kafka)
            except Exception as e:  # noqa: BLE001
                log.warning("metrics: kafka publisher status unavailable", error=str(e))
        lines += family("crm_event_store_up", "gauge", "1 when the event store answered this scrape.",
                        [sample("crm_event_store_up", up)])
        lines += metrics.exposition()
        return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)

    return r
