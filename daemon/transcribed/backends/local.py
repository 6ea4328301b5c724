"""The embedded engine: faster-whisper in worker processes, one file per worker at a time.

Decoding is CPU-bound, so it never runs on the event loop: each of ``settings.workers`` slots is
a ``spawn``-ed process (:mod:`transcribed.backends.local_worker`) holding its own model, driven
over a duplex pipe. The blocking ``recv`` runs on a small thread pool, so the loop stays free.

The model comes from :mod:`transcribed.models` (a folder, the bundled one, or fetched by name
into the cache before any worker starts). Each worker is replaced by a fresh process after
``max_files_per_worker`` files or when its memory passes ``max_worker_rss_mb``, between files
(the replacement loads while the other slots work), to bound what a long run can leak.

A file whose worker dies, or that takes longer than
``max(min_timeout_s, timeout_factor * audio duration)``, fails on its own with
:class:`~transcribed.errors.PermanentError`; that worker is killed and replaced before its next
file. This module never imports faster-whisper, so cloud-only installs can import it.

Like any ``spawn`` user, a program that starts this backend from a script needs the usual
``if __name__ == "__main__":`` guard, since each worker imports the main module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Gauge

from transcribed import models
from transcribed.backends import Capabilities, Checkpoints, Job, Result
from transcribed.backends.local_result import to_result
from transcribed.backends.local_worker import Request, WorkerOptions
from transcribed.backends.local_worker import main as worker_main
from transcribed.config import LocalSettings
from transcribed.errors import ConfigError, PermanentError, TransientError
from transcribed.metrics import Metrics
from transcribed.models import EXTRA_HINT

log = structlog.get_logger(__name__)

#: How long a new worker may take to import faster-whisper and load its model.
START_TIMEOUT_S = 300.0
#: How long a worker may take to exit after being asked to.
STOP_TIMEOUT_S = 5.0
#: How often the supervisor looks for idle workers that died.
SUPERVISE_S = 1.0
#: Failed restarts in a row after which the engine counts as dead (the daemon stops, loudly).
MAX_RESTART_FAILURES = 3
#: How often a running file logs how far it got (``local_progress``).
PROGRESS_LOG_S = 15.0
#: The cache a backend built without one uses (the service passes ``state_dir/models``).
DEFAULT_MODELS_DIR = Path("state") / "models"


def resolve_model(model: str, cache: Path = DEFAULT_MODELS_DIR) -> Path:
    """The model folder for ``model`` without fetching: a folder, bundled, or cached.

    Finds bundled models without importing their package. Raises ``ConfigError``."""
    path = models.local_path(model, cache)
    if path is None:
        raise ConfigError(models.missing(model, cache, "fetching is off"))
    return path


@dataclass
class _Worker:
    """One worker process, its end of the pipe and the ``recv`` it may be blocked in."""

    slot: int
    process: BaseProcess
    conn: Connection
    pid: int | None = None
    pending: Future[Any] | None = field(default=None, repr=False)
    stopped: bool = False
    exitcode: int | None = None
    #: Files this process has answered for, and its memory after the last one.
    files: int = 0
    rss_mb: float = 0.0


class LocalBackend:
    """Transcribe with faster-whisper in ``settings.workers`` processes."""

    name = "local"

    def __init__(
        self,
        settings: LocalSettings,
        formats: Sequence[str],
        *,
        models_dir: Path | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.models_dir = (models_dir or settings.models_dir or DEFAULT_MODELS_DIR).absolute()
        self.formats = tuple(kind for kind in formats if kind in ("srt", "vtt"))
        self.max_concurrency = settings.workers
        self.capabilities = Capabilities()
        self._context = multiprocessing.get_context("spawn")
        self._options: WorkerOptions | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._workers: list[_Worker | None] = []
        self._idle: asyncio.Queue[int] | None = None
        self._slot_locks: list[asyncio.Lock] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._recycling: set[asyncio.Task[None]] = set()
        #: Stops of recycled workers, which ``close`` lets finish rather than cancels.
        self._stopping: set[asyncio.Task[None]] = set()
        #: Per slot: seconds of audio decoded so far and the file's duration, while it runs.
        self._progress: dict[int, tuple[str, float, float | None]] = {}
        self._engine: dict[str, Any] = {}
        self._closed = False
        if metrics is not None:
            self._watch_progress(metrics)

    @property
    def worker_pids(self) -> list[int | None]:
        """The process id of each worker slot (``None`` while it is being replaced)."""
        return [w.pid if w is not None else None for w in self._workers]

    def _watch_progress(self, metrics: Metrics) -> None:
        """Two gauges read at scrape time: how far the files being decoded now have got."""
        decoded = Gauge(
            "transcribed_local_decoded_seconds",
            "Seconds of audio the local engine has decoded so far of the files it is on now.",
            registry=metrics.registry,
        )
        decoded.set_function(lambda: sum(done for _, done, _ in self._progress.values()))
        total = Gauge(
            "transcribed_local_decoding_audio_seconds",
            "Length of the files the local engine is on now (known lengths only).",
            registry=metrics.registry,
        )
        total.set_function(lambda: sum(t or 0.0 for _, _, t in self._progress.values()))

    def progress(self) -> list[dict[str, Any]]:
        """The files being decoded now: path, seconds decoded, duration (None: not known)."""
        return [
            {"path": path, "decoded_s": round(done, 1), "duration_s": total}
            for path, done, total in self._progress.values()
        ]

    async def start(self) -> None:
        """Resolve (maybe fetch) the model, start every worker and wait until each loaded it."""
        if importlib.util.find_spec("faster_whisper") is None:
            raise ConfigError(f"the local engine needs: {EXTRA_HINT}")
        settings = self.settings
        path = await asyncio.to_thread(models.resolve, settings.model, self.models_dir)
        self._options = WorkerOptions(
            str(path),
            compute_type=settings.compute_type,
            cpu_threads=settings.threads_per_worker,
            device=settings.device,
            language=settings.language,
            vad_parameters=tuple(sorted(settings.vad_parameters.items())),
        )
        count = self.settings.workers
        # A reader per worker, and room to wait for each worker's exit: in the daemon's shared
        # pool (daemon.io_threads) those waits would queue behind file work still running.
        self._threads = ThreadPoolExecutor(2 * count, thread_name_prefix="transcribed-local")
        self._workers = [None] * count
        self._slot_locks = [asyncio.Lock() for _ in range(count)]
        self._idle = asyncio.Queue()
        began = time.perf_counter()
        results = await asyncio.gather(
            *(self._spawn(slot) for slot in range(count)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                await self.close()
                raise result
        for slot in range(count):
            self._idle.put_nowait(slot)
        self._supervisor = asyncio.create_task(self._supervise(), name="local-engine-supervisor")
        log.info(
            "local_engine_started",
            model=settings.model,
            model_path=str(path),
            device=self._engine.get("device"),
            compute_type=self._engine.get("compute_type"),
            device_reason=self._engine.get("device_reason"),
            multilingual=self._engine.get("multilingual"),
            language=settings.language,
            vad=settings.vad,
            workers=count,
            threads_per_worker=settings.threads_per_worker,
            startup_s=round(time.perf_counter() - began, 2),
        )

    def parts(self) -> dict[str, asyncio.Task[None]]:
        """The long-running task the daemon supervises: the one that keeps workers alive."""
        return {"local engine": self._supervisor} if self._supervisor is not None else {}

    def health(self) -> str:
        return "ok"

    def routes(self, known: Callable[[str], bool]) -> list[web.RouteDef]:
        return []

    async def _supervise(self) -> None:
        """Replace idle workers that died, so a crash is noticed before a file needs the slot.

        A worker that cannot be restarted ``MAX_RESTART_FAILURES`` times in a row (its model
        gone, memory exhausted) ends this task with the error: the engine is dead, and the
        daemon stops instead of deferring every file for ever."""
        failures = 0
        while not self._closed:
            await asyncio.sleep(SUPERVISE_S * (2 ** min(failures, 4)))
            for slot, lock in enumerate(self._slot_locks):
                worker = self._workers[slot]
                if self._closed or lock.locked():
                    continue  # a job owns the slot: it replaces a dead worker itself
                if worker is not None and worker.process.is_alive():
                    continue
                async with lock:
                    if worker is not None:
                        log.warning("local_worker_died", slot=slot, pid=worker.pid)
                        await self._stop(worker, polite=False)
                    try:
                        await self._replace(slot)
                    except TransientError as exc:
                        failures += 1
                        log.error("local_worker_restart_failed", slot=slot, error=str(exc))
                        if failures >= MAX_RESTART_FAILURES:
                            raise
                        break
                    failures = 0

    async def close(self) -> None:
        """Stop every worker (asking first, then killing); safe after a failed ``start``."""
        self._closed = True
        tasks = [t for t in (self._supervisor, *self._recycling) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._supervisor = None
        await asyncio.gather(*self._stopping, return_exceptions=True)
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * len(self._workers)
        for worker in workers:
            if worker.pending is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
        await asyncio.gather(*(self._stop(w, polite=w.pending is None) for w in workers))
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def transcribe(self, job: Job, checkpoints: Checkpoints) -> Result:
        """Transcribe ``job.path`` in the next free worker.

        Only ``checkpoints.phase`` is used: ``queued`` while waiting for a worker (safe to
        cancel), then ``decoding``.
        """
        if self._idle is None:
            raise RuntimeError("LocalBackend.transcribe called before start()")
        self._raise_if_closed()
        try:
            size = job.path.stat().st_size
        except OSError as exc:
            raise PermanentError(f"cannot read the file: {exc.strerror}") from None
        if size == 0:
            raise PermanentError("the file is empty")
        checkpoints.phase("queued")
        slot = await self._idle.get()
        worker: _Worker | None = None
        try:
            async with self._slot_locks[slot]:
                self._raise_if_closed()
                checkpoints.phase("decoding")
                worker = self._workers[slot]
                if worker is None or not worker.process.is_alive():
                    if worker is not None:
                        await self._stop(worker, polite=False)
                        self._raise_if_closed()  # closed meanwhile: start no worker after close()
                    worker = await self._replace(slot)
                payload = await self._run(worker, job)
        finally:
            self._progress.pop(slot, None)
            reason = self._worn_out(worker) if worker is not None else None
            if reason is None or self._closed:
                self._idle.put_nowait(slot)
            else:
                task = asyncio.create_task(
                    self._recycle(slot, reason), name=f"local-recycle-{slot}"
                )
                self._recycling.add(task)
                task.add_done_callback(self._recycling.discard)
        return to_result(payload, self.settings, self._engine, job.rel_path)

    def _worn_out(self, worker: _Worker) -> str | None:
        """Why a worker that just answered should be replaced before its next file, or None."""
        if worker.stopped or self._workers[worker.slot] is not worker:
            return None  # already gone: the slot starts a fresh one on next use
        limit_files, limit_mb = self.settings.max_files_per_worker, self.settings.max_worker_rss_mb
        if limit_files and worker.files >= limit_files:
            return f"{worker.files} files (local.max_files_per_worker = {limit_files})"
        if limit_mb and worker.rss_mb > limit_mb:
            return f"{worker.rss_mb:.0f} MB resident (local.max_worker_rss_mb = {limit_mb})"
        return None

    async def _recycle(self, slot: int, reason: str) -> None:
        """Replace a worn-out worker between files; the slot is free again once it is done.

        A replacement that fails leaves the slot empty: the next file (or the supervisor)
        tries again, as after a crash."""
        try:
            async with self._slot_locks[slot]:
                worker = self._workers[slot]
                if self._closed or worker is None:
                    return
                log.info(
                    "local_worker_recycled",
                    slot=slot,
                    pid=worker.pid,
                    files=worker.files,
                    rss_mb=round(worker.rss_mb),
                    reason=reason,
                )
                self._workers[slot] = None
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
                # Out of our hands now: close() cancels this task, but waits for the stop.
                stopping = asyncio.create_task(self._stop(worker, polite=True))
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
                await asyncio.shield(stopping)
                if self._closed:
                    return
                try:
                    await self._replace(slot)
                except TransientError as exc:
                    log.error("local_worker_restart_failed", slot=slot, error=str(exc))
        finally:
            if not self._closed and self._idle is not None:
                self._idle.put_nowait(slot)

    async def _run(self, worker: _Worker, job: Job) -> dict[str, Any]:
        """Send one request and wait for its answer under the time limit."""
        settings = self.settings
        request = Request(
            path=str(job.path),
            beam_size=settings.beam_size,
            language=None if settings.language == "auto" else settings.language,
            formats=self.formats,
            vad=settings.vad,
            vad_parameters=tuple(sorted(settings.vad_parameters.items())),
            condition_on_previous_text=settings.condition_on_previous_text,
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        limit = settings.min_timeout_s
        duration: float | None = None
        logged = began
        try:
            worker.conn.send(request)
            while True:
                message = await self._recv(worker, began + limit - loop.time())
                kind, value = message
                if kind == "duration":
                    if isinstance(value, int | float) and value > 0:
                        duration = float(value)
                        limit = max(limit, settings.timeout_factor * duration)
                    done = self._progress.get(worker.slot, ("", 0.0, None))[1]
                    self._progress[worker.slot] = (job.rel_path, done, duration)
                elif kind == "progress":
                    done = float(value)
                    self._progress[worker.slot] = (job.rel_path, done, duration)
                    if loop.time() - logged >= PROGRESS_LOG_S:
                        logged = loop.time()
                        log.info(
                            "local_progress",
                            path=job.rel_path,
                            decoded_s=round(done, 1),
                            duration_s=duration,
                            percent=round(100 * done / duration, 1) if duration else None,
                        )
                elif kind == "ok":
                    worker.files += 1
                    worker.rss_mb = float(value.get("rss_mb") or 0.0)
                    log.debug(
                        "local_file_decoded",
                        path=job.rel_path,
                        slot=worker.slot,
                        files=worker.files,
                        rss_mb=round(worker.rss_mb),
                        peak_rss_mb=round(float(value.get("peak_rss_mb") or 0.0)),
                    )
                    return dict(value)
                elif kind == "failed":
                    worker.files += 1
                    raise PermanentError(str(value))
                else:
                    raise PermanentError(f"the local engine sent an unexpected {kind!r} message")
        except TimeoutError:
            await self._discard(worker, "timeout", job)
            self._raise_if_closed()
            raise PermanentError(
                f"the local engine took longer than {limit:.0f}s on this file; "
                "its worker was stopped"
            ) from None
        except (EOFError, OSError):
            await self._discard(worker, "crashed", job)
            self._raise_if_closed()
            raise PermanentError(
                f"the local engine crashed on this file (worker exit code {worker.exitcode})"
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(self._discard(worker, "cancelled", job))
            raise

    def _raise_if_closed(self) -> None:
        """A worker lost because ``close`` stopped it says nothing about the file."""
        if self._closed:
            raise TransientError("the local engine was stopped before this file was done")

    async def _recv(self, worker: _Worker, timeout_s: float) -> tuple[str, Any]:
        """The worker's next message, read on a thread; ``TimeoutError`` after ``timeout_s``."""
        if worker.pending is None:
            if self._threads is None:
                raise RuntimeError("the local engine is not started")
            worker.pending = self._threads.submit(worker.conn.recv)
        async with asyncio.timeout(max(timeout_s, 0.0)):
            message = await asyncio.wrap_future(worker.pending)
        worker.pending = None
        if not isinstance(message, tuple) or len(message) != 2:
            raise PermanentError("the local engine sent a malformed message")
        return (str(message[0]), message[1])

    async def _spawn(self, slot: int, cpu_threads: int | None = None) -> _Worker:
        """Start a worker for ``slot`` and wait for its model to load; raises ``ConfigError``.

        ``cpu_threads`` overrides ``threads_per_worker`` for this process (a worker that is to
        take one long file with all of the engine's threads)."""
        if self._options is None:
            raise RuntimeError("the local engine is not started")
        options = self._options
        if cpu_threads is not None:
            options = dataclasses.replace(options, cpu_threads=cpu_threads)
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(theirs, options),
            name=f"transcribed-local-{slot}",
            daemon=True,
        )
        process.start()
        theirs.close()  # so that our recv sees EOF when the worker dies
        worker = _Worker(slot, process, ours, pid=process.pid)
        self._workers[slot] = worker
        try:
            kind, value = await self._recv(worker, START_TIMEOUT_S)
        except TimeoutError:
            await self._stop(worker, polite=False)
            raise ConfigError(
                f"the local engine did not load its model within {START_TIMEOUT_S:.0f}s"
            ) from None
        except (EOFError, OSError):
            await self._stop(worker, polite=False)
            raise ConfigError(
                f"the local engine worker exited while loading its model "
                f"(exit code {worker.exitcode})"
            ) from None
        if kind == "missing":
            await self._stop(worker, polite=True)
            raise ConfigError(f"the local engine needs: {EXTRA_HINT} (missing {value})")
        if kind == "config":
            await self._stop(worker, polite=True)
            raise ConfigError(f"invalid configuration: {value}")
        if kind != "ready":
            await self._stop(worker, polite=True)
            raise ConfigError(f"cannot load the local model {self.settings.model!r}: {value}")
        self._engine = dict(value)
        log.debug("local_worker_ready", slot=slot, **self._engine)
        return worker

    async def _replace(self, slot: int) -> _Worker:
        """A fresh worker for a slot whose process is gone; ``TransientError`` if it fails."""
        self._workers[slot] = None
        try:
            worker = await self._spawn(slot)
        except ConfigError as exc:
            self._workers[slot] = None
            raise TransientError(f"cannot restart a local engine worker: {exc}") from None
        log.info("local_worker_restarted", slot=slot, pid=worker.pid)
        return worker

    async def _discard(self, worker: _Worker, reason: str, job: Job) -> None:
        """Kill a worker that failed a job; its slot gets a fresh one on next use."""
        log.warning(
            "local_worker_killed",
            slot=worker.slot,
            pid=worker.pid,
            reason=reason,
            path=job.rel_path,
        )
        if self._workers[worker.slot] is worker:
            self._workers[worker.slot] = None
        await self._stop(worker, polite=False)

    async def _stop(self, worker: _Worker, *, polite: bool) -> None:
        """End the process, wait for the reader thread, then close our end of the pipe."""
        if worker.stopped:
            return
        worker.stopped = True
        process = worker.process
        loop = asyncio.get_running_loop()
        if polite:
            await loop.run_in_executor(self._threads, process.join, STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
        await loop.run_in_executor(self._threads, process.join, STOP_TIMEOUT_S)
        if worker.pending is not None:
            # The worker is dead, so the blocked recv returns (EOF) and the thread is free.
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(worker.pending)
            worker.pending = None
        worker.conn.close()
        worker.exitcode = process.exitcode
        if worker.exitcode is not None:
            process.close()
