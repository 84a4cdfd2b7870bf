"""The web UI: the built single-page app (web/dist) served at ``/`` beside the API.

A path the API does not answer is a file of the build, or, for the app's own routes
(``/customers/<id>``, ``/pipeline``...), ``index.html``: the app reads the address.
Anything else is a 404 as before.
Paths under ``/api/`` never fall back: an unknown API path stays a 404 problem. The UI
talks only to the public ``/api/v1`` routes with the signed-in user's token.

When the build is missing, the pages answer 503 with a page that says how to build it
(``scripts/setup``), never a blank page; the API works either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

log = structlog.get_logger("crm.web")

#: The first segments of the app's own routes (web/src/main.tsx): answered with its page.
CLIENT_ROUTES = frozenset({"", "customers", "pipeline", "service", "tasks", "dashboard", "audit"})
#: Paths of the API and of operations: never answered with the app's page.
API_PREFIXES = ("api/", "docs", "redoc", "openapi.json", "health", "ready", "metrics")

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CRM: web UI not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>The web UI is not built</h1>
<p>This server found no <code>index.html</code> in <code>{directory}</code>.
Run <code>scripts/setup</code> (it runs <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>),
or set <code>CRM_WEB_DIR</code> to a built copy. The API itself is up: <a href="/docs">/docs</a>.</p>
</body></html>
"""


def _api_path(path: str) -> bool:
    return path == "api" or path.startswith(API_PREFIXES)


def is_built(directory: Path) -> bool:
    return (directory / "index.html").is_file()


class SinglePageApp(StaticFiles):
    """Static files of the build, with ``index.html`` for the app's client routes."""

    def __init__(self, directory: Path):
        super().__init__(directory=directory, html=True, check_dir=False)
        self.root = directory

    async def check_config(self) -> None:
        if is_built(self.root):  # else every page answers the "not built" page
            await super().check_config()

    async def get_response(self, path: str, scope: Any) -> Response:
        if _api_path(path):
            raise HTTPException(404)  # an API path no route answered: the API's 404
        if not is_built(self.root):
            if scope["method"] not in ("GET", "HEAD"):
                raise HTTPException(405, headers={"Allow": "GET, HEAD"})
            return HTMLResponse(NOT_BUILT.format(directory=self.root), status_code=503,
                                headers={"Retry-After": "60", "Cache-Control": "no-store"})
        try:
            response = await super().get_response(path, scope)
            is_page = path in ("", ".", "index.html")
        except HTTPException as e:
            if e.status_code != 404 or path.strip("/").split("/")[0] not in CLIENT_ROUTES:
                raise  # a missing asset or an unknown path is a 404
            response = await super().get_response("index.html", scope)
            is_page = True
        if is_page:
            # The page names the hashed assets of the current build: always ask again.
            response.headers["Cache-Control"] = "no-cache"
        elif path.startswith("assets/"):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


class _Label:
    path = "/{web_ui}"


WEB_ROUTE = _Label()


class _WebMount(Mount):
    """Mounted at ``/`` but matching only the UI's paths (its routes, its assets, files at
    its root), so every other answer (an API 404, or a 405 for a path served with other
    methods) stays exactly what it was."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = str(scope.get("path", "")).lstrip("/")
        first = path.split("/")[0]
        ui = first in CLIENT_ROUTES or first == "assets" or ("/" not in path and "." in path)
        if scope["type"] == "http" and (_api_path(path) or not ui):
            return Match.NONE, {}  # the router's own 404 (or 405), as without the UI
        match, child = super().matches(scope)
        if match == Match.FULL:
            child["route"] = WEB_ROUTE  # the metrics' route label of every UI request
        return match, child


def mount_web_ui(app: FastAPI, directory: Path) -> None:
    """Serve the built UI from ``directory`` at ``/`` (after every API route)."""
    if not is_built(directory):
        log.error("the web UI is not built; / answers 503 until it is (run scripts/setup)",
                  directory=str(directory))
    app.router.routes.append(_WebMount("/", app=SinglePageApp(directory), name="web"))
