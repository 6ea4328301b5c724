"""The pool: takes claimable jobs from the journal and runs each through its steps.

At most ``backend.max_concurrency`` jobs run at once, and at most ``ADMIT_AT_ONCE`` of them
between taking a file and submitting it. One job's steps live in :mod:`transcribed.job`: a
job's outcome is either ``archived`` (outputs written, source in done/) or ``failed`` (source
in failed/ with a report); transient trouble only delays it, and a bad file never takes a
worker down with it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

from transcribed.backends import Backend
from transcribed.checkpoints import Admission
from transcribed.job import JobSteps, RunStats
from transcribed.journal import JobRow, Journal
from transcribed.logs import get_logger
from transcribed.metrics import Metrics
from transcribed.outputs import Outputs

log = get_logger("transcribed.pool")
#: Phases in which cancelling a job loses nothing but a wait.
SAFE_PHASES = frozenset({"queued", "hashing", "upload_wait", "polling"})
ADMIT_AT_ONCE = 16


class Pool:
    def __init__(
        self,
        journal: Journal,
        backend: Backend,
        outputs: Outputs,
        inbox: Path,
        *,
        settle_s: float = 2.0,
        dedupe: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self._journal = journal
        self._backend = backend
        self._metrics = metrics or Metrics()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._phases: dict[int, str] = {}
        self._steps = JobSteps(
            journal,
            backend,
            outputs,
            inbox,
            phases=self._phases,
            settle_s=settle_s,
            dedupe=dedupe,
            metrics=self._metrics,
        )
        self._wake = asyncio.Event()
        # Jobs go from taking a file to submitting it a few at a time and in order, so with a
        # large backlog the first ones reach the service at once instead of every job's local
        # preparation competing with every upload.
        self._admitting = asyncio.Semaphore(ADMIT_AT_ONCE)
        self._crashed: BaseException | None = None

    @property
    def stats(self) -> RunStats:
        return self._steps.stats

    @property
    def fatal(self) -> BaseException | None:
        """What stopped the pool: an error every job would meet, or a job's crash (a bug)."""
        return self._steps.fatal or self._crashed

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def wake(self) -> None:
        self._wake.set()

    # -- dispatch --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, until_idle: asyncio.Event | None = None) -> None:
        """Start jobs as slots free up, until ``stop`` is set.

        With ``until_idle`` (``--once``), return once that event is set (intake has finished)
        and nothing is left to do.
        """
        while not stop.is_set() and self.fatal is None:
            self._wake.clear()
            now = time.time()  # one clock for the claim and the timer: no deferral between
            pending = self._journal.pending_count()
            free = self._backend.max_concurrency - len(self._tasks)
            if free > 0 and pending > len(self._tasks):
                for row in self._journal.claimable(free, set(self._tasks), now):
                    self._start(row)
            self._metrics.jobs_in_flight.set(len(self._tasks))
            self._metrics.queue_depth.set(max(0, pending - len(self._tasks)))
            if until_idle is not None and until_idle.is_set() and not self._tasks and not pending:
                return
            await self._sleep(stop, now)

    async def _sleep(self, stop: asyncio.Event, now: float) -> None:
        """Until woken (a job finished, files arrived, stop) or a deferred job is due.

        Jobs that were due at ``now`` are running or wait for a free slot, and a finishing job
        wakes us: only later deferrals need the timer."""
        timeout: float | None = 5.0
        wakeup = self._journal.next_wakeup(now)
        if wakeup is not None:
            timeout = min(5.0, max(0.05, wakeup - time.time()))
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _start(self, row: JobRow) -> None:
        self._phases[row.id] = "queued"
        task = asyncio.create_task(
            self._steps.run(row, Admission(self._admitting)), name=f"job-{row.id}"
        )
        self._tasks[row.id] = task
        task.add_done_callback(functools.partial(self._finished, row.id))

    def _finished(self, job_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._phases.pop(job_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # JobSteps.run handles everything; anything here is a bug worth stopping for.
            log.error("job_crashed", job_id=job_id, error=repr(exc))
            self._crashed = exc
        self._wake.set()

    # -- shutdown --------------------------------------------------------------------------
    async def drain(self, grace_s: float, *, force: asyncio.Event | None = None) -> int:
        """Cancel jobs that are only waiting; give the rest ``grace_s`` to reach a checkpoint,
        or until ``force`` is set (a second signal).

        Returns how many jobs had to be cancelled mid-step (they resume on the next start).
        """
        deadline = time.monotonic() + grace_s
        while self._tasks:
            for job_id, task in list(self._tasks.items()):
                if self._phases.get(job_id) in SAFE_PHASES:
                    task.cancel()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (force is not None and force.is_set()):
                break
            await asyncio.wait(list(self._tasks.values()), timeout=min(0.1, remaining))
        cut = len(self._tasks)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))
        return cut
