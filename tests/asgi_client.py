"""Requests straight to an ASGI app, with no server (for unit tests of the HTTP layer)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
from fastapi import FastAPI


class Client:
    """Requests straight to the ASGI app (no server)."""

    def __init__(self, app: FastAPI):
        self.app = app

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, path, headers=headers)

        result: httpx.Response = anyio.run(go)
        return result

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("GET", path, headers)

    def post(self, path: str, **_: Any) -> httpx.Response:
        return self.request("POST", path)
