"""A small client for AssemblyAI's v2 REST API around one shared ``aiohttp.ClientSession``.

This is the only place that sees ``aiohttp`` exceptions: they are translated into
:mod:`transcribed.errors` here. Every request shares one rate limiter (the account's request
budget) and one "slow down" deadline that a 429 pushes out for everybody, and transient
failures are retried with jittered exponential backoff that honours ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from transcribed.config import AssemblyAISettings
from transcribed.errors import (
    AuthError,
    LocalIOError,
    PermanentError,
    SourceChangedError,
    TransientError,
    UploadExpiredError,
)
from transcribed.logs import get_logger
from transcribed.metrics import Metrics

log = get_logger("transcribed.api")
T = TypeVar("T")
CHUNK_BYTES = 1 << 20
#: The slowest upload we wait for before calling a connection stalled.
MIN_UPLOAD_BYTES_PER_S = 128 * 1024
USER_AGENT = "transcribed/0.1 (+aiohttp)"
#: Transient failures with no success in between for this long make the client "degraded".
DEGRADED_AFTER_S = 30.0
#: The account's HTTP limit: 20,000 requests in any 5 minutes.
ACCOUNT_LIMIT = (20_000, 300.0)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class AssemblyAIClient:
    """Typed calls to the API; open with ``async with``."""

    def __init__(self, settings: AssemblyAISettings, metrics: Metrics | None = None) -> None:
        if settings.api_key is None:
            raise AuthError("no AssemblyAI API key is configured")
        self._settings = settings
        self._key = settings.api_key.get_secret_value()
        self._metrics = metrics or Metrics()
        self._session: aiohttp.ClientSession | None = None
        # A token bucket: up to request_burst requests at once, refilled at requests_per_s.
        # Any t seconds then see at most burst + rate * t requests, which is how the account
        # limit is counted (20,000 per 5 minutes): a backlog's uploads go out at once, and a
        # long run settles at the sustained rate.
        self._limiter = AsyncLimiter(
            settings.request_burst, settings.request_burst / settings.requests_per_s
        )
        # After a 429 the bucket may have refilled during the pause; until it could have
        # drained again, requests also keep to the sustained rate, with no burst.
        self._steady = AsyncLimiter(1, 1 / settings.requests_per_s)
        self._steady_until = 0.0
        most, window_s = ACCOUNT_LIMIT
        allowed = settings.request_burst + settings.requests_per_s * window_s
        if allowed > most:
            log.warning(
                "request_budget_above_account_limit",
                requests_per_5_min=round(allowed),
                account_limit=most,
            )
        self._pause_until = 0.0
        self._failing_since: float | None = None
        self.degraded = False

    async def __aenter__(self) -> AssemblyAIClient:
        s = self._settings
        self._session = aiohttp.ClientSession(
            headers={"Authorization": self._key, "User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(
                total=s.connect_timeout_s + s.read_timeout_s,
                sock_connect=s.connect_timeout_s,
                sock_read=s.read_timeout_s,
            ),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("client is not open")
        return self._session

    # -- the request budget ------------------------------------------------------------------
    async def _admit(self) -> None:
        while (delay := self._pause_until - time.monotonic()) > 0:  # noqa: ASYNC110 - a deadline other requests may push out, not an event
            await asyncio.sleep(delay)
        if time.monotonic() < self._steady_until:
            await self._steady.acquire()
        await self._limiter.acquire()

    def slow_down(self, seconds: float) -> None:
        """Hold every request until ``seconds`` from now (after a 429), then go on at the
        sustained rate until a whole burst could have drained."""
        s = self._settings
        self._pause_until = max(self._pause_until, time.monotonic() + seconds)
        self._steady_until = self._pause_until + s.request_burst / s.requests_per_s

    # -- one attempt -----------------------------------------------------------------------
    async def _once(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        expect: str = "json",
        timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 - passed to aiohttp per request
        **kwargs: Any,
    ) -> Any:
        await self._admit()
        url = f"{self._settings.base_url}{path}"
        status = "error"
        try:
            if timeout is not None:  # None would mean "no timeout at all" to aiohttp
                kwargs["timeout"] = timeout
            async with self.session.request(method, url, **kwargs) as response:
                status = str(response.status)
                body = await response.read()
                answer = self._interpret(response.status, response.headers, body, expect)
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = "timeout" if isinstance(exc, TimeoutError) else "network"
            self._note_failure()
            raise TransientError(f"{method} {endpoint}: {type(exc).__name__}: {exc}") from exc
        except TransientError:
            self._note_failure()
            raise
        finally:
            self._metrics.api_requests.labels(endpoint=endpoint, status=status).inc()
        self._note_success()
        return answer

    def _note_failure(self) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif not self.degraded and now - self._failing_since >= DEGRADED_AFTER_S:
            self.degraded = True
            log.warning("api_degraded", failing_for_s=round(now - self._failing_since, 1))

    def _note_success(self) -> None:
        if self.degraded:
            log.info("api_recovered")
        self.degraded = False
        self._failing_since = None

    def _interpret(self, status: int, headers: Any, body: bytes, expect: str) -> Any:
        if 200 <= status < 300:
            if expect == "text":
                return body.decode("utf-8", errors="replace")
            try:
                return json.loads(body)
            except ValueError as exc:
                raise TransientError("the API answered with a body that is not JSON") from exc
        message = _error_message(body) or f"HTTP {status}"
        if status == 401:
            raise AuthError(f"the API rejected the key (401): {message}")
        if status == 429:
            retry_after = _retry_after(headers)
            self.slow_down(retry_after if retry_after is not None else 5.0)
            raise TransientError(f"429: {message}", status=status, retry_after_s=retry_after)
        if status == 408 or status >= 500:
            raise TransientError(
                f"{status}: {message}", status=status, retry_after_s=_retry_after(headers)
            )
        if status == 403 and "uploaded file" in message.lower():
            raise UploadExpiredError(message)
        raise PermanentError(f"{status}: {message}", status=status)

    # -- retries ---------------------------------------------------------------------------
    async def _retrying(self, endpoint: str, attempt: Callable[[], Awaitable[T]]) -> T:
        cap = self._settings.retry_max_backoff_s

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TransientError) and exc.retry_after_s is not None:
                return min(cap, exc.retry_after_s) + random.uniform(0, 0.5)
            backoff = min(cap, 0.5 * 2 ** (state.attempt_number - 1))
            return random.uniform(backoff / 2, backoff)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._metrics.api_retries.labels(endpoint=endpoint).inc()
            log.warning(
                "request_retried",
                endpoint=endpoint,
                attempt=state.attempt_number,
                error=str(exc),
                wait_s=round(state.upcoming_sleep, 2),
            )

        async for attempt_state in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=wait,
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt_state:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, method: str, path: str, endpoint: str, **kwargs: Any) -> Any:
        return await self._retrying(endpoint, lambda: self._once(method, path, endpoint, **kwargs))

    # -- endpoints -------------------------------------------------------------------------
    async def check_key(self) -> None:
        """One cheap authenticated request, not retried: ``AuthError`` for a rejected key,
        ``TransientError`` when the API cannot be reached."""
        await self._once("GET", "/v2/transcript", "list", params={"limit": "1"})

    async def upload(
        self,
        source: Path | Callable[[], BinaryIO],
        size: int,
        on_bytes: Callable[[int], None],
        content: bytes | None = None,
        *,
        sha256: str | None = None,
    ) -> str:
        """Send a file to ``/v2/upload`` in 1 MiB chunks (a smaller one in one piece);
        returns the ``upload_url``.

        ``source`` opens the file (each attempt reads it from the start), or is its path.
        ``content``: a one-chunk file's bytes, if the caller has them. Exactly ``size`` bytes
        go out, and with ``sha256`` only the bytes that have it: a file that shrank, grew or
        changed since it was hashed raises :class:`SourceChangedError` before its last byte
        is sent, so the service never holds a whole upload of it.
        """
        opener = source if callable(source) else functools.partial(_open_nofollow, source)

        async def send() -> Any:
            timeout = aiohttp.ClientTimeout(
                total=self._settings.connect_timeout_s
                + self._settings.read_timeout_s
                + size / MIN_UPLOAD_BYTES_PER_S,
                sock_connect=self._settings.connect_timeout_s,
            )
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            if size <= CHUNK_BYTES:
                # One chunk: the caller's bytes, or one trip to a thread to read them.
                body = content
                if body is None or len(body) != size:
                    body = await _reading_source(_read_small, opener, size, sha256)
                on_bytes(len(body))
                return await self._once(
                    "POST", "/v2/upload", "upload", data=body, headers=headers, timeout=timeout
                )
            # The file belongs to this task, not to the body generator that aiohttp drives
            # from its own writer task, so it is closed however the request ends.
            handle = await _reading_source(opener)
            reading = _Reading(handle, size, sha256, on_bytes)
            try:
                return await self._once(
                    "POST",
                    "/v2/upload",
                    "upload",
                    data=reading.chunks(),
                    headers=headers,
                    timeout=timeout,
                )
            except TransientError:
                # aiohttp reports an error raised by the body as a failed write.
                if reading.stopped is not None:
                    raise reading.stopped from None
                raise
            finally:
                await asyncio.to_thread(handle.close)

        async def attempt() -> str:
            answer = await send()
            url = answer.get("upload_url") if isinstance(answer, dict) else None
            if not isinstance(url, str):
                raise TransientError("upload answer has no upload_url")
            return url

        return await self._retrying("upload", attempt)

    async def submit(self, params: dict[str, Any]) -> str:
        """Create a transcript; returns its id. Never creates two for one call.

        A submit is not idempotent: when an attempt fails in a way that leaves its effect
        unknown (a timeout, a dropped connection, a 5xx), the account's transcript list is
        checked for the upload URL before trying again.
        """
        audio_url = str(params["audio_url"])
        started = time.time()

        async def attempt() -> str:
            answer = await self._once("POST", "/v2/transcript", "submit", json=params)
            if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
                raise PermanentError("the API's answer to a submit has no transcript id")
            return str(answer["id"])

        first = True

        async def attempt_or_recover() -> str:
            nonlocal first
            if not first:
                found = await self.find_by_audio_url(audio_url, started)
                if found is not None:
                    log.info("submit_recovered", transcript_id=found)
                    return found
            first = False
            return await attempt()

        return await self._retrying("submit", attempt_or_recover)

    async def get(self, transcript_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", f"/v2/transcript/{transcript_id}", "poll")
        return answer

    async def captions(self, transcript_id: str, fmt: str, chars_per_caption: int | None) -> str:
        params = {"chars_per_caption": str(chars_per_caption)} if chars_per_caption else None
        text: str = await self._call(
            "GET", f"/v2/transcript/{transcript_id}/{fmt}", fmt, params=params, expect="text"
        )
        return text

    async def list_transcripts(self, **params: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", "/v2/transcript", "list", params=params)
        return answer

    async def find_by_audio_url(self, audio_url: str, since: float) -> str | None:
        """The id of a transcript created for ``audio_url`` (newest first, back to ``since``)."""
        before: str | None = None
        for _ in range(10):
            params = {"limit": "200"} | ({"before_id": before} if before else {})
            page = await self.list_transcripts(**params)
            items = page.get("transcripts") or []
            for item in items:
                if item.get("audio_url") == audio_url:
                    return str(item["id"])
            if not items or created_epoch(items[-1].get("created")) < since - 300:
                return None
            before = str(items[-1]["id"])
        return None


async def _reading_source(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a thread; the source's own errors (out of descriptors, no longer
    readable) as :class:`LocalIOError`: our side, not the service's."""
    try:
        return await asyncio.to_thread(call, *args)
    except OSError as exc:
        raise LocalIOError(f"cannot read the source: {exc.strerror or exc}") from exc


