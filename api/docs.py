"""The API's documentation pages, with every file from this server (no CDN).

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load ``swagger-ui-bundle.js``,
``swagger-ui.css`` and ``redoc.standalone.js`` from ``/docs/assets/``: the files of the
npm packages ``swagger-ui-dist`` and ``redoc`` that the web UI's build copies into
``web/dist/docs`` (``scripts/setup``). Swagger UI is started by ``/docs/init.js`` (a
file, not an inline script: the Content-Security-Policy allows none). Without the build
the pages answer 503 saying how to build it; ``/openapi.json`` works either way.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from api.security import REDOC_CSP

ASSETS = "/docs/assets"
#: The files the pages need, in the assets directory.
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")

SWAGGER_INIT = """\
"use strict";
// Starts Swagger UI on /docs (a file of its own: the page runs no inline script).
window.ui = SwaggerUIBundle({
  url: document.currentScript.dataset.openapi,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // no badge from the public validator: nothing loads from elsewhere
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head><body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js" data-openapi="{openapi}"></script>
</body></html>
"""

REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - ReDoc</title>
</head><body>
<redoc spec-url="{openapi}"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body></html>
"""

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>API docs: assets not built</title></head><body>
<h1>The API docs' files are not built</h1>
<p>This server found no <code>{missing}</code> in <code>{directory}</code>. Run <code>scripts/setup</code>
(it builds <code>web/</code>, which copies Swagger UI and ReDoc into <code>web/dist/docs</code>), or set
<code>CRM_WEB_DIR</code> to a built copy. The API description itself is at <a href="{openapi}">{openapi}</a>.</p>
</body></html>
"""


def install_docs(app: FastAPI, directory: Path | None) -> None:
    """Serve /docs, /redoc and their files from ``directory`` (None: pages say "not built")."""
    title = escape(app.title)
    openapi = escape(app.openapi_url or "/openapi.json")

    def page(template: str, needs: tuple[str, ...], csp: str | None = None) -> Response:
        missing = [f for f in needs if directory is None or not (directory / f).is_file()]
        headers = {"Cache-Control": "no-cache"}
        if csp:
            headers["Content-Security-Policy"] = csp
        if missing:
            return HTMLResponse(NOT_BUILT.format(missing=escape(missing[0]), directory=escape(str(directory)),
                                                 openapi=openapi), status_code=503,
                                headers={"Retry-After": "60", "Cache-Control": "no-store"})
        return HTMLResponse(template.format(title=title, assets=ASSETS, openapi=openapi), headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return page(SWAGGER_PAGE, FILES[:2])

    @app.get("/docs/init.js", include_in_schema=False)
    async def swagger_init() -> Response:
        return Response(SWAGGER_INIT, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return page(REDOC_PAGE, FILES[2:], REDOC_CSP)

    if directory is not None:
        app.mount(ASSETS, StaticFiles(directory=directory, check_dir=False), name="docs-assets")
