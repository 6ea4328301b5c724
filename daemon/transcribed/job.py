"""One job's steps: check the source, hash it, take it, transcribe, write, archive or fail.

The pool (:mod:`transcribed.pool`) decides which job runs when; this module runs one. Every
state change goes through :meth:`Journal.set_state`, which checks it against
:data:`transcribed.journal.TRANSITIONS`. A step that stops a job without an outcome (the file
is still being written, the same bytes are on their way already) says why with a
:class:`Skip`.

The inbox is hostile. A source is opened by handle (:func:`~transcribed.paths.open_beneath`):
never through a link, never a FIFO. It is hashed, sent and measured from that descriptor.
Before its outputs are written, and again before it moves to done/, its size, mtime and inode
must still be those that were hashed. A source that changed is a new version: it goes back to
``discovered`` and keeps nothing of the old one but its output name. One that keeps changing
fails after ``MAX_TAKES``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from transcribed.backends import Backend, Content, Job
from transcribed.checkpoints import Admission, JournalCheckpoints
from transcribed.errors import (
    AuthError,
    ConfigError,
    LocalIOError,
    PermanentError,
    SourceChangedError,
)
from transcribed.journal import JobRow, Journal, State, output_name
from transcribed.logs import get_logger
from transcribed.metrics import Metrics
from transcribed.outputs import Outputs
from transcribed.paths import (
    FileIdentity,
    SourceFile,
    open_beneath,
    output_base_candidates,
    printable,
    stat_beneath,
)

log = get_logger("transcribed.job")
LOCAL_RETRY_S = (5.0, 15.0, 60.0, 300.0)
MAX_UNEXPECTED = 5
#: Files up to this size are read once, for hashing and uploading both.
KEEP_CONTENT_BYTES = 1 << 20
#: How often a file is taken (hashed and sent) before one that keeps changing under the daemon
#: fails, with a report, instead of holding an upload slot for ever.
MAX_TAKES = 3
#: How often a job meets a local error that no retry can mend before it fails.
HOPELESS_ATTEMPTS = 2
#: Errors opening a source that say the process ran out of something: they pass.
_RUN_OUT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Local errors that stay however often the job retries (until the operator acts).
_NEVER_MENDS = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR})


class Skip(StrEnum):
    """Why a job's run ended without an outcome; the pool takes it again when it is due."""

    VANISHED = "vanished"
    """The source left the inbox before it was taken: recorded as failed, nothing to move."""
    SETTLING = "settling"
    """The source changed while it was hashed: it is looked at again once it is quiet."""
    SAME_BYTES_IN_FLIGHT = "same_bytes_in_flight"
    """Another job is uploading the same bytes: this one waits to reuse its transcript."""


@dataclass
class RunStats:
    done: int = 0
    failed: int = 0
    reused: int = 0


def _hash(fd: int, keep_up_to: int = 0) -> tuple[str, bytes | None, os.stat_result]:
    """An open file's sha256, its bytes too when it is no larger than ``keep_up_to``, and its
    ``fstat`` once read (blocking). Reads by offset: the descriptor's own position is left
    for whoever reads it next."""
    digest = hashlib.sha256()
    kept = bytearray()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        offset += len(chunk)
        digest.update(chunk)
        if len(kept) + len(chunk) <= keep_up_to:
            kept += chunk
        else:
            keep_up_to = 0
            kept.clear()
    return digest.hexdigest(), bytes(kept) if keep_up_to else None, os.fstat(fd)


def _source_error(exc: OSError) -> LocalIOError | PermanentError:
    """What reading a source failed with, as what the job does about it: out of descriptors
    or memory is our side and passes (retry); anything else is this file's (fail it)."""
    if exc.errno in _RUN_OUT:
        return LocalIOError(f"cannot open the source now: {exc.strerror}")
    return PermanentError(f"cannot read the source: {exc.strerror or exc}")


