"""The webhook receiver: the service POSTs ``{"transcript_id", "status"}`` when a job ends.

A notification is accepted only with this daemon's secret in the auth header (401 otherwise)
and only for a transcript this daemon submitted (404 otherwise, which the service does not
retry). It answers at once; the waiting job then fetches the transcript itself. Polling stays
on at a low rate, so a lost notification only delays a job.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from aiohttp import web

from transcribed.logs import get_logger

log = get_logger("transcribed.webhooks")

WEBHOOK_PATH = "/webhook"
MAX_BODY_BYTES = 64 * 1024


def webhook_routes(
    header: str,
    secret: str,
    is_ours: Callable[[str], bool],
    notify: Callable[[str, str], object],
) -> list[web.RouteDef]:
    """Routes to add to the daemon's HTTP app."""

    async def receive(request: web.Request) -> web.Response:
        given = request.headers.get(header, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            log.warning("webhook_refused", reason="bad secret", remote=request.remote)
            return web.json_response({"error": "unauthorized"}, status=401)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return web.json_response({"error": "body too large"}, status=413)
        try:
            body = json.loads(await request.content.read(MAX_BODY_BYTES))
            transcript_id = str(body["transcript_id"])
            status = str(body["status"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected transcript_id and status"}, status=400)
        if not is_ours(transcript_id):
            log.warning("webhook_refused", reason="unknown transcript", transcript_id=transcript_id)
            return web.json_response({"error": "unknown transcript"}, status=404)
        notify(transcript_id, status)
        log.debug("webhook_received", transcript_id=transcript_id, status=status)
        return web.json_response({"ok": True})

    return [web.post(WEBHOOK_PATH, receive)]
