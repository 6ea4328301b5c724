"""Live progress for ``transcribed run --once`` on a terminal (tqdm).

One line: a bar, files finished of those known, in flight, failed, and throughput in files per
minute and seconds of audio per second. The service gives the display a function returning
:class:`Counts`; the display calls it from the event loop only (the journal is not thread-safe),
so tqdm's monitor thread stays off and the line is redrawn from the loop.

While the display is live, log lines go through ``tqdm.write``: they scroll above the bar
instead of being overwritten by it. When stdout is not a terminal there is no display at all,
and the output is only the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

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


def _bar_format(state: str, summary: str) -> str:
    """The line's format for tqdm: state, bar, our text (its braces escaped), elapsed."""
    text = summary.replace("{", "{{").replace("}", "}}")
    return f"{state} {{bar:30}} {text} {{elapsed}}"


class ProgressDisplay:
    """``start()``, then ``await run()`` as a task, then ``close()`` for the final state."""

    def __init__(
        self,
        counts: Callable[[], Counts],
        stream: IO[str] | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._counts = counts
        self._stream = stream or sys.stdout
        self._refresh_s = refresh_s
        self._line: tqdm[Any] | None = None
        self._started = time.monotonic()
        self._redirect = contextlib.ExitStack()

    def start(self) -> None:
        # Imported here: most runs (a pipe, cron, a service) never show the display.
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # Redrawn from the event loop (see run()), so no monitor thread; and a thread lock
        # for the line and tqdm.write alike, where tqdm's default also makes a
        # multiprocessing one. Nothing else in this process draws with tqdm.
        tqdm.monitor_interval = 0
        tqdm.set_lock(threading.RLock())
        self._started = time.monotonic()
        self._line = tqdm(
            total=0,
            file=self._stream,
            bar_format=_bar_format("transcribing", "starting"),
            dynamic_ncols=True,
            leave=True,
            mininterval=0,
        )
        try:
            # The root logger's terminal handler goes through tqdm.write for the duration.
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.root]))
            self.update()
        except BaseException:
            self._stop()
            raise

    def update(self, *, final: bool = False) -> None:
        line = self._line
        if line is None:
            return
        counts = self._counts()
        line.total = counts.total
        line.n = counts.finished
        summary = describe(counts, time.monotonic() - self._started)
        line.bar_format = _bar_format("finished" if final else "transcribing", summary)
        line.refresh()

    async def run(self) -> None:
        """Refresh until cancelled."""
        while True:
            self.update()
            await asyncio.sleep(self._refresh_s)

    def close(self) -> None:
        """Show the final counts, stop the display and give the log its stream back."""
        if self._line is None:
            return
        try:
            self.update(final=True)
        finally:  # the log gets its stream back even if the last counts cannot be read
            self._stop()

    def _stop(self) -> None:
        self._redirect.close()
        if self._line is not None:
            self._line.close()
            self._line = None
