"""Health and metrics over HTTP: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers 200 whenever the event loop does, so a hung loop fails it. ``/readyz``
answers 200 only when every part the service reports is ``"ok"`` (journal open, watcher running,
backend usable) and 503 otherwise, naming the parts that are not. ``/metrics`` is the Prometheus
text format, with the gauges that are cheaper to compute on demand refreshed first.

The server only reads what it is given; it never reaches into the service that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable, Mapping, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from transcribed.errors import StartupError
from transcribed.logs import get_logger
from transcribed.metrics import Metrics

log = get_logger("transcribed.http")

#: Each part of the service and its state: ``"ok"``, or what is wrong with it.
Readiness = Callable[[], Mapping[str, str]]
#: How often :meth:`HttpServer.serve` checks that the endpoint still listens.
SERVE_CHECK_S = 1.0


class HttpServer:
    """An aiohttp server on ``host:port``; ``start()`` binds it, ``close()`` releases it."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: Readiness,
        refresh: Callable[[], None] | None = None,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._readiness = readiness
        self._refresh = refresh
        self._routes = list(routes)
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        app.add_routes(self._routes)
        return app

    async def start(self) -> None:
        """Bind and serve; ``StartupError`` (exit 1: a restart may find the port free) when
        the address cannot be used."""
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
            raise StartupError(
                f"cannot listen on {self.host}:{self.port} ({reason}); "
                "set http.listen to another HOST:PORT, or to off",
                part="http",
            ) from exc
        self._runner = runner
        # With port 0 the system picks one; report the real one.
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        log.info("http_started", url=self.url)

    @property
    def serving(self) -> bool:
        """The endpoint is bound and listening."""
        return self._runner is not None and bool(self._runner.sites)

    async def serve(self, stop: asyncio.Event) -> None:
        """Until ``stop``: check once a second that the endpoint still listens; raises
        ``OSError`` when it stopped (for the daemon's supervision: a dead endpoint means no
        health checks, no metrics and no webhooks)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SERVE_CHECK_S)
            if not stop.is_set() and not self.serving:
                raise OSError(f"the HTTP endpoint on {self.url} stopped listening")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
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
