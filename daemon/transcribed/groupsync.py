"""fsync, and group commit: callers that each need an fsync share one.

When a hundred jobs finish together, each needs its folder (or the journal) on disk before it
moves on, but one fsync that starts after all of them have written covers them all. A caller
waits for the first flush that *starts* after it asked; callers that ask while a flush runs
share the next one. The flush runs in a worker thread, so the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: the names in it) by its path (blocking)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupSync:
    def __init__(self, flush: Callable[[], None], executor: Executor | None = None) -> None:
        """``executor``: where the flush runs; the loop's default pool when None."""
        self._flush = flush
        self._executor = executor
        self._waiters: list[asyncio.Future[None]] = []
        self._running = False

    @property
    def idle(self) -> bool:
        return not self._waiters and not self._running

    async def wait(self) -> None:
        """Return once a flush that started after this call has finished; raises its error."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self._running:
            self._start()
        await waiter

    def _start(self) -> None:
        # Callbacks rather than a task awaiting the thread: a waiter resumes in the loop
        # iteration after its flush ends, which counts when hundreds of jobs finish at once.
        batch, self._waiters = [w for w in self._waiters if not w.done()], []
        if not batch:
            return
        try:
            done = asyncio.get_running_loop().run_in_executor(self._executor, self._flush)
        except BaseException as exc:  # noqa: BLE001 - no thread (limits, shutdown): tell them all
            _settle(batch, exc)
            return
        self._running = True
        done.add_done_callback(functools.partial(self._finished, batch))

    def _finished(self, batch: list[asyncio.Future[None]], done: asyncio.Future[None]) -> None:
        self._running = False
        if done.cancelled():  # the loop is closing: nobody may wait for ever
            for waiter in batch:
                waiter.cancel()
        else:
            _settle(batch, done.exception())
        if self._waiters:
            self._start()


def _settle(batch: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in batch:
        if waiter.done():  # its caller was cancelled meanwhile
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(_copy(error))


def _copy(error: BaseException) -> BaseException:
    """The same error for one more waiter, so tracebacks do not pile up on one object."""
    if isinstance(error, OSError):
        return OSError(error.errno, error.strerror, error.filename)
    return RuntimeError(f"flush failed: {error!r}")
