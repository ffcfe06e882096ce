"""Connection limits the bridge enforces below the application: what uvicorn does not.

- a cap on open connections: at the cap, a new connection evicts the oldest connection that is
  not serving a request: one that has not yet delivered a complete request head (a slowloris, a
  half-open client) or one idle between keep-alive requests; when every connection is busy with
  a request, the new one gets a 503 and is closed;
- a request-head deadline: a connection must deliver a complete request head within
  `header_timeout_s` of connecting (or of the first byte of a later keep-alive request), or it
  is dropped. A connection that finishes TLS and sends nothing is dropped too;
- a request-body deadline: a body announced by the head must arrive within `body_timeout_s` of
  the head, or the connection is dropped (the application may already have answered);
- a TLS handshake deadline (`ssl_handshake_timeout` on the listening server, which uvicorn does
  not expose), through the event loop class `loop_factory` returns.

Idle keep-alive between requests stays uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger("s2_bridge.netguard")

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 19\r\nconnection: close\r\nretry-after: 1\r\n\r\nService Unavailable"
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap and request-head and body deadlines.

    Use `guarded_protocol()` to get a subclass carrying the limits."""

    max_connections: int = 4096
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # connections serving no request (waiting for a complete head, or idle between keep-alive
    # requests), oldest first: the ones a newcomer may evict (shared per class)
    evictable: OrderedDict[GuardedHttpProtocol, None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_one():
            log.warning("connection cap %d reached: refusing a connection", self.max_connections)
            transport.write(_REFUSED)
            transport.close()
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        self._body_done()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._await_head()

    def on_headers_complete(self) -> None:
        self._head_done()
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_done()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until the next request (uvicorn armed its keep-alive timer): evictable.
        if not self.transport.is_closing() and self.timeout_keep_alive_task is not None:
            self.evictable[self] = None

    def _await_head(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)
        self.evictable[self] = None

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.evictable.pop(self, None)

    def _body_done(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _timed_out(self) -> None:
        self._head_timer = self._body_timer = None
        self._drop()

    def _drop(self) -> None:
        self._head_done()
        self._body_done()
        if not self.transport.is_closing():
            self.transport.abort()  # a slow client gets no graceful TLS close to stall on
        self.connections.discard(self)

    def _evict_one(self) -> bool:
        """Drop the oldest connection serving no request (not this one)."""
        for victim in self.evictable:
            if victim is not self:
                victim._drop()
                return True
        return False


def guarded_protocol(max_connections: int, header_timeout_s: float, body_timeout_s: float) -> type[GuardedHttpProtocol]:
    """A protocol class for one server: its limits and its own registry of evictable connections."""
    return type(
        "S2HttpProtocol",
        (GuardedHttpProtocol,),
        {
            "max_connections": max_connections,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "evictable": OrderedDict(),
        },
    )


def loop_factory(tls_handshake_timeout_s: float) -> type[asyncio.AbstractEventLoop]:
    """An event loop class whose TLS servers drop a handshake that has not finished in time."""
    base: type[asyncio.AbstractEventLoop] = uvloop.Loop if uvloop is not None else asyncio.SelectorEventLoop

    class HandshakeBoundLoop(base):  # type: ignore[misc,valid-type]
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", tls_handshake_timeout_s)
            return await super().create_server(*args, **kwargs)

    return HandshakeBoundLoop
