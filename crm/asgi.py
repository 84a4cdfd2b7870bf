"""ASGI entry for uvicorn workers (``crm serve`` with CRM_WORKERS > 1)."""

from __future__ import annotations

import atexit
import gc

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
    app = system.http_app()
    settle_heap()
    return app


def settle_heap() -> None:
    """Move everything built at start-up (modules, routes, models: ~125,000 objects) out
    of the garbage collector's sight. A full collection walks every tracked object and
    took 250-300 ms here; one in the middle of the load stalls every request of the
    worker for that long. Objects made later are collected as before."""
    gc.collect()
    gc.freeze()
