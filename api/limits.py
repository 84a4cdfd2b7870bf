"""Limits that keep one caller from starving the others: request head and body size, and token
buckets per caller (principal, or client address when unauthenticated) and per sign-in
attempt (username and address)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem, problem

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class Rate:
    """A token bucket's refill per second and size; ``per_second <= 0``: no limit."""

    per_second: float
    burst: float

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0


class TokenBuckets:
    """One bucket per key, in this process (a process each sees its own share)."""

    def __init__(self, rate: Rate, *, monotonic: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000):
        self.rate = rate
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take one token; 0 if there was one, else the seconds until there will be."""
        if self.rate.unlimited:
            return 0.0
        now = self._monotonic()
        burst = max(self.rate.burst, 1.0)
        with self._lock:
            tokens, at = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - at) * self.rate.per_second)
            if tokens >= 1.0:
                self._store(key, (tokens - 1.0, now))
                return 0.0
            self._store(key, (tokens, now))
            return (1.0 - tokens) / self.rate.per_second

    def _store(self, key: str, value: tuple[float, float]) -> None:
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._prune()
        self._buckets[key] = value

    def _prune(self) -> None:
        # Full buckets hold nothing worth remembering.
        now = self._monotonic()
        burst = max(self.rate.burst, 1.0)
        self._buckets = {k: (t, a) for k, (t, a) in self._buckets.items()
                         if t + (now - a) * self.rate.per_second < burst}
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()


def _too_many(wait: float, detail: str, field: str | None = None) -> Problem:
    seconds = max(1, math.ceil(wait))
    return Problem(429, f"{detail}; retry in {seconds} s", code="rate-limited", title="Too many requests",
                   field=field, headers={"Retry-After": str(seconds)}, retry_after=seconds)


class RateLimits:
    """The API's rate limits: per caller, and for sign-in attempts."""

    def __init__(self, caller: Rate, login: Rate, *, monotonic: Callable[[], float] = time.monotonic):
        self.callers = TokenBuckets(caller, monotonic=monotonic)
        self.logins = TokenBuckets(login, monotonic=monotonic)

    def check_caller(self, key: str) -> None:
        wait = self.callers.take(key)
        if wait:
            raise _too_many(wait, "too many requests")

    def check_login(self, username: str, address: str) -> None:
        """Sign-in attempts: per username and address, and per address (any username)."""
        wait = self.logins.take(f"user:{username.strip().lower()}|{address}")
        if wait:
            raise _too_many(wait, "too many sign-in attempts for this user", field="username")
        self.check_caller(f"address:{address}")


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413 problem+json, by Content-Length
    or, for chunked bodies, by counting (at most ``max_bytes`` are held)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                break
        if length is not None:
            if length > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        # No length given: read the body (up to the limit) before the app sees it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Request body too large",
                           f"the request body is larger than {self.max_bytes} bytes",
                           code="body-too-large", field="body", max_bytes=self.max_bytes,
                           headers={"Connection": "close"})
        await response(scope, receive, send)


def head_bytes(scope: Scope) -> int:
    """The size of a request's head as sent: request line, header lines, blank line."""
    target = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string") or b""
    size = len(scope.get("method", "")) + 1 + len(target) + (1 + len(query) if query else 0) + 11
    for name, value in scope.get("headers", []):
        size += len(name) + 2 + len(value) + 2
    return size + 2


class HeaderSizeLimit:
    """Refuses requests whose head (request line and headers) is over ``max_bytes`` with
    431 problem+json, before anything reads them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_HEADER_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0 or head_bytes(scope) <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        response = problem(431, "Request header fields too large",
                           f"the request line and headers are larger than {self.max_bytes} bytes",
                           code="headers-too-large", field="headers", max_bytes=self.max_bytes,
                           headers={"Connection": "close"})
        await response(scope, receive, send)