class _Reading:
    """The first ``size`` bytes of an open file, in chunks, checked against what was hashed:
    the body of one upload attempt."""

    def __init__(
        self,
        handle: BinaryIO,
        size: int,
        sha256: str | None,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._handle = handle
        self._size = size
        self._sha256 = sha256
        self._on_bytes = on_bytes
        self._digest = hashlib.sha256()
        #: Why the body stopped early: the file is no longer what was hashed, or cannot be read.
        self.stopped: SourceChangedError | LocalIOError | None = None

    def _next(self, left: int) -> bytes:
        """The next chunk, hashed; at the end, the checks (in the reading thread)."""
        chunk = self._handle.read(min(CHUNK_BYTES, left))
        self._digest.update(chunk)
        if not chunk:
            raise SourceChangedError("the file shrank after it was hashed")
        if len(chunk) == left:
            if self._handle.read(1):
                raise SourceChangedError("the file grew after it was hashed")
            if self._sha256 is not None and self._digest.hexdigest() != self._sha256:
                raise SourceChangedError("the file's bytes changed after it was hashed")
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        left = self._size
        while left > 0:
            try:
                chunk = await asyncio.to_thread(self._next, left)
            except SourceChangedError as exc:
                self.stopped = exc
                raise
            except OSError as exc:
                self.stopped = LocalIOError(f"cannot read the source: {exc.strerror or exc}")
                raise self.stopped from exc
            left -= len(chunk)
            self._on_bytes(len(chunk))
            yield chunk


def _read_small(opener: Callable[[], BinaryIO], size: int, sha256: str | None) -> bytes:
    """A small file's ``size`` bytes, checked against what was hashed."""
    with opener() as handle:
        body = handle.read(size + 1)
    if len(body) != size:
        raise SourceChangedError(f"the file {'grew' if len(body) > size else 'shrank'}")
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise SourceChangedError("the file's bytes changed after it was hashed")
    return body


def _open_nofollow(path: Path) -> BinaryIO:
    return open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", errors="replace").strip()
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return ""


def created_epoch(value: Any) -> float:
    """A list item's ``created`` (ISO 8601, UTC when no zone is given) as epoch seconds."""
    if not isinstance(value, str):
        return 0.0
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
