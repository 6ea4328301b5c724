"""A fake AssemblyAI v2 API on 127.0.0.1, for tests and benchmarks.

    async with FakeAssemblyAI(FakeConfig(api_keys=("test-key",), latency_s=0.2)) as fake:
        ...  # point a client at fake.base_url

Jobs move queued -> processing -> completed/error on the server's own loop, at most
`concurrency` at once per account (one account per API key), the others waiting in a first in,
first out queue. Processing takes `latency_s` plus `latency_per_audio_s` per second of audio
(an MP3's length is read from its header). `upload_bandwidth_bps` caps all uploads together,
shared fairly. See `FakeConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from fakeapi import faults
from fakeapi.content import (
    MIN_AUDIO_MS,
    SNIFF_BYTES,
    audio_ms_of,
    describe_file_type,
    looks_like_audio,
    transcribe,
)
from fakeapi.counters import DROPPED, FakeCounters
from fakeapi.faults import FaultConfig, FaultInjector
from fakeapi.handlers import Routes, error_response
from fakeapi.mp3 import PREFIX_BYTES
from fakeapi.records import CDN_UPLOAD_PREFIX, TranscriptRecord, UploadRecord, utc_now
from fakeapi.schema import ParamsError, validate_params
from fakeapi.uplink import SharedUplink

log = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024
_UNAUTHORIZED = "Authentication error, API token missing/invalid"


@dataclass(slots=True)
class FakeConfig:
    """How the fake behaves. Fields may be changed while it runs; new values apply to what
    happens next (a job reads the latency when it starts; call `reschedule()` after raising
    a concurrency cap to start queued jobs at once)."""

    api_keys: tuple[str, ...] = ("test-key",)
    host: str = "127.0.0.1"
    port: int = 0
    latency_s: float = 0.2
    """Time a job spends in "processing"."""
    latency_per_audio_s: float = 0.0
    """Extra processing time per second of audio (20 / 3600: 20 s per audio hour)."""
    concurrency: int = 5
    """Jobs processed at once per account; the rest stay "queued", first in first out."""
    upload_bandwidth_bps: float | None = None
    """Bytes per second that all uploads together may send, shared fairly; None: no limit."""
    concurrency_by_key: dict[str, int] = field(default_factory=dict)
    faults: FaultConfig = field(default_factory=FaultConfig)
    error_for: set[str] = field(default_factory=set)
    """Content sha256s whose transcripts end in status "error" although they are audio."""
    error_message: str = "Internal error: the transcription could not be completed."
    webhook_attempts: int = 10
    webhook_retry_delay_s: float = 0.1
    webhook_timeout_s: float = 10.0
    shutdown_timeout_s: float = 1.0


class FakeAssemblyAI:
    """The fake service. Construct, then `async with` (or `start()`/`stop()`)."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.counters = FakeCounters()
        self.transcripts: dict[str, TranscriptRecord] = {}
        self.uploads: dict[str, UploadRecord] = {}
        self.background_errors: list[BaseException] = []
        self._faults = FaultInjector()
        self._uplink = SharedUplink()
        self._seq = itertools.count(1)
        self._queues: defaultdict[str, deque[TranscriptRecord]] = defaultdict(deque)
        self._running: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base_url: str | None = None
        self._stopping = False
        self._closing = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """e.g. "http://127.0.0.1:43121"; only known once started."""
        if self._base_url is None:
            raise RuntimeError("FakeAssemblyAI is not running")
        return self._base_url

    async def start(self) -> None:
        """Listen on config.host:config.port (0 picks a free port)."""
        if self._runner is not None:
            raise RuntimeError("FakeAssemblyAI is already running")
        self._stopping = False
        self._bind_events()
        app = web.Application(middlewares=[self._middleware])
        Routes(self).add_to(app)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.config.shutdown_timeout_s
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._session = aiohttp.ClientSession()
        self._base_url = f"http://{host}:{port}"

    def _bind_events(self) -> None:
        """Fresh events for this run's loop, keeping whether jobs are held."""
        held = not self._released.is_set()
        self._changed, self._closing, self._released = (asyncio.Event() for _ in range(3))
        if not held:
            self._released.set()

    async def stop(self) -> None:
        """Cancel jobs and webhooks, close the listener and the webhook client."""
        self._stopping = True
        self._closing.set()  # cuts "slow" answers short
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        runner, self._runner = self._runner, None
        session, self._session = self._session, None
        if runner is not None:
            await runner.cleanup()
        if session is not None:
            await session.close()
        self._base_url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- knobs for tests -----------------------------------------------------------------

    def fail_next(
        self, route: str, status: int | None = 503, *, kind: str | None = None, times: int = 1
    ) -> None:
        """Fault the next `times` requests to `route` ("POST /v2/transcript", or "*" for any).

        `status` gives a status fault (429, 500, 503, any 4xx/5xx); `kind` instead gives
        "drop", "drop_mid_upload" or "slow". Scripted faults fire before random ones.
        """
        chosen = kind if kind is not None else str(status)
        self._faults.fail_next(route, chosen, times)

    def clear_faults(self) -> None:
        """Forget scripted faults that have not fired yet."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many scripted faults are still to fire."""
        return self._faults.pending

    def forget_uploads(self, api_key: str | None = None) -> None:
        """Drop upload records (of one account, or all): submits naming them get 403."""
        for url, upload in list(self.uploads.items()):
            if api_key is None or upload.account == api_key:
                del self.uploads[url]

    def hold_jobs(self) -> None:
        """Keep jobs in "processing" past their latency until `release_jobs()`."""
        self._released.clear()

    def release_jobs(self) -> None:
        """Let held jobs finish."""
        self._released.set()

    def reschedule(self) -> None:
        """Start queued jobs that the (possibly raised) concurrency caps now allow."""
        for account in list(self._queues):
            self._dispatch(account)

    def reset_counters(self) -> None:
        """Zero every counter."""
        self.counters.reset()

    def transcripts_for(self, sha256: str) -> list[TranscriptRecord]:
        """Transcripts made from uploaded content with this sha256, oldest first."""
        return [r for r in self.transcripts.values() if r.sha256 == sha256]

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until `predicate()` holds; it is re-checked after every change and request."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    async def wait_for_status(
        self, transcript_id: str, *statuses: str, timeout_s: float = 10.0
    ) -> TranscriptRecord:
        """Wait until the transcript has one of `statuses` (default: completed or error)."""
        wanted = statuses or ("completed", "error")

        def reached() -> bool:
            record = self.transcripts.get(transcript_id)
            return record is not None and record.status in wanted

        await self.wait_until(reached, timeout_s)
        return self.transcripts[transcript_id]

    # -- request pipeline ----------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        template = _template_of(request)
        route = f"{request.method} {template}"
        kind = self._faults.draw(route, self.config.faults)
        if kind is not None:
            self.counters.faults[(kind, route)] += 1
        status = DROPPED
        try:
            response = await self._answer(request, handler, kind)
        except web.HTTPException as exc:
            status = exc.status
            raise
        else:
            transport = request.transport
            if transport is not None and not transport.is_closing():
                status = response.status
        finally:
            self.counters.count_request(request.method, template, status)
            self._notify()
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, kind: str | None
    ) -> web.StreamResponse:
        if kind == "drop":
            return faults.drop(request)
        if kind == "drop_mid_upload":
            return await faults.drop_mid_upload(request)
        if kind is not None and kind != "slow":
            return faults.status_response(kind, self.config.faults.retry_after_s)
        account = self.account_of(request)
        if account is None:
            return error_response(401, _UNAUTHORIZED)
        self._dispatch(account)
        response = await handler(request)
        if kind == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.config.faults.slow_s)
        return response

    def account_of(self, request: web.Request) -> str | None:
        """The API key of the request if it is a valid one."""
        key = request.headers.get("Authorization")
        return key if key in self.config.api_keys else None

    # -- uploads and submits -------------------------------------------------------------

    async def receive_upload(self, request: web.Request, account: str) -> web.Response:
        """Stream an upload body at the shared bandwidth, keeping only its size, sha256,
        first bytes and audio length."""
        self.counters.uploads_started += 1
        digest, size, prefix = hashlib.sha256(), 0, b""
        try:
            async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                self.counters.upload_bytes += len(chunk)
                if len(prefix) < PREFIX_BYTES:
                    prefix = (prefix + chunk)[:PREFIX_BYTES]
                self._notify()  # `wait_until` can follow an upload's progress
                await self._uplink.take(len(chunk), self.config.upload_bandwidth_bps)
        except (ConnectionError, HttpProcessingError):
            self.counters.uploads_aborted += 1
            return faults.drop(request)
        if size == 0:
            return error_response(400, "Upload failed: the request body is empty")
        upload = UploadRecord(
            CDN_UPLOAD_PREFIX + str(uuid.uuid4()),
            account,
            size,
            digest.hexdigest(),
            prefix[:SNIFF_BYTES],
            audio_ms_of(prefix, size),
        )
        self.uploads[upload.upload_url] = upload
        self.counters.uploads_completed += 1
        self.counters.uploads_by_sha256[upload.sha256] += 1
        return web.json_response({"upload_url": upload.upload_url})

    async def create_transcript(self, request: web.Request, account: str) -> web.Response:
        """Validate a submit and queue its job."""
        try:
            params = validate_params(await request.json())
        except ParamsError as exc:
            return error_response(400, str(exc))
        except ValueError:
            return error_response(400, "Request body is not valid JSON")
        audio_url: str = params["audio_url"]
        upload = None
        if audio_url.startswith(CDN_UPLOAD_PREFIX):
            upload = self.uploads.get(audio_url)
            if upload is None or upload.account != account:
                return error_response(403, "Cannot access uploaded file")
        record = TranscriptRecord(
            str(uuid.uuid4()), account, next(self._seq), audio_url, params, upload
        )
        self.transcripts[record.id] = record
        self.counters.submits_by_audio_url[audio_url] += 1
        if upload is not None:
            self.counters.submits_by_sha256[upload.sha256] += 1
        body = record.to_json()
        self._queues[account].append(record)
        self._dispatch(account)
        record.throttled = record.status == "queued"
        return web.json_response(body)

    # -- processing ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.background_errors.append(exc)
            log.error("fake_task_failed", exc_info=exc)

    def _dispatch(self, account: str) -> None:
        queue = self._queues.get(account)
        cap = self.config.concurrency_by_key.get(account, self.config.concurrency)
        while queue and self._running[account] < cap and not self._stopping:
            record = queue.popleft()
            record.status, record.throttled = "processing", False
            self._running[account] += 1
            self._spawn(self._process(record))
            self._notify()

    async def _process(self, record: TranscriptRecord) -> None:
        try:
            await asyncio.sleep(self._latency_for(record))
            await self._released.wait()
            self._finish(record)
        finally:
            self._running[record.account] -= 1
            self._dispatch(record.account)
        if record.params.get("webhook_url"):
            self._spawn(self._deliver_webhook(record))

    def _latency_for(self, record: TranscriptRecord) -> float:
        return self.processing_s(record.upload.audio_ms if record.upload else 0)

    def processing_s(self, audio_ms: int) -> float:
        """How long a job on `audio_ms` of audio stays "processing", as configured now."""
        return self.config.latency_s + self.config.latency_per_audio_s * audio_ms / 1000

    def _finish(self, record: TranscriptRecord) -> None:
        error = self._failure_of(record)
        if error is None and record.upload is not None:
            upload = record.upload
            record.result = transcribe(upload.sha256, upload.size, upload.audio_ms)
            record.status = "completed"
        else:
            record.error, record.status = error, "error"
        record.completed = utc_now()
        self._notify()

    def _failure_of(self, record: TranscriptRecord) -> str | None:
        upload = record.upload
        if upload is None:
            return (
                f"Download error, unable to download {record.audio_url}. Please make sure the "
                "file exists and is accessible from the internet."
            )
        if not looks_like_audio(upload.head):
            return (
                "Transcoding failed. File does not appear to contain audio. "
                f"File type is {describe_file_type(upload.head)}."
            )
        if upload.audio_ms < MIN_AUDIO_MS:
            return f"Audio duration is too short. The minimum is {MIN_AUDIO_MS} ms."
        if upload.sha256 in self.config.error_for:
            return self.config.error_message
        return None

    async def _deliver_webhook(self, record: TranscriptRecord) -> None:
        """POST {transcript_id, status}; retry failures and 5xx, accept a 4xx as a refusal."""
        params = record.params
        headers = {}
        if params.get("webhook_auth_header_name") and params.get("webhook_auth_header_value"):
            headers[params["webhook_auth_header_name"]] = params["webhook_auth_header_value"]
        payload = {"transcript_id": record.id, "status": record.status}
        timeout = aiohttp.ClientTimeout(total=self.config.webhook_timeout_s)
        for attempt in range(self.config.webhook_attempts):
            if attempt:
                await asyncio.sleep(self.config.webhook_retry_delay_s)
            if self._session is None:
                return
            self.counters.webhook_attempts += 1
            try:
                async with self._session.post(
                    params["webhook_url"], json=payload, headers=headers, timeout=timeout
                ) as response:
                    record.webhook_status_code = response.status
            except (aiohttp.ClientError, TimeoutError):
                continue
            finally:
                self._notify()
            if 200 <= response.status < 300:
                self.counters.webhook_deliveries += 1
                return
            if 400 <= response.status < 500:
                self.counters.webhook_refusals += 1
                return
        self.counters.webhooks_abandoned += 1


def _template_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path
