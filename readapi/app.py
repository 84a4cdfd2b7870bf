"""The FastAPI application: routes, problem+json errors, correlation ids."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from readapi import problems
from readapi.middleware import CorrelationMiddleware
from readapi.routes import Services, build_router


def create_app(services: Services, *, title: str = "CRM core API") -> FastAPI:
    """The HTTP app over already-built services (the composition root builds them)."""
    app = FastAPI(
        title=title,
        version="1",
        description="Event-sourced CRM core. Every change is an event with who, when and why.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.services = services
    problems.install(app)
    app.include_router(build_router())

    @app.get("/health", tags=["ops"], summary="Liveness and event-store reachability")
    def health() -> JSONResponse:
        position = services.app.recorder.max_notification_id() or 0
        return JSONResponse({"status": "ok", "event_log_position": position})

    app.add_middleware(CorrelationMiddleware)
    return app
