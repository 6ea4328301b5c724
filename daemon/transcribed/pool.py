"""The pool: takes claimable jobs from the journal and runs each through the backend.

At most ``backend.max_concurrency`` jobs run at once. A job's outcome is either ``archived``
(outputs written, source in done/) or ``failed`` (source in failed/ with a report); transient
trouble only delays it, and a bad file never takes a worker down with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from transcribed.backends import Backend, Content, Job
from transcribed.errors import AuthError, ConfigError, LocalIOError, PermanentError
from transcribed.journal import JobRow, Journal, output_name
from transcribed.logs import get_logger
from transcribed.metrics import Metrics
from transcribed.outputs import Outputs
from transcribed.paths import is_inside, output_base_candidates, safe_lstat

log = get_logger("transcribed.pool")
#: Phases in which cancelling a job loses nothing but a wait.
SAFE_PHASES = frozenset({"queued", "hashing", "upload_wait", "polling"})
LOCAL_RETRY_S = (5.0, 15.0, 60.0, 300.0)
MAX_UNEXPECTED = 5
ADMIT_AT_ONCE = 16
#: Files up to this size are read once, for hashing and uploading both.
KEEP_CONTENT_BYTES = 1 << 20


@dataclass
class RunStats:
    done: int = 0
    failed: int = 0
    reused: int = 0


class _Checkpoints:
    """Journal-backed :class:`~transcribed.backends.Checkpoints` for one job."""

    def __init__(
        self,
        journal: Journal,
        job_id: int,
        phases: dict[int, str],
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._journal = journal
        self._id = job_id
        self._phases = phases
        self._release = release
        self._upload: dict[str, Any] = {}

    def uploaded(self, upload_url: str) -> None:
        # Recorded with the submit mark that follows at once, in one commit: should the
        # process die in between, the upload is only done again, which costs nothing.
        self._upload = {"upload_url": upload_url, "uploaded_at": time.time()}

    async def submitting(self) -> None:
        # Durable: after a power cut this is what sends a restart to look the submit up
        # instead of paying again.
        self._journal.update(self._id, **self._upload, submit_started_at=time.time())
        self._upload = {}
        await self._journal.durable()
        self._release()

    def submitted(self, transcript_id: str) -> None:
        # Not fsynced: should a power cut lose it, the durable submit_started_at sends the
        # restart to find this transcript in the list instead of submitting again.
        self._journal.set_state(
            self._id, "submitted", transcript_id=transcript_id, submitted_at=time.time()
        )
        self._release()

    def upload_lost(self) -> None:
        self._upload = {}
        self._journal.update(self._id, upload_url=None, uploaded_at=None, submit_started_at=None)

    def phase(self, name: str) -> None:
        self._phases[self._id] = name
        if name == "uploading":  # when the bytes start to flow, not when the job queued for it
            self._journal.update(self._id, upload_started_at=time.time())


class _Admission:
    """A place among the jobs between taking a file and submitting it; left at most once."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def enter(self) -> None:
        await self._semaphore.acquire()
        self._held = True

    def leave(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


def _sha256(path: Path, keep_up_to: int = 0) -> tuple[str, bytes | None]:
    """The file's sha256, and its bytes too when it is no larger than ``keep_up_to``."""
    digest = hashlib.sha256()
    kept = bytearray()
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            if len(kept) + len(chunk) <= keep_up_to:
                kept += chunk
            else:
                keep_up_to = 0
                kept.clear()
    return digest.hexdigest(), bytes(kept) if keep_up_to else None


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
        self._outputs = outputs
        self._inbox = inbox
        self._inbox_real = os.path.realpath(inbox)
        self._settle_s = settle_s
        self._dedupe = dedupe
        self._metrics = metrics or Metrics()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._phases: dict[int, str] = {}
        self._wake = asyncio.Event()
        self._unexpected: Counter[int] = Counter()
        self._deferrals: Counter[int] = Counter()
        # Jobs go from taking a file to submitting it a few at a time and in order, so with a
        # large backlog the first ones reach the service at once instead of every job's local
        # preparation competing with every upload.
        self._admitting = asyncio.Semaphore(ADMIT_AT_ONCE)
        self.stats = RunStats()
        self.fatal: BaseException | None = None

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
        task = asyncio.create_task(self._run_job(row), name=f"job-{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(functools.partial(self._finished, row.id))

    def _finished(self, job_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._phases.pop(job_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # _run_job handles everything; anything here is a bug worth stopping for.
            log.error("job_crashed", job_id=job_id, error=repr(exc))
            self.fatal = exc
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

    # -- one job ---------------------------------------------------------------------------
    async def _run_job(self, row: JobRow) -> None:
        structlog.contextvars.bind_contextvars(path=row.path, job_id=row.id)
        started = time.monotonic()
        source = self._inbox / row.path
        admission = _Admission(self._admitting)
        try:
            if row.state == "failed":
                await self._finish_failure(row, source)
                return
            if row.state == "completed":
                await self._archive(row, source, started)
                return
            await admission.enter()
            prepared = await self._prepare(row, source)
            if prepared is None:
                return
            job, row = prepared
            if job.transcript_id is not None:
                admission.leave()  # submitted before (a restart, or a reused transcript)
            checkpoints = _Checkpoints(self._journal, row.id, self._phases, admission.leave)
            result = await self._backend.transcribe(job, checkpoints)
            admission.leave()
            self._phases[row.id] = "writing"
            # ``row`` is as taken: what the backend recorded since is not needed here.
            base = row.output_base or self._reserve(row)
            await self._outputs.write(base, result)
            completed: dict[str, Any] = {
                "transcript_id": result.transcript_id,
                "audio_duration_s": result.audio_duration_s,
                "completed_at": time.time(),
                "last_error": None,
            }
            self._journal.set_state(row.id, "completed", **completed)
            if result.audio_duration_s:
                self._metrics.audio_seconds.inc(result.audio_duration_s)
            # What was just written, without reading it back.
            row = dataclasses.replace(row, state="completed", output_base=base, **completed)
            await self._archive(row, source, started)
        except PermanentError as exc:
            current = self._journal.get(row.id)
            if current.reused_from is not None and exc.status == 404:
                # The transcript we meant to reuse is gone (deleted): pay for this one after all.
                log.warning("duplicate_transcript_gone", transcript_id=current.transcript_id)
                self._journal.set_state(
                    row.id, "uploading", transcript_id=None, reused_from=None, submitted_at=None
                )
                return
            await self._fail(row, source, str(exc), exc.status, exc.transcript_id, started)
        except (AuthError, ConfigError) as exc:
            self.fatal = exc
            log.error("daemon_stopping", reason=str(exc))
        except LocalIOError as exc:
            self._retry_later(row, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unexpected[row.id] += 1
            log.exception("job_error", error=repr(exc))
            if self._unexpected[row.id] >= MAX_UNEXPECTED:
                await self._fail(row, source, f"internal error: {exc!r}", None, None, started)
            else:
                self._retry_later(row, repr(exc))
        finally:
            admission.leave()
            structlog.contextvars.unbind_contextvars("path", "job_id")

    async def _prepare(self, row: JobRow, source: Path) -> tuple[Job, JobRow] | None:
        """Check the source, hash it once, reserve output names; None if nothing to do now.

        Returns the job for the backend and the row as taken (what later steps read from it,
        the output name above all, is what the journal holds)."""
        info = self._present(source, row.path)
        if info is None:
            if row.state == "discovered":
                log.warning("source_vanished")
                self._journal.set_state(
                    row.id, "failed", source_moved=1, last_error="source left the inbox"
                )
                return None
            raise PermanentError("the source file left the inbox while it was being processed")
        if row.state == "uploading" and row.upload_url is None and row.upload_started_at:
            # An upload cut off before a restart: it is not in flight until it starts again.
            self._journal.update(row.id, upload_started_at=None)
        sha256 = row.sha256
        data: bytes | None = None
        if row.state == "discovered":
            unchanged = (info.st_size, info.st_mtime_ns) == (row.size, row.mtime_ns)
            if sha256 is None or not unchanged:
                self._phases[row.id] = "hashing"
                keep = KEEP_CONTENT_BYTES if self._backend.capabilities.dedupe else 0
                try:
                    sha256, data = await asyncio.to_thread(_sha256, source, keep)
                except OSError as exc:
                    raise PermanentError(f"cannot read the source: {exc.strerror}") from exc
                after = safe_lstat(source)
                if after is None or (after.st_size, after.st_mtime_ns) != (
                    info.st_size,
                    info.st_mtime_ns,
                ):
                    # Still being written: look again once it has been quiet for a while.
                    self._journal.update(
                        row.id,
                        size=after.st_size if after else row.size,
                        mtime_ns=after.st_mtime_ns if after else row.mtime_ns,
                        next_attempt_at=time.time() + self._settle_s,
                    )
                    return None
            if info.st_size == 0:
                raise PermanentError("the file is empty")
            facts: dict[str, Any] = {
                "sha256": sha256,
                "size": info.st_size,
                "mtime_ns": info.st_mtime_ns,
                "backend": self._backend.name,
            }
            taken = self._take(row, facts)
            if taken is None:
                return None
            row = taken
        job = Job(
            id=row.id,
            path=source,
            rel_path=row.path,
            size=info.st_size,
            sha256=sha256,
            upload_url=row.upload_url,
            transcript_id=row.transcript_id,
            submit_started_at=row.submit_started_at,
            submitted_at=row.submitted_at,
            attempts=row.attempts,
            content=Content(data) if data is not None and row.transcript_id is None else None,
        )
        return job, row

    def _present(self, source: Path, rel_path: str) -> os.stat_result | None:
        """``source``'s ``lstat`` when it is a regular file (not a link) really inside the
        inbox, where ``rel_path`` says it is; else None."""
        info = safe_lstat(source)
        if info is None or not self._in_inbox(source, rel_path):
            return None
        return info

    def _in_inbox(self, source: Path, rel_path: str) -> bool:
        """For :meth:`_present`, which has found ``source`` a regular file by ``lstat``: it
        really is in the inbox (the inbox resolved again before saying no, in case its own
        link was re-pointed)."""
        if "/" not in rel_path:
            return True  # not a link itself, and no folder between it and the inbox
        if is_inside(source, self._inbox, root_real=self._inbox_real):
            return True
        self._inbox_real = os.path.realpath(self._inbox)
        return is_inside(source, self._inbox, root_real=self._inbox_real)

    def _take(self, row: JobRow, facts: dict[str, Any]) -> JobRow | None:
        """Record a hashed file's facts, its next state and its output name in one statement
        (one commit); None when another job is uploading the same bytes and this one waits
        for it."""
        journal = self._journal
        other = None
        if self._dedupe and self._backend.capabilities.dedupe:
            other = journal.find_same_content(facts["sha256"], self._backend.name, row.id)
        if other is not None and other.transcript_id is None:
            # The same bytes are being uploaded by another job: wait for its transcript.
            journal.update(row.id, **facts, next_attempt_at=time.time() + 2.0)
            return None
        changes: dict[str, Any] = dict(facts)
        if other is not None:
            changes.update(
                transcript_id=other.transcript_id,
                submitted_at=other.submitted_at,
                reused_from=other.id,
            )
            state = "submitted"
        else:
            changes.update(attempts=row.attempts + 1)
            state = "uploading"
        if row.output_base is None:
            base = journal.free_output_base(
                row.id, output_base_candidates(row.path), self._outputs.base_in_use
            )
            changes.update(output_name(base))
        updated_at = journal.set_state(row.id, state, **changes)
        if other is not None:
            log.info("duplicate_reused", of=other.path, transcript_id=other.transcript_id)
            self.stats.reused += 1
        # What was just written, without reading it back.
        return dataclasses.replace(row, state=state, updated_at=updated_at, **changes)

    def _reserve(self, row: JobRow) -> str:
        return self._journal.reserve_output_base(
            row.id, output_base_candidates(row.path), self._outputs.base_in_use
        )

    async def _archive(self, row: JobRow, source: Path, started: float) -> None:
        self._phases[row.id] = "moving"
        if self._present(source, row.path) is not None:
            final = await self._outputs.archive(source, row.path)
        else:
            # Moved before a crash (the journal lagged), or no longer in the inbox (its folder
            # re-pointed elsewhere): nothing to move, and nothing outside the inbox is touched.
            final = row.final_path or row.path
        self._journal.set_state(
            row.id, "archived", source_moved=1, final_path=final, finished_at=time.time()
        )
        elapsed = self._count_outcome("done", started)
        log.info(
            "file_transcribed",
            outcome="done",
            seconds=round(elapsed, 3),
            transcript_id=row.transcript_id,
            outputs=row.output_base,
        )

    async def _fail(
        self,
        row: JobRow,
        source: Path,
        reason: str,
        status: int | None,
        transcript_id: str | None,
        started: float,
    ) -> None:
        self._journal.set_state(
            row.id,
            "failed",
            last_error=reason,
            error_status=status,
            output_base=None,
            output_key=None,
            transcript_id=transcript_id or self._journal.get(row.id).transcript_id,
        )
        await self._finish_failure(self._journal.get(row.id), source, started)

    async def _finish_failure(
        self, row: JobRow, source: Path, started: float | None = None
    ) -> None:
        self._phases[row.id] = "moving"
        report: dict[str, Any] = {
            "source": row.path,
            "reason": row.last_error,
            "http_status": row.error_status,
            "transcript_id": row.transcript_id,
            "backend": row.backend,
            "attempts": row.attempts,
            "sha256": row.sha256,
            "discovered_at": _iso(row.discovered_at),
            "submitted_at": _iso(row.submitted_at),
            "failed_at": _iso(time.time()),
        }
        present = self._present(source, row.path) is not None
        final = await self._outputs.fail(source if present else None, row.path, report)
        self._journal.update(row.id, source_moved=1, final_path=final, finished_at=time.time())
        elapsed = self._count_outcome("failed", started)
        log.warning(
            "file_failed",
            outcome="failed",
            seconds=round(elapsed, 3),
            transcript_id=row.transcript_id,
            reason=row.last_error,
        )

    def _count_outcome(self, outcome: str, started: float | None) -> float:
        """Count a finished file in the run's stats and metrics; returns its seconds."""
        elapsed = time.monotonic() - started if started is not None else 0.0
        if outcome == "done":
            self.stats.done += 1
        else:
            self.stats.failed += 1
        self._metrics.files.labels(outcome=outcome).inc()
        self._metrics.job_duration.labels(outcome=outcome).observe(elapsed)
        return elapsed

    def _retry_later(self, row: JobRow, reason: str) -> None:
        current = self._journal.get(row.id)
        delay = LOCAL_RETRY_S[min(self._deferrals[row.id], len(LOCAL_RETRY_S) - 1)]
        self._deferrals[row.id] += 1
        self._journal.update(row.id, last_error=reason, next_attempt_at=time.time() + delay)
        log.error("job_deferred", reason=reason, retry_in_s=delay, state=current.state)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
