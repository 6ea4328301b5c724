"""Health and metrics over HTTP: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers 200 whenever the event loop does, so a hung loop fails it. ``/readyz``
answers 200 only when every part the service reports is ``"ok"`` (journal open, watcher running,
backend usable) and 503 otherwise, naming the parts that are not. ``/metrics`` is the Prometheus
text format, with the gauges that are cheaper to compute on demand refreshed first.

The port is open to anyone who can reach it, so the connections it holds are bounded (see
:mod:`transcribed.connections`): at most ``max_connections`` at once (and at most half the
process's descriptor limit), each closed when it sends no complete request head within
``header_timeout_s`` of connecting, or ``keepalive_timeout_s`` after its last answer.

The server only reads what it is given; it never reaches into the service that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import resource
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from transcribed.connections import ConnectionGuard, GuardLimits
from transcribed.errors import StartupError
from transcribed.logs import get_logger
from transcribed.metrics import LoopLagProbe, Metrics

log = get_logger("transcribed.http")

#: Each part of the service and its state: ``"ok"``, or what is wrong with it.
Readiness = Callable[[], Mapping[str, str]]

#: Longest request line, and longest header line, accepted (aiohttp answers 400 beyond).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 64
#: How long a stopping server waits for requests in progress.
SHUTDOWN_TIMEOUT_S = 5.0
#: How long an unread request body is read and dropped after the answer, before closing (so
#: that the client gets the answer rather than a reset).
LINGER_S = 2.0


def _within_descriptor_limit(limits: GuardLimits) -> GuardLimits:
    """At most half the process's descriptors for HTTP clients; the rest are for files."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or limits.max_connections <= soft // 2:
        return limits
    return dataclasses.replace(limits, max_connections=max(1, soft // 2))


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, minus the traceback it logs for every malformed request.

    A request aiohttp cannot parse (a line too long, a bad header, not HTTP at all) is the
    client's fault and is answered with a 4xx; it is logged at debug level, in one line, so that
    a hostile client cannot fill the log with tracebacks. Anything else is logged as before.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            log.debug("http_bad_request", status=error.code, reason=error.message)
            return
        super().log(level, msg, *args, **kwargs)


class HttpServer:
    """An aiohttp server on ``host:port``; ``start()`` binds it, ``close()`` releases it.

    ``limits`` bounds the connections (count and timeouts); the defaults suit a health and
    metrics endpoint and a webhook receiver, and tests shorten them.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: Readiness,
        refresh: Callable[[], None] | None = None,
        routes: Sequence[web.RouteDef] = (),
        limits: GuardLimits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._readiness = readiness
        self._refresh = refresh
        self._routes = list(routes)
        self.limits = limits or GuardLimits()
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self._sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []

    def _app(self, guard: ConnectionGuard) -> web.Application:
        app = web.Application(middlewares=[guard.middleware])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        app.add_routes(self._routes)
        return app

    async def start(self) -> None:
        """Bind and serve; ``StartupError`` (exit 1: a restart may find the port free) when
        the address cannot be used."""
        limits = self.limits = _within_descriptor_limit(self.limits)
        guard = ConnectionGuard(limits, self._metrics)
        runner = web.AppRunner(
            self._app(guard),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            # aiohttp's own idle timer: a second line, behind the guard's.
            keepalive_timeout=2 * max(limits.header_timeout_s, limits.keepalive_timeout_s),
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            lingering_time=LINGER_S,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
        )
        await runner.setup()
        try:
            self._sockets = await self._bind()
        except OSError as exc:
            await runner.cleanup()
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
            raise StartupError(
                f"cannot listen on {self.host}:{self.port} ({reason}); "
                "set http.listen to another HOST:PORT, or to off",
                part="http",
            ) from exc
        self._runner = runner
        self._guard = guard
        assert runner.server is not None
        self.port = int(self._sockets[0].getsockname()[1])
        self._tasks = [
            asyncio.create_task(guard.serve(sock, runner.server), name=f"http-accept-{i}")
            for i, sock in enumerate(self._sockets)
        ]
        self._tasks.append(asyncio.create_task(LoopLagProbe(self._metrics).run(), name="loop-lag"))
        log.info("http_started", url=self.url, max_connections=self.limits.max_connections)

    async def _bind(self) -> list[socket.socket]:
        """One listening socket per address ``host`` resolves to (as ``create_server`` does)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self.limits.backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    @property
    def serving(self) -> bool:
        """The endpoint is bound and accepting connections."""
        return self._runner is not None and all(not task.done() for task in self._tasks)

    async def serve(self, stop: asyncio.Event) -> None:
        """Until ``stop``: watch the endpoint's own tasks (accepting connections, the loop
        probe); raises when one ends, for the daemon's supervision: a dead endpoint means no
        health checks, no metrics and no webhooks."""
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                [*self._tasks, stopping], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if stop.is_set():
            return
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        raise OSError(f"the HTTP endpoint on {self.url} stopped listening")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections held now (accepted and not yet closed)."""
        return self._guard.open_count if self._guard is not None else 0

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- handlers --------------------------------------------------------------------------
    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        parts = dict(self._readiness())
        ready = all(state == "ok" for state in parts.values())
        body = {"status": "ok" if ready else "unavailable", "checks": parts}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics_text(self, _request: web.Request) -> web.Response:
        if self._refresh is not None:
            self._refresh()
        response = web.Response(body=self._metrics.render())
        # aiohttp's content_type setter refuses parameters; set the whole header instead.
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
