"""Live progress for ``transcribed run --once`` on a terminal (rich).

One line: a bar, files finished of those known, in flight, failed, and throughput in files per
minute and seconds of audio per second. The service gives the display a function returning
:class:`Counts`; the display calls it from the event loop only (the journal is not thread-safe),
so rich's own refresh thread stays off.

While the display is live, log lines are routed through rich's console: they scroll above the
bar instead of being overwritten by it. When stdout is not a terminal there is no display at all,
and the output is only the log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

REFRESH_S = 0.25


@dataclass(frozen=True)
class Counts:
    """Where a run stands: this run's outcomes, plus the work the journal and inbox still hold."""

    done: int = 0
    failed: int = 0
    in_flight: int = 0
    waiting: int = 0  # known (journal or settling in the inbox) but not started
    audio_s: float = 0.0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def total(self) -> int:
        return self.finished + self.in_flight + self.waiting

    def summary(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed, "
            f"{self.in_flight} in flight, {self.waiting} waiting"
        )


def describe(counts: Counts, elapsed_s: float) -> str:
    """The text beside the bar, e.g. ``3/5 files · 1 in flight · 0 failed · 6.0 files/min``."""
    minutes = max(elapsed_s, 1e-9) / 60
    files_per_min = counts.finished / minutes if elapsed_s > 0 else 0.0
    audio_per_s = counts.audio_s / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"{counts.finished}/{counts.total} files · {counts.in_flight} in flight · "
        f"{counts.failed} failed · {files_per_min:.1f} files/min · "
        f"{audio_per_s:.1f} audio s/s"
    )


class ProgressDisplay:
    """``start()``, then ``await run()`` as a task, then ``close()`` for the final state."""

    def __init__(
        self,
        counts: Callable[[], Counts],
        console: Console | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._counts = counts
        self._console = console or Console()
        self._refresh_s = refresh_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._started = time.monotonic()
        self._rerouted: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []

    def start(self) -> None:
        progress = Progress(
            SpinnerColumn(finished_text="✓"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            console=self._console,
            auto_refresh=False,  # refreshed from the event loop, see run()
            transient=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._started = time.monotonic()
        self._task = progress.add_task("transcribing", total=None, summary="starting")
        progress.start()
        self._progress = progress
        self._reroute_logs()
        self.update()

    def _reroute_logs(self) -> None:
        """Point log handlers that write to the terminal at rich's proxies for the duration."""
        proxies = {
            id(proxy.rich_proxied_file): proxy
            for proxy in (sys.stdout, sys.stderr)
            if hasattr(proxy, "rich_proxied_file")
        }
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in proxies:
                original = handler.setStream(proxies[id(handler.stream)])
                if original is not None:
                    self._rerouted.append((handler, original))

    def update(self, *, final: bool = False) -> None:
        if self._progress is None or self._task is None:
            return
        counts = self._counts()
        elapsed_s = time.monotonic() - self._started
        self._progress.update(
            self._task,
            total=counts.total or None,
            completed=counts.finished,
            summary=describe(counts, elapsed_s),
            description="finished" if final else "transcribing",
        )
        if final:
            self._progress.stop_task(self._task)
        self._progress.refresh()

    async def run(self) -> None:
        """Refresh until cancelled."""
        while True:
            self.update()
            await asyncio.sleep(self._refresh_s)

    def close(self) -> None:
        """Show the final counts, stop the display and give the log its stream back."""
        if self._progress is None:
            return
        try:
            self.update(final=True)
        finally:
            for handler, original in self._rerouted:
                handler.setStream(original)
            self._rerouted.clear()
            self._progress.stop()
            self._progress = None
