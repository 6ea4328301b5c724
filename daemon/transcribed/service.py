"""The daemon's lifecycle, top to bottom: :meth:`Service.startup`, :meth:`Service.main_loop`,
:meth:`Service.shutdown`.

- **startup** opens every resource on one ``AsyncExitStack``, so whatever opened is closed in
  reverse order however the run ends: the folders, the journal (its lock before anything in the
  folders is touched), the HTTP endpoint, the backend, then the pool and the watcher.
- **main_loop** supervises every long-running part: the intake (watcher), the pool, the HTTP
  endpoint and the backend's own tasks (status sweeper, local engine supervisor). A part that
  ends while it should run is logged as ``component_failed`` with its error, ``/readyz`` turns
  503 naming it, the watchdog is no longer fed, and the run ends with exit code 1 so that the
  service manager restarts the daemon. Nothing dies quietly.
- **shutdown**: the first SIGTERM or SIGINT stops intake and lets in-flight steps reach a
  checkpoint within ``grace_s``; the journal resumes whatever is left on the next start. A
  second signal cuts that drain short, which is just as safe for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from transcribed.backends import Backend
from transcribed.backends.choice import make_backend
from transcribed.config import Settings
from transcribed.errors import (
    AuthError,
    ComponentFailedError,
    ConfigError,
    ExitCode,
    StartupError,
)
from transcribed.folders import own_folders, prepare_folders
from transcribed.http import HttpServer
from transcribed.journal import Journal
from transcribed.logs import get_logger, register_secret
from transcribed.metrics import Metrics
from transcribed.outputs import Outputs
from transcribed.pool import Pool
from transcribed.progress import Counts, ProgressDisplay
from transcribed.systemd import Notifier
from transcribed.watcher import Watcher

log = get_logger("transcribed.service")


@contextlib.contextmanager
def _step(part: str) -> Iterator[None]:
    """Name the part a ``StartupError`` raised here came from, unless it names one itself."""
    try:
        yield
    except StartupError as exc:
        if exc.part is None:
            exc.part = part
        raise


class Service:
    """One daemon run. ``await Service(settings).run()`` returns the process exit code.

    ``notifier`` speaks systemd's notify protocol (a no-op by default); ``progress`` shows a live
    display on the terminal (``--once`` only).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        once: bool = False,
        notifier: Notifier | None = None,
        progress: bool = False,
    ) -> None:
        self.settings = settings
        self.once = once
        self.notifier = notifier or Notifier()
        self.progress = progress and once
        self.metrics = Metrics()
        #: Set to stop: by a signal, or when a part fails.
        self.stop = asyncio.Event()
        #: Set by a second signal: the drain ends at once.
        self.force = asyncio.Event()
        self.watcher_ready = asyncio.Event()
        self.http: HttpServer | None = None
        #: The secret the service sends back with each webhook (kept in the journal).
        self.webhook_secret: str | None = None
        self.journal: Journal | None = None
        self.backend: Backend | None = None
        self.pool: Pool | None = None
        self.watcher: Watcher | None = None
        self.backend_ready = False
        #: The long-running parts, by name, while the main loop supervises them.
        self.parts: dict[str, asyncio.Task[Any]] = {}
        #: Parts that failed, with what went wrong.
        self.failed: dict[str, str] = {}
        self._signals = 0
        self._extra_tasks: list[asyncio.Task[Any]] = []

    # -- health, metrics and status (http, systemd, progress) ------------------------------
    def readiness(self) -> dict[str, str]:
        """Each part /readyz checks: ``"ok"``, or what is wrong with it."""
        journal_open = self.journal is not None and self.journal.is_open
        stopping = self.stop.is_set()
        if self.watcher is None:
            intake = "not running"
        elif stopping and not self.watcher.running:
            intake = "stopping"
        else:
            intake = self.watcher.health()
        parts = {
            "journal": "ok" if journal_open else "not open",
            "intake": intake,
            "backend": self.backend.health() if self.backend_ready and self.backend else "starting",
        }
        for name, error in self.failed.items():
            parts[name] = f"failed: {error}"
        return parts

    def alive(self) -> bool:
        """Every supervised part is running and none has failed (the watchdog's condition)."""
        return not self.failed and all(not task.done() for task in self.parts.values())

    def counts(self) -> Counts:
        """This run's outcomes and the work still waiting (for metrics, status and progress)."""
        journal, pool, watcher = self.journal, self.pool, self.watcher
        if journal is None or not journal.is_open:
            return Counts()
        in_flight = pool.in_flight if pool is not None else 0
        waiting = max(0, journal.pending_count() - in_flight)
        audio_s = self.metrics.registry.get_sample_value("transcribed_audio_seconds_total")
        return Counts(
            done=pool.stats.done if pool is not None else 0,
            failed=pool.stats.failed if pool is not None else 0,
            in_flight=in_flight,
            waiting=waiting + (watcher.unsettled if watcher is not None else 0),
            audio_s=audio_s or 0.0,
        )

    def _refresh_metrics(self) -> None:
        counts = self.counts()
        self.metrics.jobs_in_flight.set(counts.in_flight)
        self.metrics.queue_depth.set(counts.waiting)

    def _status(self) -> str:
        if self.failed:
            return f"failed: {', '.join(self.failed)}"
        return f"{'processing' if self.once else 'watching'}: {self.counts().summary()}"

    def _oldest_waiting_age(self) -> float:
        if self.journal is None or not self.journal.is_open:
            return 0.0
        oldest = self.journal.oldest_waiting_at()
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    # -- signals ---------------------------------------------------------------------------
    def request_stop(self, signum: int | None = None) -> None:
        """First call: stop and drain. Second call: end the drain now."""
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signum)
            self.force.set()
            self.stop.set()
            return
        log.info("shutdown_requested", signal=signum, grace_s=self.settings.daemon.grace_s)
        self.stop.set()

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
            stack.callback(loop.remove_signal_handler, signum)

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> int:
        """Start up, serve until stopped or until a part fails, shut down; the exit code."""
        if self.settings.assemblyai.api_key is not None:
            register_secret(self.settings.assemblyai.api_key.get_secret_value())
        async with contextlib.AsyncExitStack() as stack:
            try:
                await self.startup(stack)
            except (StartupError, AuthError) as exc:
                return self._startup_failed(exc)
            return await self.main_loop()

    def _startup_failed(self, exc: StartupError | AuthError) -> int:
        part = (exc.part if isinstance(exc, StartupError) else "backend") or "config"
        code = exc.exit_code if isinstance(exc, StartupError) else ExitCode.CONFIG
        self.failed[part] = str(exc)
        log.error("component_failed", part=part, phase="startup", error=str(exc))
        log.error("startup_failed", part=part, error=str(exc), exit_code=int(code))
        self.notifier.status(f"startup failed: {exc}")
        return code

    async def startup(self, stack: contextlib.AsyncExitStack) -> None:
        """Open every resource on ``stack``; raises ``StartupError`` or ``AuthError``."""
        settings = self.settings
        with _step("folders"):
            folders = prepare_folders(settings)
        with _step("journal"):
            # The inbox's lock and the journal's, then the journal checked against the
            # folders, and only then stale temp files cleared: a second daemon refused here
            # touches nothing of the running one's.
            self.journal = journal = stack.enter_context(
                own_folders(
                    folders,
                    Journal(folders["state_dir"]),
                    accept_empty_journal=settings.daemon.accept_empty_journal,
                )
            )
        if (
            settings.resolved_backend() == "assemblyai"
            and settings.assemblyai.webhook_url
            and settings.http.address(once=self.once) is not None
        ):
            self.webhook_secret = journal.secret("webhook")
            register_secret(self.webhook_secret)
        with _step("backend"):
            self.backend = backend = make_backend(settings, self.metrics, self.webhook_secret)
        with _step("http"):
            await self._start_http(stack, backend)
        self._install_signals(stack)
        self.notifier.status(f"starting the {backend.name} backend")
        stack.push_async_callback(backend.close)
        with _step("backend"):
            await backend.start()
        self.backend_ready = True
        outputs = Outputs(
            folders["outbox"], folders["done"], folders["failed"], settings.output.formats
        )
        self.pool = Pool(
            journal,
            backend,
            outputs,
            folders["inbox"],
            settle_s=settings.watch.settle_s,
            dedupe=settings.daemon.dedupe,
            metrics=self.metrics,
        )
        self.watcher = Watcher(folders["inbox"], settings.watch, journal, self.pool.wake)
        self.metrics.watch_oldest(self._oldest_waiting_age)

    async def _start_http(self, stack: contextlib.AsyncExitStack, backend: Backend) -> None:
        address = self.settings.http.address(once=self.once)
        if address is None:
            return
        journal = self.journal
        routes = backend.routes(journal.has_transcript if journal else lambda _id: False)
        self.http = HttpServer(
            *address, self.metrics, self.readiness, self._refresh_metrics, routes
        )
        await stack.enter_async_context(self.http)

    async def main_loop(self) -> int:
        """Supervise the parts until a stop is asked for or one of them ends; the exit code."""
        pool, watcher, backend = self.pool, self.watcher, self.backend
        if pool is None or watcher is None or backend is None:
            raise RuntimeError("main_loop() before startup()")
        intake_done = asyncio.Event()
        if self.once:
            intake = asyncio.create_task(self._once_intake(watcher, intake_done))
        else:
            intake = asyncio.create_task(watcher.watch(self.stop, self.watcher_ready))
        self.parts = {
            "intake": intake,
            "pool": asyncio.create_task(
                pool.run(self.stop, until_idle=intake_done if self.once else None)
            ),
            **backend.parts(),
        }
        if self.http is not None:
            self.parts["http"] = asyncio.create_task(self.http.serve(self.stop))
        display = self._start_extras()
        log.info(
            "daemon_started",
            inbox=str(watcher.inbox),
            backend=backend.name,
            once=self.once,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )
        try:
            await self._supervise()
        finally:
            code = await self.shutdown(display)
        return code

    async def _supervise(self) -> None:
        """Return when a stop is asked for, the pool is done (``--once``), or a part ended."""
        stop_wait = asyncio.create_task(self.stop.wait())
        watching = set(self.parts.values())
        try:
            while watching and not self.stop.is_set():
                done, _ = await asyncio.wait(
                    watching | {stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                for name, task in self.parts.items():
                    if task not in done:
                        continue
                    watching.discard(task)
                    error = None if task.cancelled() else task.exception()
                    if self._finished_as_planned(name, error):
                        continue
                    self._part_failed(name, error)
                    return
                if self.parts["pool"] in done:
                    return
        finally:
            stop_wait.cancel()

    def _finished_as_planned(self, name: str, error: BaseException | None) -> bool:
        """A part that may end: ``--once``'s intake after its scan, and the pool when the
        batch is done or it stopped on a fatal error of its own (handled at exit)."""
        if error is not None or self.stop.is_set():
            return error is None
        if name == "intake":
            return self.once
        if name == "pool":
            return self.once or (self.pool is not None and self.pool.fatal is not None)
        return False

    def _part_failed(self, name: str, error: BaseException | None) -> None:
        failure = ComponentFailedError(name, error)
        self.failed[name] = str(failure)
        log.error(
            "component_failed",
            part=name,
            error=repr(error) if error is not None else "ended unexpectedly",
            exc_info=error,
        )
        self.notifier.status(f"failed: {failure}")
        self.stop.set()

    async def shutdown(self, display: ProgressDisplay | None) -> int:
        """Stop intake, drain the pool, stop the parts; the exit code of the run."""
        pool = self.pool
        if pool is None:
            raise RuntimeError("shutdown() before startup()")
        self.stop.set()
        self.notifier.stopping(f"stopping: {pool.in_flight} in flight")
        try:
            for name in ("intake", "pool"):
                task = self.parts.get(name)
                if task is None:
                    continue
                await asyncio.wait([task], timeout=self.settings.daemon.grace_s)
                failed = task.done() and not task.cancelled() and task.exception()
                if failed and name not in self.failed:
                    self._part_failed(name, task.exception())
            cut = await pool.drain(self.settings.daemon.grace_s, force=self.force)
        finally:
            for task in self.parts.values():
                task.cancel()
            await asyncio.gather(*self.parts.values(), return_exceptions=True)
            await self._stop_extras(display)
        log.info(
            "daemon_stopped",
            done=pool.stats.done,
            failed=pool.stats.failed,
            reused=pool.stats.reused,
            cancelled_mid_step=cut,
            pending=self.journal.pending_count() if self.journal else None,
            failed_parts=sorted(self.failed) or None,
        )
        return self._exit_code()

    def _exit_code(self) -> int:
        pool = self.pool
        fatal = pool.fatal if pool is not None else None
        if isinstance(fatal, AuthError | ConfigError):
            log.error("fatal_error", error=str(fatal))
            return ExitCode.CONFIG
        if fatal is not None or self.failed:
            return ExitCode.FAILED
        if self.once and pool is not None and pool.stats.failed:
            return ExitCode.FAILED
        return ExitCode.OK

    async def _once_intake(self, watcher: Watcher, intake_done: asyncio.Event) -> None:
        try:
            await watcher.drain_once(self.stop)
        finally:
            intake_done.set()
            if self.pool is not None:
                self.pool.wake()

    # -- readiness notice, watchdog, progress ----------------------------------------------
    async def _announce_ready(self) -> None:
        if not self.once:
            await self.watcher_ready.wait()
        log.info("daemon_ready")
        self.notifier.ready(self._status())

    def _start_extras(self) -> ProgressDisplay | None:
        """Readiness notice, watchdog and status pings, and the progress display, as tasks."""
        self._extra_tasks.append(asyncio.create_task(self._announce_ready()))
        if self.notifier.enabled:
            self._extra_tasks.append(
                asyncio.create_task(self.notifier.keepalive(self._status, healthy=self.alive))
            )
        if not self.progress:
            return None
        display = ProgressDisplay(self.counts)
        display.start()
        self._extra_tasks.append(asyncio.create_task(display.run()))
        return display

    async def _stop_extras(self, display: ProgressDisplay | None) -> None:
        for task in self._extra_tasks:
            task.cancel()
        await asyncio.gather(*self._extra_tasks, return_exceptions=True)
        self._extra_tasks.clear()
        if display is not None:
            display.close()