def _hopeless(exc: LocalIOError) -> bool:
    """True when no retry can mend ``exc``: a name too long where it has to go, a file in
    the way of a folder. The operator fixes the folders, then ``transcribed retry``."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in _NEVER_MENDS


class JobSteps:
    """Runs one job at a time per call to :meth:`run`; shared by every job of a pool."""

    def __init__(
        self,
        journal: Journal,
        backend: Backend,
        outputs: Outputs,
        inbox: Path,
        *,
        phases: dict[int, str],
        settle_s: float = 2.0,
        dedupe: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self._journal = journal
        self._backend = backend
        self._outputs = outputs
        self._inbox = inbox
        self._settle_s = settle_s
        self._dedupe = dedupe
        self._metrics = metrics or Metrics()
        self._phases = phases
        self._unexpected: Counter[int] = Counter()
        self._deferrals: Counter[int] = Counter()
        self._hopeless: Counter[int] = Counter()
        self.stats = RunStats()
        #: An error that must stop the daemon (a refused key, a broken configuration).
        self.fatal: BaseException | None = None

    async def run(self, row: JobRow, admission: Admission) -> None:
        """Take one job as far as it can go now; never raises for a bad file."""
        structlog.contextvars.bind_contextvars(path=row.path, job_id=row.id)
        started = time.monotonic()
        source: SourceFile | None = None
        try:
            if row.state == State.FAILED:
                await self._finish_failure(row)
                return
            if row.state == State.COMPLETED:
                await self._archive(row, None, started)
                return
            await admission.enter()
            prepared = await self._prepare(row)
            if isinstance(prepared, Skip):
                log.debug("job_skipped", reason=prepared.value)
                return
            job, row = prepared
            source = job.source
            if job.transcript_id is not None:
                admission.leave()  # submitted before (a restart, or a reused transcript)
            checkpoints = JournalCheckpoints(
                self._journal, row.id, self._phases, admission.leave, job.source
            )
            result = await self._backend.transcribe(job, checkpoints)
            admission.leave()
            self._phases[row.id] = "writing"
            # Before anything is written: the transcript is of the bytes that were hashed,
            # and they must still be what the inbox holds.
            await self._check_unchanged(row, source)
            # ``row`` is as taken: what the backend recorded since is not needed here.
            base = row.output_base or self._reserve(row)
            await self._outputs.write(base, result)
            completed: dict[str, Any] = {
                "transcript_id": result.transcript_id,
                "audio_duration_s": result.audio_duration_s,
                "completed_at": time.time(),
                "last_error": None,
            }
            self._journal.set_state(row.id, State.COMPLETED, **completed)
            if result.audio_duration_s:
                self._metrics.audio_seconds.inc(result.audio_duration_s)
            # What was just written, without reading it back.
            row = dataclasses.replace(row, state=State.COMPLETED, output_base=base, **completed)
            await self._archive(row, source, started)
        except SourceChangedError as exc:
            await self._taken_again(row, source, str(exc), started)
        except PermanentError as exc:
            current = self._journal.get(row.id)
            if current.reused_from is not None and exc.status == 404:
                # The transcript we meant to reuse is gone (deleted): pay for this one after all.
                log.warning("duplicate_transcript_gone", transcript_id=current.transcript_id)
                self._journal.set_state(
                    row.id, State.UPLOADING, transcript_id=None, reused_from=None, submitted_at=None
                )
                return
            await self._fail(row, str(exc), exc.status, exc.transcript_id, started)
        except (AuthError, ConfigError) as exc:
            self.fatal = exc
            log.error("daemon_stopping", reason=str(exc))
        except LocalIOError as exc:
            await self._local_trouble(row, exc, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unexpected[row.id] += 1
            log.exception("job_error", error=repr(exc))
            if self._unexpected[row.id] >= MAX_UNEXPECTED:
                await self._fail(row, f"internal error: {exc!r}", None, None, started)
            else:
                self._retry_later(row, repr(exc))
        finally:
            admission.leave()
            if source is not None:
                source.release()
            structlog.contextvars.unbind_contextvars("path", "job_id")

    # -- taking the file -------------------------------------------------------------------
    async def _open(self, row: JobRow) -> tuple[int, os.stat_result] | None:
        """The source, opened by handle from the inbox (in a thread: a share may hang)."""
        try:
            return await asyncio.to_thread(open_beneath, self._inbox, row.path)
        except OSError as exc:
            raise _source_error(exc) from exc

    async def _prepare(self, row: JobRow) -> tuple[Job, JobRow] | Skip:
        """Open the source by handle, hash it once, reserve output names; a :class:`Skip`
        if there is nothing to do now.

        Returns the job for the backend and the row as taken (what later steps read from it,
        the output name above all, is what the journal holds). The job's source keeps the
        descriptor that was hashed until its bytes are sent."""
        opened = await self._open(row)
        if opened is None:
            if row.state == State.DISCOVERED:
                log.warning("source_vanished")
                self._journal.set_state(
                    row.id, State.FAILED, source_moved=1, last_error="source left the inbox"
                )
                return Skip.VANISHED
            raise PermanentError("the source file left the inbox while it was being processed")
        fd, info = opened
        try:
            prepared = await self._take_open(row, fd, info)
        except BaseException:
            os.close(fd)
            raise
        if isinstance(prepared, Skip) or prepared[0].source is None or not prepared[0].source.held:
            os.close(fd)  # not handed to the job's source: nothing of it is still to be sent
        return prepared

    async def _take_open(
        self, row: JobRow, fd: int, info: os.stat_result
    ) -> tuple[Job, JobRow] | Skip:
        """:meth:`_prepare` once the source is open; the job's source holds ``fd`` while its
        bytes are still to be sent (else the caller closes it)."""
        if row.state == State.UPLOADING and row.upload_url is None and row.upload_started_at:
            # An upload cut off before a restart: it is not in flight until it starts again.
            self._journal.update(row.id, upload_started_at=None)
        recorded = (row.size, row.mtime_ns)
        if (info.st_size, info.st_mtime_ns) != recorded:
            if row.state != State.DISCOVERED:
                raise SourceChangedError("the source changed since it was taken")
            # Written to again since it settled: let it settle again.
            return self._settling(row, info)
        sha256 = row.sha256
        data: bytes | None = None
        if row.state == State.DISCOVERED:
            if sha256 is None:
                self._phases[row.id] = "hashing"
                keep = KEEP_CONTENT_BYTES if self._backend.capabilities.dedupe else 0
                try:
                    sha256, data, after = await asyncio.to_thread(_hash, fd, keep)
                except OSError as exc:
                    raise _source_error(exc) from exc
                if (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns):
                    return self._settling(row, after)  # still being written
            if info.st_size == 0:
                raise PermanentError("the file is empty")
            facts: dict[str, Any] = {
                "sha256": sha256,
                "size": info.st_size,
                "mtime_ns": info.st_mtime_ns,
                "backend": self._backend.name,
            }
            taken = self._take(row, facts)
            if isinstance(taken, Skip):
                return taken
            row = taken
        sends = row.transcript_id is None and row.upload_url is None
        source = SourceFile(self._inbox, row.path, FileIdentity.of(info), fd if sends else None)
        job = Job(
            id=row.id,
            path=self._inbox / row.path,
            rel_path=row.path,
            size=info.st_size,
            sha256=sha256,
            upload_url=row.upload_url,
            transcript_id=row.transcript_id,
            submit_started_at=row.submit_started_at,
            submitted_at=row.submitted_at,
            attempts=row.attempts,
            content=Content(data) if data is not None and row.transcript_id is None else None,
            source=source,
        )
        return job, row

    def _settling(self, row: JobRow, info: os.stat_result) -> Skip:
        """Record what the source looks like now, and look again once it has been quiet."""
        self._journal.update(
            row.id,
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            sha256=None,
            next_attempt_at=time.time() + self._settle_s,
        )
        return Skip.SETTLING

    def _take(self, row: JobRow, facts: dict[str, Any]) -> JobRow | Skip:
        """Record a hashed file's facts, its next state and its output name in one statement
        (one commit); :attr:`Skip.SAME_BYTES_IN_FLIGHT` when another job is uploading the
        same bytes and this one waits for it."""
        journal = self._journal
        other = None
        if self._dedupe and self._backend.capabilities.dedupe:
            other = journal.find_same_content(facts["sha256"], self._backend.name, row.id)
        if other is not None and other.transcript_id is None:
            # The same bytes are being uploaded by another job: wait for its transcript.
            journal.update(row.id, **facts, next_attempt_at=time.time() + 2.0)
            return Skip.SAME_BYTES_IN_FLIGHT
        changes: dict[str, Any] = dict(facts)
        if other is not None:
            changes.update(
                transcript_id=other.transcript_id,
                submitted_at=other.submitted_at,
                reused_from=other.id,
            )
            state = State.SUBMITTED
        else:
            changes.update(attempts=row.attempts + 1)
            state = State.UPLOADING
        if row.output_base is None:
            base = self._free_base(row)
            changes.update(output_name(base))
        updated_at = journal.set_state(row.id, state, **changes)
        if other is not None:
            log.info("duplicate_reused", of=other.path, transcript_id=other.transcript_id)
            self.stats.reused += 1
        # What was just written, without reading it back.
        return dataclasses.replace(row, state=state, updated_at=updated_at, **changes)

    def _free_base(self, row: JobRow) -> str:
        try:
            return self._journal.free_output_base(
                row.id, output_base_candidates(row.path), self._outputs.base_in_use
            )
        except OSError as exc:  # the outbox cannot even be asked (a name too long for it)
            raise LocalIOError(f"cannot look for an output name: {exc.strerror}") from exc

    def _reserve(self, row: JobRow) -> str:
        try:
            return self._journal.reserve_output_base(
                row.id, output_base_candidates(row.path), self._outputs.base_in_use
            )
        except OSError as exc:
            raise LocalIOError(f"cannot look for an output name: {exc.strerror}") from exc

    # -- checking it is still the same file ------------------------------------------------
    async def _look(self, row: JobRow) -> FileIdentity | None:
        """What is at the job's path now, reached by handle (not opened: it may be
        unreadable, or a FIFO); None if no regular file."""
        try:
            info = await asyncio.to_thread(stat_beneath, self._inbox, row.path)
        except OSError as exc:
            raise _source_error(exc) from exc
        return FileIdentity.of(info) if info is not None else None

    async def _check_unchanged(self, row: JobRow, source: SourceFile | None) -> None:
        """Raise :class:`SourceChangedError` when the inbox holds another version of the file
        than the one that was hashed. A source that left (or whose folder now leads out of
        the inbox) keeps its transcript, which is of its own bytes; it is not moved."""
        current = await self._look(row)
        hashed = source.identity if source is not None else FileIdentity(row.size, row.mtime_ns)
        if current is not None and not hashed.same_file(current):
            raise SourceChangedError("the source changed while it was being transcribed")

    async def _taken_again(
        self, row: JobRow, source: SourceFile | None, reason: str, started: float
    ) -> None:
        """A source that changed after it was hashed: nothing it got so far is kept (hash,
        upload, transcript) but its output name, and it settles again as a new version; one
        that keeps changing fails after ``MAX_TAKES``."""
        if source is not None:
            source.release()
        current = self._journal.get(row.id)
        now = await self._look(row)
        if now is None:
            await self._fail(
                row,
                "the source file left the inbox while it was being processed",
                None,
                None,
                started,
            )
            return
        if current.attempts >= MAX_TAKES:
            await self._fail(
                row,
                f"the file kept changing while it was being transcribed ({reason}; taken "
                f"{current.attempts} times); put it back once it is complete",
                None,
                None,
                started,
            )
            return
        self._journal.set_state(
            row.id,
            State.DISCOVERED,
            size=now.size,
            mtime_ns=now.mtime_ns,
            sha256=None,
            upload_url=None,
            upload_started_at=None,
            uploaded_at=None,
            submit_started_at=None,
            transcript_id=None,
            submitted_at=None,
            reused_from=None,
            audio_duration_s=None,
            completed_at=None,
            last_error=reason,
            next_attempt_at=time.time() + self._settle_s,
        )
        log.warning("source_changed", reason=reason, attempts=current.attempts)

    # -- outcomes --------------------------------------------------------------------------
    async def _archive(self, row: JobRow, source: SourceFile | None, started: float) -> None:
        self._phases[row.id] = "moving"
        current = await self._look(row)
        if current is None:
            # Moved before a crash (the journal lagged), or no longer in the inbox (a folder
            # on its way re-pointed elsewhere): nothing to move, and nothing outside the inbox
            # is touched.
            final = row.final_path or row.path
        else:
            hashed = source.identity if source is not None else FileIdentity(row.size, row.mtime_ns)
            if not hashed.same_file(current):
                raise SourceChangedError("the source changed before it was archived")
            final = await self._outputs.archive(self._inbox / row.path, row.path)
        self._journal.set_state(
            row.id, State.ARCHIVED, source_moved=1, final_path=final, finished_at=time.time()
        )
        elapsed = self._count_outcome("done", started)
        log.info(
            "file_transcribed",
            outcome="done",
            seconds=round(elapsed, 3),
            transcript_id=row.transcript_id,
            outputs=row.output_base,
        )

    async def _local_trouble(self, row: JobRow, exc: LocalIOError, started: float) -> None:
        """Our own side failed (disk, descriptors): retry later; but a failure no retry can
        mend fails the file after ``HOPELESS_ATTEMPTS``, with a report saying what to fix."""
        if row.state != State.FAILED and _hopeless(exc):
            self._hopeless[row.id] += 1
            if self._hopeless[row.id] >= HOPELESS_ATTEMPTS:
                await self._fail(row, f"{exc} (retrying cannot mend this)", None, None, started)
                return
        self._retry_later(row, str(exc))

    async def _fail(
        self,
        row: JobRow,
        reason: str,
        status: int | None,
        transcript_id: str | None,
        started: float,
    ) -> None:
        self._journal.set_state(
            row.id,
            State.FAILED,
            last_error=reason,
            error_status=status,
            output_base=None,
            output_key=None,
            transcript_id=transcript_id or self._journal.get(row.id).transcript_id,
        )
        failed = self._journal.get(row.id)
        try:
            await self._finish_failure(failed, started)
        except LocalIOError as exc:
            # Recorded as failed: the move and the report are tried again later.
            self._retry_later(failed, str(exc))

    async def _finish_failure(self, row: JobRow, started: float | None = None) -> None:
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
        report = {key: printable(v) if isinstance(v, str) else v for key, v in report.items()}
        # Any regular file still at its path goes, as it is now.
        try:
            present = await self._look(row) is not None
        except PermanentError:
            present = False  # a folder on its way cannot be searched: leave it be
        source = self._inbox / row.path
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
