"""Security headers on every answer of the process (API, web UI, docs, errors).

* ``Content-Security-Policy``: scripts, styles, fonts, connections and frames from the
  server's own origin only (no inline script, no ``eval``), images also as ``data:`` URLs,
  no plugins (``object-src 'none'``), no ``<base>``, and no page of this server inside a
  frame (``frame-ancestors 'none'``). The ReDoc page (``/redoc``) also allows inline
  styles (ReDoc writes its styles as ``<style>`` elements) and its search worker from a
  ``blob:`` URL; its scripts are still the server's own files only.
* ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
  ``X-Frame-Options: DENY`` (for browsers that know no ``frame-ancestors``).

A route that sets one of these headers itself keeps its own.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self';"
       " connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
#: ReDoc's page: its styled components write <style> elements, its search runs in a blob: worker.
REDOC_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
             " font-src 'self'; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none';"
             " frame-ancestors 'none'; form-action 'self'")

HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeaders:
    """Adds ``HEADERS`` to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
