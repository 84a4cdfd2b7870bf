"""ASGI entry for uvicorn workers (``crm serve`` with CRM_WORKERS > 1)."""

from __future__ import annotations

import atexit

from fastapi import FastAPI

from crm import bootstrap
from crm.logging import configure
from crm.settings import Settings


def create_app() -> FastAPI:
    """Build one worker's system from the settings (the parent passes the database URL)."""
    settings = Settings()
    configure(settings.log_format, settings.log_level)
    system = bootstrap.build(settings)
    atexit.register(system.close)
    return system.http_app()
