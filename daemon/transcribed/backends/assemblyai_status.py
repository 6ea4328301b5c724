"""Knowing when transcripts finish, with as few requests as possible.

Jobs waiting for a transcript register here and wait on an event. Three things set it:

- a **sweep** of the account's transcript list, newest first: one request reports the status
  of up to 200 transcripts, so it replaces one poll per job. Its interval adapts: sparse while
  no job is expected to be done, every ``SWEEP_MIN_S`` once one is due, and backing off again
  the longer the most recently due job stays unfinished. A job the service still holds
  ``queued`` (over the account's concurrency cap) is not expected until it starts processing;
- a **webhook** notification (:meth:`StatusTracker.notify`), when webhook mode is on;
- the job's own fallback poll, at a low rate, for anything the other two miss.

When a job's transcript is seen finished, the job fetches it once. Expected processing time
is a fixed part plus a share per second of audio (the duration read from the file's header);
both are learned from what the service actually took, from the start of processing, for the
recent jobs (:class:`ProcessingTime`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from transcribed.backends.assemblyai_api import AssemblyAIClient, created_epoch
from transcribed.config import AssemblyAISettings
from transcribed.errors import PermanentError, TransientError
from transcribed.logs import get_logger

log = get_logger("transcribed.status")

SWEEP_MIN_S = 0.05
#: Once a job is overdue, sweep again after this share of how long it has been overdue.
OVERDUE_BACKOFF = 0.1
#: The share of the request budget that status checks (sweeps and polls) may use.
POLL_SHARE = 0.5
LIST_PAGE = 200
MAX_PAGES = 10
#: How far before the oldest watched job the sweep keeps paging (clock skew, slow creates).
CREATED_MARGIN_S = 60.0
#: A first guess of processing time: a fixed part plus a share of the audio's length.
PRIOR_BASE_S = 3.0
PRIOR_RATIO = 0.1
#: How many recent finished jobs the processing-time fit remembers.
LEARN_WINDOW = 64
#: Audio seconds between the shortest and longest remembered job below which they say
#: nothing about the share per audio second (only the fixed part is learned then).
MIN_SPREAD_S = 30.0
#: The fixed part is never expected below this.
MIN_BASE_S = 0.5
#: Residuals beyond this many (normal-scaled) median absolute deviations are outliers: a job
#: found late by a safety poll, a slow spell of the service.
OUTLIER_MADS = 3.0
FINISHED = frozenset({"completed", "error"})


def audio_duration_s(path: Path | BinaryIO) -> float | None:
    """The audio's length from its header (blocking; run it in a thread). None if unknown.
    ``path`` may be an open file (read from where it stands)."""
    try:
        import mutagen

        info = mutagen.File(path)
    except Exception:  # noqa: BLE001 - any parse failure just means "unknown"
        return None
    length = getattr(getattr(info, "info", None), "length", None)
    return float(length) if isinstance(length, int | float) and length > 0 else None


class ProcessingTime:
    """How long the service takes to process a job: ``base_s + ratio * audio seconds``.

    Both parts are fitted to the last ``LEARN_WINDOW`` finished jobs: a least-squares line,
    refitted once without the outliers, when the jobs' lengths spread enough to tell the parts
    apart; otherwise the share per audio second is kept and the fixed part is the median of
    what the jobs took beyond it. The prior counts as one observation of the fixed part.
    """

    def __init__(self) -> None:
        self.base_s = PRIOR_BASE_S
        self.ratio = PRIOR_RATIO
        self._seen: deque[tuple[float, float]] = deque(maxlen=LEARN_WINDOW)

    def expected_s(self, duration_s: float | None) -> float:
        return self.base_s + self.ratio * (duration_s or 0.0)

    def observe(self, duration_s: float | None, took_s: float) -> None:
        """A job of ``duration_s`` of audio (None: unknown, taken as short) took ``took_s``."""
        self._seen.append((duration_s or 0.0, max(0.0, took_s)))
        line = _robust_line(self._seen)
        if line is not None:
            self.ratio = max(0.0, line[1])
        beyond = statistics.median(y - self.ratio * x for x, y in self._seen)
        n = len(self._seen)
        self.base_s = max(MIN_BASE_S, (PRIOR_BASE_S + n * beyond) / (n + 1))


def _line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` (the xs must not all be equal)."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    return mean_y - slope * mean_x, slope


def _spread(points: Sequence[tuple[float, float]]) -> float:
    xs = [x for x, _ in points]
    return max(xs) - min(xs)


def _robust_line(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """The line through ``points`` without its outliers; None if their lengths are too close."""
    if len(points) < 2 or _spread(points) < MIN_SPREAD_S:
        return None
    base, ratio = _line(points)
    residuals = [y - base - ratio * x for x, y in points]
    center = statistics.median(residuals)
    mad = statistics.median(abs(r - center) for r in residuals) * 1.4826
    limit = OUTLIER_MADS * max(mad, 0.05)
    kept = [p for p, r in zip(points, residuals, strict=True) if abs(r - center) <= limit]
    if len(kept) < len(points) and len(kept) >= 2 and _spread(kept) >= MIN_SPREAD_S:
        return _line(kept)
    return base, ratio


@dataclass
class _Watch:
    submitted_at: float
    duration_s: float | None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    status: str | None = None
    started_at: float | None = None
    """When the service started processing it, as far as the sweeps can tell."""
    planned: bool = True
    """False while its audio's duration is still being read: sweeps are not planned by it."""


