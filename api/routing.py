"""An index in front of FastAPI's route search.

FastAPI looks for a request's route by trying every route of every included router in
order, with bookkeeping for each try: 100–400 µs a request here (~15 % of a worker's
time under load, more than a list query's own Python). The route a request matches
depends only on its method and path, and two paths that differ only in an id (a UUID
segment) match the same route, since no route has a UUID written into its path. So the
first search for a (method, path shape) is FastAPI's own order of tries, done once, and
remembered: later requests of that shape go straight to the route that matched, handled
exactly as FastAPI's router handles a match. Anything else (no full match: a 404, a 405,
a redirect) goes through FastAPI's router unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

#: A path segment that is a UUID as clients write ids (Starlette's ``uuid`` convertor
#: takes only lower-case ones: upper-case ones are left as they are, a shape of their own).
_UUID = re.compile(r"(?<=/)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?=/|$)")
#: FastAPI's own steps for a matched route (private: without them, no index).
_STEPS = ("_apply_router_form_limits", "_update_scope", "_route_selected")
MAX_SHAPES = 4096


def shape(path: str) -> str:
    """The path with every UUID segment written as ``{uuid}``."""
    return _UUID.sub("{uuid}", path) if "-" in path else path


class RouteIndex:
    """The router's ASGI entry with the remembered (method, path shape) -> route."""

    def __init__(self, router: Any, search: ASGIApp):
        self.router = router
        self.search = search  # FastAPI's router as it was
        self._index: dict[tuple[str, str, str], int] = {}
        self._routes_seen: tuple[int, int] = (0, -1)
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.search(scope, receive, send)
            return
        routes = self.router.routes
        if self._routes_seen != (id(routes), len(routes)):  # routes added since (the web UI)
            self._index.clear()
            self._routes_seen = (id(routes), len(routes))
        key = (scope["method"], scope.get("root_path", ""), shape(scope["path"]))
        at = self._index.get(key)
        if at is None:
            at = next((i for i, route in enumerate(routes) if route.matches(scope)[0] == Match.FULL), -1)
            if len(self._index) >= MAX_SHAPES:
                self._index.clear()
            self._index[key] = at
        if at < 0:
            await self.search(scope, receive, send)
            return
        route = routes[at]
        match, child_scope = route.matches(scope)
        if match != Match.FULL:  # not expected: ask the router
            await self.search(scope, receive, send)
            return
        self.hits += 1
        fastapi_routing._apply_router_form_limits(scope, self.router.form_limits)
        if "router" not in scope:
            scope["router"] = self.router
        fastapi_routing._update_scope(scope, child_scope)
        fastapi_routing._route_selected(  # type: ignore[attr-defined]
            scope=scope, path=getattr(route, "path_format", None), mount=isinstance(route, Mount))
        await route.handle(scope, receive, send)


def install_route_index(app: FastAPI) -> bool:
    """Put a ``RouteIndex`` in front of the app's router; False (and nothing changed) when
    this FastAPI has not the steps it needs or the router has middleware of its own."""
    router = app.router
    if not all(hasattr(fastapi_routing, step) for step in _STEPS) or not hasattr(router, "form_limits"):
        return False
    if router.middleware_stack != router.app:
        return False
    router.middleware_stack = RouteIndex(router, router.middleware_stack)
    return True
