"""The daemon's lifecycle: folders, journal, backend, watcher, pool, signals, drain.

The first SIGTERM or SIGINT stops intake and lets in-flight steps reach a checkpoint within
``grace_s``; the journal resumes whatever is left on the next start. A second signal exits at
once, which is just as safe for the same reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from transcribed.backends import Backend
from transcribed.backends.assemblyai import WEBHOOK_HEADER
from transcribed.backends.assemblyai_status import StatusTracker
from transcribed.config import Settings
from transcribed.errors import AuthError, ConfigError, ExitCode
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
from transcribed.webhooks import webhook_routes

log = get_logger("transcribed.service")


def make_backend(
    settings: Settings, metrics: Metrics, webhook_secret: str | None = None
) -> Backend:
    choice = settings.resolved_backend()
    reason = (
        "configured"
        if settings.backend != "auto"
        else ("an API key is configured" if choice == "assemblyai" else "no API key is configured")
    )
    log.info("backend_selected", backend=choice, reason=reason)
    if choice == "assemblyai":
        from transcribed.backends.assemblyai import AssemblyAIBackend

        if settings.assemblyai.api_key is None:
            raise ConfigError(
                "backend is assemblyai but no API key is set "
                "(ASSEMBLYAI_API_KEY, or [assemblyai] api_key / api_key_file)"
            )
        return AssemblyAIBackend(
            settings.assemblyai,
            settings.transcription,
            settings.output.formats,
            metrics,
            webhook_secret=webhook_secret,
        )
    from transcribed.backends.local import LocalBackend

    return LocalBackend(settings.local, settings.output.formats)


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
        self.http: HttpServer | None = None
        self.webhook_secret: str | None = None
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.watcher_ready = asyncio.Event()
        self.journal: Journal | None = None
        self.backend: Backend | None = None
        self.pool: Pool | None = None
        self.watcher: Watcher | None = None
        self.backend_ready = False
        self._signals = 0
        self._extra_tasks: list[asyncio.Task[Any]] = []

    @property
    def ready(self) -> bool:
        return all(state == "ok" for state in self.readiness().values())

    # -- health, metrics and status (http, systemd, progress) ------------------------------
    def readiness(self) -> dict[str, str]:
        """Each part /readyz checks: ``"ok"``, or what is wrong with it."""
        journal_open = self.journal is not None and self.journal.is_open
        watching = self.watcher is not None and self.watcher.running
        if not self.backend_ready:
            backend = "starting"
        elif getattr(self.backend, "degraded", False):
            backend = "degraded: the API has been failing"
        else:
            backend = "ok"
        return {
            "journal": "ok" if journal_open else "not open",
            "watcher": "ok" if watching else ("stopping" if self.stop.is_set() else "not running"),
            "backend": backend,
        }

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
        return f"{'processing' if self.once else 'watching'}: {self.counts().summary()}"

    async def _start_http(self) -> None:
        address = self.settings.http.address(once=self.once)
        if address is None:
            return
        host, port = address
        routes = []
        if self.webhook_secret is not None and self.journal is not None:
            routes = webhook_routes(
                WEBHOOK_HEADER, self.webhook_secret, self._is_ours, self._notified
            )
        self.http = HttpServer(
            host, port, self.metrics, self.readiness, self._refresh_metrics, routes
        )
        await self.http.start()

    def _tracker(self) -> StatusTracker | None:
        try:
            return getattr(self.backend, "tracker", None)
        except RuntimeError:  # the backend has not started yet
            return None

    def _is_ours(self, transcript_id: str) -> bool:
        """A transcript this daemon submitted: one a job waits for, or one in the journal."""
        tracker = self._tracker()
        if tracker is not None and tracker.watching(transcript_id):
            return True
        return self.journal is not None and self.journal.has_transcript(transcript_id)

    def _notified(self, transcript_id: str, status: str) -> None:
        """A webhook arrived: wake the job waiting for that transcript."""
        tracker = self._tracker()
        if tracker is not None:
            tracker.notify(transcript_id, status)

    async def _announce_ready(self) -> None:
        if not self.once:
            await self.watcher_ready.wait()
        log.info("daemon_ready")
        self.notifier.ready(self._status())

    def _start_extras(self) -> ProgressDisplay | None:
        """Readiness notice, watchdog and status pings, and the progress display, as tasks."""
        self._extra_tasks.append(asyncio.create_task(self._announce_ready()))
        if self.notifier.enabled:
            self._extra_tasks.append(asyncio.create_task(self.notifier.keepalive(self._status)))
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

    def request_stop(self, signum: int | None = None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signum)
            os._exit(128 + (signum or signal.SIGTERM))
        log.info("shutdown_requested", signal=signum, grace_s=self.settings.daemon.grace_s)
        self.stop.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    async def run(self) -> int:
        settings = self.settings
        if settings.assemblyai.api_key is not None:
            register_secret(settings.assemblyai.api_key.get_secret_value())
        try:
            folders = prepare_folders(settings)
            accept = settings.daemon.accept_empty_journal
            with own_folders(
                folders, Journal(folders["state_dir"]), accept_empty_journal=accept
            ) as journal:
                self.journal = journal
                if (
                    settings.resolved_backend() == "assemblyai"
                    and settings.assemblyai.webhook_url
                    and settings.http.address(once=self.once) is not None
                ):
                    self.webhook_secret = journal.secret("webhook")
                    register_secret(self.webhook_secret)
                try:
                    await self._start_http()
                    return await self._run(journal, folders)
                finally:
                    if self.http is not None:
                        await self.http.close()
        except (ConfigError, AuthError) as exc:
            log.error("startup_failed", error=str(exc))
            self.notifier.status(f"startup failed: {exc}")
            return ExitCode.CONFIG

    async def _run(self, journal: Journal, folders: dict[str, Path]) -> int:
        settings = self.settings
        backend = make_backend(settings, self.metrics, self.webhook_secret)
        self.backend = backend
        self._install_signals()
        try:
            self.notifier.status(f"starting the {backend.name} backend")
            await backend.start()
            self.backend_ready = True
            outputs = Outputs(
                folders["outbox"], folders["done"], folders["failed"], settings.output.formats
            )
            pool = Pool(
                journal,
                backend,
                outputs,
                folders["inbox"],
                settle_s=settings.watch.settle_s,
                dedupe=settings.daemon.dedupe,
                metrics=self.metrics,
            )
            self.pool = pool
            watcher = Watcher(folders["inbox"], settings.watch, journal, pool.wake)
            self.watcher = watcher
            self.metrics.watch_oldest(self._oldest_waiting_age)
            return await self._serve(pool, watcher)
        finally:
            self._remove_signals()
            await backend.close()

    def _oldest_waiting_age(self) -> float:
        if self.journal is None or not self.journal.is_open:
            return 0.0
        oldest = self.journal.oldest_waiting_at()
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    async def _serve(self, pool: Pool, watcher: Watcher) -> int:
        intake_done = asyncio.Event()
        if self.once:
            intake = asyncio.create_task(self._once_intake(watcher, intake_done))
        else:
            intake = asyncio.create_task(watcher.watch(self.stop, self.watcher_ready))
        work = asyncio.create_task(
            pool.run(self.stop, until_idle=intake_done if self.once else None)
        )
        display = self._start_extras()
        log.info(
            "daemon_started",
            inbox=str(watcher.inbox),
            backend=self.backend.name if self.backend else None,
            once=self.once,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )
        stop_wait = asyncio.create_task(self.stop.wait())
        await asyncio.wait([work, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        self.stop.set()
        stop_wait.cancel()
        self.notifier.stopping(f"stopping: {pool.in_flight} in flight")
        try:
            await asyncio.gather(intake, return_exceptions=True)
            await work
            cut = await pool.drain(self.settings.daemon.grace_s)
        finally:
            await self._stop_extras(display)
        fatal = pool.fatal
        log.info(
            "daemon_stopped",
            done=pool.stats.done,
            failed=pool.stats.failed,
            reused=pool.stats.reused,
            cancelled_mid_step=cut,
            pending=self.journal.pending_count() if self.journal else None,
        )
        if isinstance(fatal, AuthError | ConfigError):
            log.error("startup_failed" if not pool.stats.done else "fatal_error", error=str(fatal))
            return ExitCode.CONFIG
        if fatal is not None:
            return ExitCode.FAILED
        if self.once and pool.stats.failed:
            return ExitCode.FAILED
        return ExitCode.OK

    async def _once_intake(self, watcher: Watcher, intake_done: asyncio.Event) -> None:
        try:
            await watcher.drain_once(self.stop)
        finally:
            intake_done.set()
            if self.pool is not None:
                self.pool.wake()