class StatusTracker:
    def __init__(
        self, client: AssemblyAIClient, settings: AssemblyAISettings, *, webhooks: bool = False
    ) -> None:
        self._client = client
        self._settings = settings
        self.webhooks = webhooks
        self._watches: dict[str, _Watch] = {}
        self._changed = asyncio.Event()
        self.processing = ProcessingTime()
        self.sweeping = not webhooks
        self._last_pages = 1
        self._last_sweep_at = time.time()

    # -- expectations ----------------------------------------------------------------------
    def expected_s(self, duration_s: float | None) -> float:
        return self.processing.expected_s(duration_s)

    def observe(self, transcript_id: str, duration_s: float | None) -> None:
        """Learn from a job seen finished just now how long the service takes to process
        (time spent queued for a slot does not count)."""
        entry = self._watches.get(transcript_id)
        if entry is None:
            return
        took_s = time.time() - (entry.started_at or entry.submitted_at)
        self.processing.observe(duration_s, took_s)
        # The next sweep was planned by the old expectation, a moment before this job was
        # fetched: plan it again (a long job may now be due long before that).
        self._changed.set()

    # -- registration ----------------------------------------------------------------------
    def due_at(self, entry: _Watch, now: float) -> float:
        """When ``entry`` should be done, by what the service has taken so far."""
        expected = self.expected_s(entry.duration_s)
        if entry.status == "queued":  # its processing time has not even begun
            return now + expected
        return (entry.started_at or entry.submitted_at) + expected

    def watch(
        self,
        transcript_id: str,
        submitted_at: float,
        duration_s: float | None,
        *,
        duration_pending: bool = False,
    ) -> asyncio.Event:
        """Wait for ``transcript_id``. With ``duration_pending`` its due time is not known yet:
        it is swept with the others, but plans no sweep until :meth:`set_duration`."""
        entry = self._watches.get(transcript_id)
        if entry is None:
            entry = _Watch(submitted_at, duration_s, planned=not duration_pending)
            self._watches[transcript_id] = entry
            self._changed.set()
        return entry.event

    def set_duration(self, transcript_id: str, duration_s: float | None) -> None:
        """The audio's duration (None: unknown), read after the job began to be watched."""
        entry = self._watches.get(transcript_id)
        if entry is not None:
            entry.duration_s = duration_s
            entry.planned = True
            self._changed.set()

    def watching(self, transcript_id: str) -> bool:
        return transcript_id in self._watches

    def forget(self, transcript_id: str) -> None:
        self._watches.pop(transcript_id, None)

    def notify(self, transcript_id: str, status: str) -> bool:
        """A webhook or a sweep saw ``status``; wakes the waiting job. False if not ours."""
        entry = self._watches.get(transcript_id)
        if entry is None:
            return False
        entry.status = status
        if status in FINISHED:
            entry.event.set()
        return True

    def _seen(self, transcript_id: str, status: str, since: float) -> None:
        """A sweep saw ``status``; a job that left ``queued`` started after ``since``."""
        entry = self._watches.get(transcript_id)
        if entry is None:
            return
        if entry.status == "queued" and status != "queued" and entry.started_at is None:
            entry.started_at = since
        if status in FINISHED:
            self.notify(transcript_id, status)
        else:
            entry.status = status

    def fallback_interval_s(self, waited_s: float) -> float:
        """How long a job waits for a sweep or webhook before polling on its own."""
        s = self._settings
        if self.webhooks or self.sweeping:
            return max(s.poll_max_s, 3 * SWEEP_MIN_S)
        return min(s.poll_max_s, max(s.poll_min_s, waited_s * 0.25))

    # -- the sweep loop --------------------------------------------------------------------
    def _next_sweep_in_s(self, now: float) -> float:
        if self.webhooks:
            return max(60.0, self._settings.poll_max_s)
        wait = self._settings.poll_max_s
        for entry in self._watches.values():
            if not entry.planned:
                continue
            due = self.due_at(entry, now)
            wait = min(wait, (due - now) / 2 if due > now else (now - due) * OVERDUE_BACKOFF)
        # Never more often than the pages of the last sweep fit in the polling share of the
        # request budget.
        floor = max(SWEEP_MIN_S, self._last_pages / (self._settings.requests_per_s * POLL_SHARE))
        return max(floor, wait)

    async def run(self) -> None:
        """Sweep while jobs are waiting; sleep while none are."""
        while True:
            if not self._watches:
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._wait_for_next_sweep()
            if not self._watches or not (self.sweeping or self.webhooks):
                continue
            try:
                await self.sweep()
            except TransientError as exc:
                log.warning("status_sweep_failed", error=str(exc))
            except PermanentError as exc:
                log.warning("status_sweep_disabled", error=str(exc))
                self.sweeping = False  # the list endpoint is not usable: poll per job

    async def _wait_for_next_sweep(self) -> None:
        """Sleep until the planned sweep; a newly registered job can only bring it forward."""
        deadline = time.monotonic() + self._next_sweep_in_s(time.time())
        while self._watches:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                # that arrives as the event is set, and close() then waits for ever.
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return
            if self._watches:
                sooner = time.monotonic() + self._next_sweep_in_s(time.time())
                deadline = min(deadline, sooner)

    async def sweep(self) -> None:
        """One pass over the newest transcripts, back to the oldest job we wait for."""
        if not self._watches:
            return
        oldest = min(w.submitted_at for w in self._watches.values()) - CREATED_MARGIN_S
        since, self._last_sweep_at = self._last_sweep_at, time.time()
        unseen = set(self._watches)
        before: str | None = None
        for pages in range(1, MAX_PAGES + 1):
            self._last_pages = pages
            params = {"limit": str(LIST_PAGE)} | ({"before_id": before} if before else {})
            page: dict[str, Any] = await self._client.list_transcripts(**params)
            items = page.get("transcripts") or []
            for item in items:
                transcript_id = str(item.get("id"))
                unseen.discard(transcript_id)
                if isinstance(status := item.get("status"), str):
                    self._seen(transcript_id, status, since)
            if (
                not unseen  # every job we wait for was on these pages
                or len(items) < LIST_PAGE
                or created_epoch(items[-1].get("created")) < oldest
            ):
                return
            before = str(items[-1]["id"])
