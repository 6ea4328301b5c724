"""fsync, and group commit: callers that each need an fsync share one.

When a hundred jobs finish together, each needs its folder (or the journal) on disk before it
moves on, but one fsync that starts after all of them have written covers them all. A caller
waits for the first flush that *starts* after it asked; callers that ask while a flush runs
share the next one. The flush runs in a worker thread, so the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: the names in it) by its path (blocking)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupSync:
    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self._waiters and (self._runner is None or self._runner.done())

    async def wait(self) -> None:
        """Return once a flush that started after this call has finished; raises its error."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run(), name="group-sync")
        await waiter

    async def _run(self) -> None:
        while self._waiters:
            batch, self._waiters = self._waiters, []
            error: BaseException | None = None
            try:
                await asyncio.to_thread(self._flush)
            except asyncio.CancelledError:  # the loop is closing: nobody may wait for ever
                for waiter in batch + self._waiters:
                    waiter.cancel()
                self._waiters.clear()
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, none hangs
                error = exc
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
