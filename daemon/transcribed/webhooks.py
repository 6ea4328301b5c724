"""The webhook receiver: the service POSTs ``{"transcript_id", "status"}`` when a job ends.

A notification is accepted only with this daemon's secret in the auth header (401 otherwise,
before any of the body is read) and only for a transcript this daemon submitted (404
otherwise, which the service does not retry). It answers at once; the waiting job then fetches
the transcript itself. Polling stays on at a low rate, so a lost notification only delays a job.

Anyone who can reach the port can send anything, so bad input is answered with a 4xx and never
raises: a body over ``MAX_BODY_BYTES`` is 413, a body not sent within ``BODY_TIMEOUT_S`` is 408,
and a body that is not a small JSON object naming both fields is 400. Refusals are logged as
``webhook_refused``, at most one line per 10 s with a count of those left out.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from transcribed.errors import TranscribedError
from transcribed.logs import get_logger

log = get_logger("transcribed.webhooks")

WEBHOOK_PATH = "/webhook"
#: The service's notification is under 200 bytes.
MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0


class BadBodyError(TranscribedError):
    """The body is not a notification; ``status`` is the answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_notification(body: bytes) -> tuple[str, str]:
    """``(transcript_id, status)`` from a notification body, or ``BadBodyError`` (400)."""
    try:
        data: Any = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise BadBodyError(400, "not JSON") from exc
    except RecursionError as exc:  # nesting deeper than the interpreter's recursion limit
        raise BadBodyError(400, "JSON nested too deeply") from exc
    if not isinstance(data, dict):
        raise BadBodyError(400, "expected a JSON object")
    transcript_id, status = data.get("transcript_id"), data.get("status")
    if not isinstance(transcript_id, str) or not isinstance(status, str):
        raise BadBodyError(400, "expected transcript_id and status")
    return transcript_id, status


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or ``BadBodyError``: 413 past ``limit`` bytes, 408 when too slow."""
    if request.content_length is not None and request.content_length > limit:
        raise BadBodyError(413, "body too large")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while chunk := await request.content.read(limit + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise BadBodyError(413, "body too large")
    except TimeoutError as exc:
        raise BadBodyError(408, "body not received in time") from exc
    return b"".join(chunks)


class _Refusals:
    """Logs refused notifications at most once per ``interval_s``, counting the rest.

    Anyone can send requests without the secret; one log line each would let them fill the log.
    """

    interval_s = 10.0

    def __init__(self) -> None:
        self._last = float("-inf")
        self._suppressed = 0

    def log(self, reason: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        log.warning("webhook_refused", reason=reason, suppressed=self._suppressed, **fields)
        self._last, self._suppressed = now, 0


def secret_matches(given: str, secret: str) -> bool:
    """Constant-time comparison of the header with the secret, for any bytes the header has."""
    # aiohttp decodes header bytes that are not UTF-8 with surrogateescape: keep them as bytes.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def _refuse(status: int, error: str, *, close: bool = False) -> web.Response:
    response = web.json_response({"error": error}, status=status)
    if close:  # the rest of the body is not wanted; aiohttp discards it briefly, then closes
        response.force_close()
    return response


def webhook_routes(
    header: str,
    secret: str,
    is_ours: Callable[[str], bool],
    notify: Callable[[str, str], object],
) -> list[web.RouteDef]:
    """Routes to add to the daemon's HTTP app."""
    refusals = _Refusals()

    async def receive(request: web.Request) -> web.Response:
        if not secret_matches(request.headers.get(header, ""), secret):
            refusals.log("bad secret", remote=request.remote)
            # Read nothing more from someone without the secret: answer and close.
            return _refuse(401, "unauthorized", close=True)
        try:
            transcript_id, status = parse_notification(await read_body(request))
        except BadBodyError as exc:
            refusals.log(str(exc), remote=request.remote)
            return _refuse(exc.status, str(exc), close=exc.status != 400)
        if not is_ours(transcript_id):
            refusals.log("unknown transcript", transcript_id=transcript_id[:100])
            return _refuse(404, "unknown transcript")
        notify(transcript_id, status)
        log.debug("webhook_received", transcript_id=transcript_id, status=status)
        return web.json_response({"ok": True})

    return [web.post(WEBHOOK_PATH, receive)]
