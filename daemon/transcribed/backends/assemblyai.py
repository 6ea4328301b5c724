"""AssemblyAI backend: upload -> submit -> poll, checkpointing each remote step.

A job resumes from whatever its journal row recorded: a transcript id is polled again, an
upload URL is submitted without uploading, and a submit that was cut off before its answer was
recorded is first looked up in the account's transcript list, so it is never paid for twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from transcribed.backends import Capabilities, Checkpoints, Job, Result
from transcribed.backends.assemblyai_api import AssemblyAIClient
from transcribed.backends.assemblyai_status import POLL_SHARE, StatusTracker, audio_duration_s
from transcribed.config import AssemblyAISettings
from transcribed.errors import (
    PermanentError,
    SourceChangedError,
    TransientError,
    UploadExpiredError,
)
from transcribed.logs import get_logger
from transcribed.metrics import Metrics
from transcribed.webhooks import webhook_routes

log = get_logger("transcribed.assemblyai")
SUBTITLE_FORMATS = ("srt", "vtt")
#: How often a stuck job (queued or processing past ``stuck_after_s``) is still polled.
STUCK_POLL_S = 300.0
#: Longest a job puts off reading its audio's duration while other jobs upload or submit.
DURATION_DEFER_S = 1.0
#: Jobs in flight per unit of the account's concurrency: one running, one waiting in its queue.
QUEUE_AHEAD = 2
#: The header the service sends back with each webhook, holding this daemon's secret.
WEBHOOK_HEADER = "X-Transcribed-Webhook-Secret"


class AssemblyAIBackend:
    name = "assemblyai"

    def __init__(
        self,
        settings: AssemblyAISettings,
        transcription: dict[str, Any],
        formats: Sequence[str],
        metrics: Metrics | None = None,
        *,
        webhook_secret: str | None = None,
    ) -> None:
        self.settings = settings
        # The account's concurrency runs at the service, and as many again wait in its queue
        # (first in, first out): a slot freed there starts the next job at once, while the
        # backlog at the service stays bounded (uploads expire, transcripts are kept a while).
        self.max_concurrency = QUEUE_AHEAD * settings.max_concurrent_jobs
        self._params = dict(transcription)
        if settings.webhook_url and webhook_secret:
            self._params |= {
                "webhook_url": settings.webhook_url,
                "webhook_auth_header_name": WEBHOOK_HEADER,
                "webhook_auth_header_value": webhook_secret,
            }
        self.capabilities = Capabilities(
            dedupe=True, remote_status=True, webhooks="webhook_url" in self._params
        )
        self._subtitles = [fmt for fmt in formats if fmt in SUBTITLE_FORMATS]
        self._metrics = metrics or Metrics()
        self._client: AssemblyAIClient | None = None
        self._resources = contextlib.AsyncExitStack()
        self._uploads: asyncio.Semaphore | None = None
        self._polling = 0
        self._tracker: StatusTracker | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Jobs between their first upload byte and their transcript id; set while none are.
        self._sending = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def client(self) -> AssemblyAIClient:
        if self._client is None:
            raise RuntimeError("backend is not started")
        return self._client

    @property
    def tracker(self) -> StatusTracker:
        if self._tracker is None:
            raise RuntimeError("backend is not started")
        return self._tracker

    def health(self) -> str:
        if self._client is not None and self._client.degraded:
            return "degraded: the API has been failing"
        return "ok"

    def parts(self) -> dict[str, asyncio.Task[None]]:
        """The long-running task the daemon supervises: the status sweeper."""
        return {"status sweeper": self._sweeper} if self._sweeper is not None else {}

    def routes(self, known: Callable[[str], bool]) -> list[web.RouteDef]:
        """The webhook receiver, when webhooks are on. ``known``: a transcript id this daemon
        submitted earlier (the journal knows it), beside those a job waits for now."""
        secret = self._params.get("webhook_auth_header_value")
        if not isinstance(secret, str):
            return []

        def is_ours(transcript_id: str) -> bool:
            tracker = self._tracker
            return (tracker is not None and tracker.watching(transcript_id)) or known(transcript_id)

        def notify(transcript_id: str, status: str) -> None:
            if self._tracker is not None:
                self._tracker.notify(transcript_id, status)

        return webhook_routes(WEBHOOK_HEADER, secret, is_ours, notify)

    async def start(self) -> None:
        self._uploads = asyncio.Semaphore(self.settings.max_concurrent_uploads)
        self._resources = contextlib.AsyncExitStack()
        self._client = await self._resources.enter_async_context(
            AssemblyAIClient(self.settings, self._metrics)
        )
        self._tracker = StatusTracker(
            self._client, self.settings, webhooks="webhook_url" in self._params
        )
        self._sweeper = asyncio.create_task(self._tracker.run(), name="status-sweeper")
        try:
            # One attempt only: a rejected key must stop start-up (AuthError), but an
            # unreachable API must not; jobs retry on their own until it is back.
            await self.client.check_key()
        except TransientError as exc:
            log.warning("api_unreachable_at_start", error=str(exc))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            # A sweeper that died has been reported by the daemon's supervision already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sweeper
            self._sweeper = None
        await self._resources.aclose()
        self._client = None

    async def transcribe(self, job: Job, checkpoints: Checkpoints) -> Result:
        transcript_id, upload_url = job.transcript_id, job.upload_url
        if transcript_id is None:
            transcript_id, upload_url = await self._upload_and_submit(job, checkpoints)
        submitted_at = job.submitted_at or time.time()
        transcript = await self._poll(
            transcript_id,
            upload_url,
            checkpoints,
            fresh=job.transcript_id is None,
            submitted_at=submitted_at,
            # Webhooks say when a job is done: no plan of status checks, so no duration.
            audio=None if self.tracker.webhooks else _opener(job),
        )
        transcript_id = str(transcript["id"])
        subtitles = {
            fmt: await self.client.captions(transcript_id, fmt, self.settings.chars_per_caption)
            for fmt in self._subtitles
        }
        return Result(transcript=transcript, subtitles=subtitles)

    async def _upload(self, job: Job, checkpoints: Checkpoints) -> str:
        if self._uploads is None:
            raise RuntimeError("backend is not started")
        checkpoints.phase("upload_wait")
        async with self._uploads:
            checkpoints.phase("uploading")
            content = job.content.take() if job.content is not None else None
            url = await self.client.upload(
                _opener(job),
                job.size,
                self._metrics.upload_bytes.inc,
                content,
                sha256=job.sha256,
            )
        checkpoints.uploaded(url)
        return url

    async def _upload_and_submit(self, job: Job, checkpoints: Checkpoints) -> tuple[str, str]:
        self._sending += 1
        self._quiet.clear()
        try:
            return await self._send(job, checkpoints)
        finally:
            self._sending -= 1
            if not self._sending:
                self._quiet.set()

    async def _send(self, job: Job, checkpoints: Checkpoints) -> tuple[str, str]:
        upload_url = job.upload_url
        if upload_url is not None and job.submit_started_at is not None:
            # A submit was sent before a crash, but its answer never reached the journal.
            checkpoints.phase("reconciling")
            found = await self.client.find_by_audio_url(upload_url, job.submit_started_at)
            if found is not None:
                log.info("submit_recovered", transcript_id=found)
                checkpoints.submitted(found)
                return found, upload_url
        if upload_url is None:
            upload_url = await self._upload(job, checkpoints)
        for _ in range(3):
            checkpoints.phase("submitting")
            await checkpoints.submitting()
            try:
                transcript_id = await self.client.submit({**self._params, "audio_url": upload_url})
            except UploadExpiredError:
                log.warning("upload_url_rejected", upload_url=upload_url)
                checkpoints.upload_lost()
                upload_url = await self._upload(job, checkpoints)
                continue
            checkpoints.submitted(transcript_id)
            return transcript_id, upload_url
        raise PermanentError("the API keeps refusing fresh uploads of this file (403)")

    def _fallback_wait_s(self, waited_s: float) -> float:
        """A job's own poll interval: long while sweeps or webhooks report for it, and never
        more often than its share of the request budget allows."""
        own = self.tracker.fallback_interval_s(waited_s)
        return max(own, self._polling / (self.settings.requests_per_s * POLL_SHARE))

    async def _poll(
        self,
        transcript_id: str,
        upload_url: str | None,
        checkpoints: Checkpoints,
        *,
        fresh: bool,
        submitted_at: float,
        audio: Path | Callable[[], BinaryIO] | None,
    ) -> dict[str, Any]:
        s = self.settings
        tracker = self.tracker
        started = time.monotonic()
        look_now = not fresh  # resumed after a restart: it may have finished meanwhile
        stuck_reported = resubmitted = False
        duration_s: float | None = None  # read below when status checks need planning
        finished = tracker.watch(
            transcript_id, submitted_at, None, duration_pending=audio is not None
        )
        self._polling += 1
        try:
            if audio is not None:
                checkpoints.phase("polling")
                # A resumed job looks at once: it may have finished meanwhile.
                duration_s = await self._duration_s(audio, defer=fresh)
                tracker.set_duration(transcript_id, duration_s)
            while True:
                checkpoints.phase("polling")
                if not look_now:
                    wait_s = self._fallback_wait_s(time.monotonic() - started)
                    if stuck_reported:
                        wait_s = max(wait_s, STUCK_POLL_S)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await finished.wait()
                look_now = False
                finished.clear()
                transcript = await self._fetch(transcript_id)
                status = transcript.get("status")
                if status == "completed":
                    if fresh:
                        tracker.observe(transcript_id, duration_s)
                    return transcript
                if status == "error":
                    raise PermanentError(
                        f"transcription failed: {transcript.get('error') or 'no reason given'}",
                        transcript_id=transcript_id,
                    )
                age_s = time.time() - submitted_at
                if age_s < s.stuck_after_s:
                    continue
                if not stuck_reported:
                    stuck_reported = True
                    log.warning(
                        "job_stuck", transcript_id=transcript_id, status=status, age_s=round(age_s)
                    )
                if s.resubmit_stuck and not resubmitted and upload_url is not None:
                    resubmitted = True
                    checkpoints.phase("submitting")
                    await checkpoints.submitting()
                    new_id = await self.client.submit({**self._params, "audio_url": upload_url})
                    checkpoints.submitted(new_id)
                    log.warning("job_resubmitted", transcript_id=new_id, previous=transcript_id)
                    tracker.forget(transcript_id)
                    transcript_id, submitted_at = new_id, time.time()
                    finished = tracker.watch(new_id, submitted_at, duration_s)
                    started, stuck_reported = time.monotonic(), False
        finally:
            tracker.forget(transcript_id)
            self._polling -= 1

    async def _duration_s(
        self, audio: Path | Callable[[], BinaryIO], *, defer: bool
    ) -> float | None:
        """The audio's duration from its header, which plans this job's status checks, seconds
        away. With ``defer``, read once no job is uploading or submitting (or after
        ``DURATION_DEFER_S``): the header parser is Python holding the interpreter lock, and
        with a backlog every submit it delays delays a whole wave of transcripts."""
        if defer:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DURATION_DEFER_S):
                    await self._quiet.wait()
        return await asyncio.to_thread(_read_duration_s, audio)

    async def _fetch(self, transcript_id: str) -> dict[str, Any]:
        try:
            return await self.client.get(transcript_id)
        except PermanentError as exc:
            raise PermanentError(
                f"cannot fetch transcript {transcript_id}: {exc}",
                status=exc.status,
                transcript_id=transcript_id,
            ) from exc


def _opener(job: Job) -> Path | Callable[[], BinaryIO]:
    """How to read the job's source: by handle when the pool took it so, else by path."""
    return job.source.open if job.source is not None else job.path


def _read_duration_s(audio: Path | Callable[[], BinaryIO]) -> float | None:
    """The audio's duration from its header (blocking), None if it cannot be read: a source
    that changed or left meanwhile is the job's business, not the status plan's."""
    if isinstance(audio, Path):
        return audio_duration_s(audio)
    try:
        with audio() as handle:
            return audio_duration_s(handle)
    except (OSError, SourceChangedError):
        return None
