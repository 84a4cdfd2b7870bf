"""The FastAPI application: the command routes (writeapi/), the query routes (readapi/) and
the HTTP frame around them (api/: auth, problem+json errors, correlation ids, limits, metrics)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI

from api import problems
from readapi.analytics import build_analytics_router
from api.auth import Authenticator
from readapi.automation_routes import build_automation_router
from api.docs import install_docs
from api.signin import build_signin_router
from readapi.people import build_people_router
from readapi.records import build_records_router
from writeapi.identity import build_identity_router
from api.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, BodySizeLimit, HeaderSizeLimit, Rate, RateLimits
from writeapi.erasure import build_erasure_router
from api.metrics import HttpMetrics, MetricsMiddleware, build_ops_router
from api.middleware import CorrelationMiddleware
from readapi.queries import build_read_router
from readapi.replay_routes import build_replay_router
from api.routing import install_route_index
from api.services import Services
from writeapi.commands import build_router
from readapi.schemas import build_schemas_router
from api.security import SecurityHeaders
from api.sessions import build_session_router
from api.text import check_parameters


#: Limits when the composition root names none: more than a busy person or system sends.
DEFAULT_CALLER_RATE = Rate(per_second=100.0, burst=1000.0)
DEFAULT_LOGIN_RATE = Rate(per_second=0.2, burst=10.0)


def create_app(services: Services, *, title: str = "CRM core API",
               authenticator: Authenticator | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, metrics_token: str | None = None,
               session_cookie_secure: bool | None = None, docs_dir: Path | None = None) -> FastAPI:
    """The HTTP app over already-built services (the composition root builds them).

    ``metrics_token``: the Bearer token /metrics asks for (None: /metrics is off);
    ``session_cookie_secure``: the web UI's session cookies always ``Secure`` (True),
    never (False), or over HTTPS only (None); ``docs_dir``: the built Swagger UI and
    ReDoc files of /docs and /redoc."""
    app = FastAPI(
        title=title,
        version="1",
        description="Event-sourced CRM core. Every change is an event with who, when and why.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # every route: its query and path parameters are accepted text (api.text)
        dependencies=[Depends(check_parameters)],
    )
    app.state.services = services
    app.state.session_cookie_secure = session_cookie_secure
    app.state.authenticator = authenticator or Authenticator(
        services.app, services.tokens, RateLimits(DEFAULT_CALLER_RATE, DEFAULT_LOGIN_RATE))
    metrics = HttpMetrics()
    app.state.http_metrics = metrics
    problems.install(app)
    app.include_router(build_ops_router(metrics, metrics_token))
    install_docs(app, docs_dir)
    app.include_router(build_signin_router())
    app.include_router(build_people_router())
    app.include_router(build_identity_router())
    app.include_router(build_session_router())
    app.include_router(build_replay_router())  # before the record routes: /{id}/timeline
    app.include_router(build_router())
    app.include_router(build_records_router())
    app.include_router(build_read_router())
    app.include_router(build_schemas_router())
    app.include_router(build_analytics_router())
    app.include_router(build_automation_router())
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.include_router(build_erasure_router())
    app.add_middleware(HeaderSizeLimit, max_bytes=max_header_bytes)  # before anything reads them
    app.add_middleware(CorrelationMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times everything
    install_route_index(app)  # after every include (routes added later are seen too)
    # Outside even the error handler of last resort: its 500s carry the headers too.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(build_stack())  # type: ignore[method-assign]
    return app
