"""AssemblyAI backend: upload -> submit -> poll, checkpointing each remote step.

A job resumes from whatever its journal row recorded: a transcript id is polled again, an
upload URL is submitted without uploading, and a submit that was cut off before its answer was
recorded is first looked up in the account's transcript list, so it is never paid for twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from transcribed.backends import Checkpoints, Job, Result
from transcribed.backends.assemblyai_api import AssemblyAIClient
from transcribed.config import AssemblyAISettings
from transcribed.errors import PermanentError, TransientError, UploadExpiredError
from transcribed.logs import get_logger
from transcribed.metrics import Metrics

log = get_logger("transcribed.assemblyai")
SUBTITLE_FORMATS = ("srt", "vtt")
#: The share of the request budget that polling may use; uploads and submits get the rest.
POLL_SHARE = 0.5
#: How often a stuck job (queued or processing past ``stuck_after_s``) is still polled.
STUCK_POLL_S = 300.0


class AssemblyAIBackend:
    name = "assemblyai"

    def __init__(
        self,
        settings: AssemblyAISettings,
        transcription: dict[str, Any],
        formats: Sequence[str],
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.max_concurrency = settings.max_concurrent_jobs
        self._params = dict(transcription)
        self._subtitles = [fmt for fmt in formats if fmt in SUBTITLE_FORMATS]
        self._metrics = metrics or Metrics()
        self._client: AssemblyAIClient | None = None
        self._uploads: asyncio.Semaphore | None = None
        self._polling = 0
        self.key_checked = False

    @property
    def client(self) -> AssemblyAIClient:
        if self._client is None:
            raise RuntimeError("backend is not started")
        return self._client

    async def start(self) -> None:
        self._uploads = asyncio.Semaphore(self.settings.max_concurrent_uploads)
        self._client = await AssemblyAIClient(self.settings, self._metrics).__aenter__()
        try:
            # One attempt only: a rejected key must stop start-up (AuthError), but an
            # unreachable API must not; jobs retry on their own until it is back.
            await self.client._once("GET", "/v2/transcript", "list", params={"limit": "1"})
            self.key_checked = True
        except TransientError as exc:
            log.warning("api_unreachable_at_start", error=str(exc))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def transcribe(self, job: Job, checkpoints: Checkpoints) -> Result:
        transcript_id, upload_url = job.transcript_id, job.upload_url
        if transcript_id is None:
            transcript_id, upload_url = await self._upload_and_submit(job, checkpoints)
        transcript = await self._poll(
            transcript_id,
            upload_url,
            checkpoints,
            fresh=job.transcript_id is None,
            submitted_at=job.submitted_at or time.time(),
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
            url = await self.client.upload(job.path, job.size, self._metrics.upload_bytes.inc)
        checkpoints.uploaded(url)
        return url

    async def _upload_and_submit(self, job: Job, checkpoints: Checkpoints) -> tuple[str, str]:
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
            checkpoints.submitting()
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

    def _poll_interval(self, waited_s: float) -> float:
        """Poll often at first, then less; never more than the request budget allows.

        Polls of all jobs together may use ``POLL_SHARE`` of ``requests_per_s``, so the
        interval grows with the number of jobs being polled instead of flooding the API.
        """
        s = self.settings
        own = min(s.poll_max_s, max(s.poll_min_s, waited_s * 0.25))
        return max(own, self._polling / (s.requests_per_s * POLL_SHARE))

    async def _poll(
        self,
        transcript_id: str,
        upload_url: str | None,
        checkpoints: Checkpoints,
        *,
        fresh: bool,
        submitted_at: float,
    ) -> dict[str, Any]:
        s = self.settings
        delay = s.poll_min_s if fresh else 0.0
        started = time.monotonic()
        stuck_reported = resubmitted = False
        self._polling += 1
        try:
            while True:
                checkpoints.phase("polling")
                if delay:
                    await asyncio.sleep(delay)
                transcript = await self._fetch(transcript_id)
                status = transcript.get("status")
                if status == "completed":
                    return transcript
                if status == "error":
                    raise PermanentError(
                        f"transcription failed: {transcript.get('error') or 'no reason given'}",
                        transcript_id=transcript_id,
                    )
                age_s = time.time() - submitted_at
                if age_s < s.stuck_after_s:
                    delay = self._poll_interval(time.monotonic() - started)
                    continue
                if not stuck_reported:
                    stuck_reported = True
                    log.warning(
                        "job_stuck", transcript_id=transcript_id, status=status, age_s=round(age_s)
                    )
                if s.resubmit_stuck and not resubmitted and upload_url is not None:
                    resubmitted = True
                    checkpoints.phase("submitting")
                    checkpoints.submitting()
                    transcript_id = await self.client.submit(
                        {**self._params, "audio_url": upload_url}
                    )
                    checkpoints.submitted(transcript_id)
                    log.warning("job_resubmitted", transcript_id=transcript_id)
                    submitted_at, started, stuck_reported = time.time(), time.monotonic(), False
                    delay = s.poll_min_s
                    continue
                delay = max(STUCK_POLL_S, self._poll_interval(time.monotonic() - started))
        finally:
            self._polling -= 1

    async def _fetch(self, transcript_id: str) -> dict[str, Any]:
        try:
            return await self.client.get(transcript_id)
        except PermanentError as exc:
            raise PermanentError(
                f"cannot fetch transcript {transcript_id}: {exc}",
                status=exc.status,
                transcript_id=transcript_id,
            ) from exc
