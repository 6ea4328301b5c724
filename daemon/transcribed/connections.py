"""Bounds on the HTTP endpoint's connections, so that no client can exhaust descriptors.

aiohttp keeps a connection open for an hour by default, and accepts as many as arrive. Here the
server accepts connections itself, and:

- holds at most ``max_connections`` at once. When all are taken, the longest-idle connection
  (one with no request in progress: quiet, between requests, or still sending its request
  head) is closed to make room, once it has been idle ``evict_idle_s``. If none qualifies,
  the new connection waits, and the ones behind it wait in the kernel's listen backlog, which
  costs no descriptor, until a connection ends.
- closes a connection that has not sent a complete request head ``header_timeout_s`` after
  connecting, or ``keepalive_timeout_s`` after its last answer. A request in progress is not
  timed out here; its handler bounds its own body reads.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from transcribed.logs import get_logger
from transcribed.metrics import Metrics

#: accept() errors that pass: out of descriptors or memory, a client gone before it was taken.
_PASSING_ACCEPT_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
log = get_logger("transcribed.http")

#: Pause before accepting again after the system refused (out of descriptors, for one).
ACCEPT_BACKOFF_S = 0.5


@dataclass(frozen=True)
class GuardLimits:
    max_connections: int = 64
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    evict_idle_s: float = 1.0
    backlog: int = 128


class _Conn:
    """One accepted connection: aiohttp's handler, and whether a request is in progress."""

    __slots__ = ("busy", "handler", "idle_since", "timer")

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler
        self.busy = 0
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.handler.force_close()


class _Tracked(asyncio.Protocol):
    """aiohttp's handler, and a call back to the guard when the connection ends."""

    def __init__(self, inner: RequestHandler, lost: Callable[[RequestHandler], None]) -> None:
        self._inner = inner
        self._lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._lost(self._inner)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """Accepts connections for an aiohttp ``Server`` within :class:`GuardLimits`."""

    def __init__(self, limits: GuardLimits, metrics: Metrics) -> None:
        self.limits = limits
        self._metrics = metrics
        self._conns: dict[RequestHandler, _Conn] = {}
        #: Set when a connection ends or goes idle: ``_make_room`` looks again.
        self._changed = asyncio.Event()
        self._full_logged = False
        metrics.http_connections.set_function(lambda: len(self._conns))

    @property
    def open_count(self) -> int:
        return len(self._conns)

    async def serve(self, sock: socket.socket, server: web.Server) -> None:
        """Accept on ``sock`` until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _PASSING_ACCEPT_ERRORS:
                    raise  # the listening socket itself is gone: the daemon's supervision acts
                # Out of descriptors or buffers (another part of the process, or the system):
                # back off and accept again, as asyncio's own server does.
                log.warning("http_accept_failed", error=str(exc))
                await asyncio.sleep(ACCEPT_BACKOFF_S)
                continue
            try:
                await self._make_room()
            except BaseException:
                client.close()
                raise
            handler = server()
            conn = _Conn(handler)
            self._conns[handler] = conn
            try:
                await loop.connect_accepted_socket(
                    functools.partial(_Tracked, handler, self._forget), client
                )
            except OSError as exc:  # the client left already
                self._forget(handler)
                client.close()
                log.debug("http_connection_failed", error=str(exc))
                continue
            if handler in self._conns and conn.timer is None and not conn.busy:
                self._set_idle(conn)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks the connection busy while its request is handled (no timeout, no eviction)."""
        conn = self._conns.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.busy += 1
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            if not conn.busy and conn.handler in self._conns:
                self._set_idle(conn, self.limits.keepalive_timeout_s)
                self._changed.set()  # one more idle connection that may make room

    # -- bookkeeping -----------------------------------------------------------------------
    def _set_idle(self, conn: _Conn, timeout_s: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        deadline = conn.idle_since + (timeout_s or self.limits.header_timeout_s)
        conn.timer = loop.call_at(deadline, self._expire, conn)

    def _expire(self, conn: _Conn) -> None:
        conn.timer = None
        if not conn.busy:
            self._metrics.http_connections_closed.labels(reason="timeout").inc()
            conn.close()

    def _forget(self, handler: RequestHandler) -> None:
        conn = self._conns.pop(handler, None)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self._changed.set()

    async def _make_room(self) -> None:
        """Return once there is room for one more connection, closing an idle one if due."""
        loop = asyncio.get_running_loop()
        while len(self._conns) >= self.limits.max_connections:
            if not self._full_logged:
                self._full_logged = True
                log.warning("http_connections_full", max_connections=self.limits.max_connections)
            self._changed.clear()
            idle = [c for c in self._conns.values() if not c.busy and c.handler.transport]
            oldest = min(idle, key=lambda c: c.idle_since, default=None)
            wait_s: float | None = None
            if oldest is not None:
                wait_s = oldest.idle_since + self.limits.evict_idle_s - loop.time()
                if wait_s <= 0:
                    self._metrics.http_connections_closed.labels(reason="evicted").inc()
                    oldest.close()
                    wait_s = None
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            except TimeoutError:
                continue
        if self._full_logged and len(self._conns) < self.limits.max_connections // 2:
            self._full_logged = False
