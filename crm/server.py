"""How `crm serve` runs uvicorn: whose X-Forwarded-For counts, and how large a request
head may grow before the server stops reading it."""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] brings httptools

from crm.settings import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options from the settings.

    The app decides whom X-Forwarded-For is believed from (CRM_TRUSTED_PROXIES), so
    uvicorn's own rewriting of the client address (from 127.0.0.1 by default) is off.
    The app answers 431 to a head over CRM_MAX_HEADER_BYTES; the server stops reading
    such a head as soon as it passes the limit (431 too), so no client makes it hold
    more."""
    options: dict[str, Any] = {"proxy_headers": False}
    if settings.max_header_bytes > 0:
        options["h11_max_incomplete_event_size"] = settings.max_header_bytes
        options["http"] = "crm.server:HeadLimitedHttpToolsProtocol"
    return options


class _HeadTooLarge(Exception):
    pass


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which keeps every header line it is sent, stopped at
    ``config.h11_max_incomplete_event_size`` bytes of request line and headers (the
    same limit as h11's): 431 problem+json, and the connection is closed.

    Counted twice over, each bounded by the limit: the lines the parser has read (a
    lower bound of what the app counts, so the app answers first when it can), and the
    reads that arrive while a head is still unfinished (a single endless header line)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._head_limit = int(self.config.h11_max_incomplete_event_size or 0)
        self._head_bytes = 0
        self._head_reads = 0
        self._in_head = False
        self._head_over = False

    def data_received(self, data: bytes) -> None:
        if self._head_over:
            return
        continuing = self._in_head  # a head was unfinished before this read
        super().data_received(data)
        if continuing and self._in_head and self._head_limit and not self._head_over:
            self._head_reads += len(data)  # all of it is head: the head is still unfinished
            if self._head_reads > self._head_limit:
                self._head_over = True
                self._send_431()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_reads = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_limit and self._head_bytes > self._head_limit:
            self._head_over = True
            raise _HeadTooLarge  # the parser stops and answers through send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._head_over:
            self._send_431()
        else:
            super().send_400_response(msg)

    def _send_431(self) -> None:
        body = json.dumps({
            "type": "https://crm.example/problems/headers-too-large",
            "title": "Request header fields too large", "status": 431,
            "detail": f"the request line and headers are larger than {self._head_limit} bytes",
            "field": "headers", "max_bytes": self._head_limit}).encode()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/problem+json\r\n")
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
