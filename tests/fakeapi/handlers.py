"""The fake's HTTP routes, one method per endpoint of the v2 API.

Route names ("METHOD /template") are what fault injection and the request counters use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from fakeapi.captions import render_srt, render_vtt
from fakeapi.content import paragraphs_of, sentences_of

if TYPE_CHECKING:
    from fakeapi.fake_api import FakeAssemblyAI
    from fakeapi.records import TranscriptRecord

ROUTE_UPLOAD = "POST /v2/upload"
ROUTE_SUBMIT = "POST /v2/transcript"
ROUTE_LIST = "GET /v2/transcript"
ROUTE_POLL = "GET /v2/transcript/{transcript_id}"
ROUTE_DELETE = "DELETE /v2/transcript/{transcript_id}"
ROUTE_SRT = "GET /v2/transcript/{transcript_id}/srt"
ROUTE_VTT = "GET /v2/transcript/{transcript_id}/vtt"
ROUTE_SENTENCES = "GET /v2/transcript/{transcript_id}/sentences"
ROUTE_PARAGRAPHS = "GET /v2/transcript/{transcript_id}/paragraphs"

STATUSES = ("queued", "processing", "completed", "error")
MAX_LIST_LIMIT = 200
DEFAULT_LIST_LIMIT = 10

_Renderer = Callable[[Sequence[dict[str, Any]], int | None], str]


def error_response(status: int, message: str) -> web.Response:
    """The API's error body: `{"error": message}`."""
    return web.json_response({"error": message}, status=status)


class _BadQueryError(ValueError):
    """A query parameter the list endpoint answers with 400."""


class Routes:
    """Request handlers over the state of one FakeAssemblyAI (auth is checked before them)."""

    def __init__(self, fake: FakeAssemblyAI) -> None:
        self._fake = fake

    def add_to(self, app: web.Application) -> None:
        """Register every route on `app`."""
        handlers = {
            ROUTE_UPLOAD: self.upload,
            ROUTE_SUBMIT: self.submit,
            ROUTE_LIST: self.list_transcripts,
            ROUTE_SENTENCES: self.sentences,
            ROUTE_PARAGRAPHS: self.paragraphs,
            ROUTE_SRT: self.srt,
            ROUTE_VTT: self.vtt,
            ROUTE_POLL: self.get,
            ROUTE_DELETE: self.delete,
        }
        for route, handler in handlers.items():
            method, path = route.split(" ", 1)
            app.router.add_route(method, path, handler)

    async def upload(self, request: web.Request) -> web.Response:
        """POST /v2/upload."""
        return await self._fake.receive_upload(request, _account(request))

    async def submit(self, request: web.Request) -> web.Response:
        """POST /v2/transcript."""
        return await self._fake.create_transcript(request, _account(request))

    async def get(self, request: web.Request) -> web.Response:
        """GET /v2/transcript/{transcript_id}."""
        counters = self._fake.counters
        counters.polls += 1
        counters.polls_by_id[request.match_info["transcript_id"]] += 1
        record = self._owned(request)
        if record is None:
            return error_response(404, "Transcript not found")
        return web.json_response(record.to_json())

    async def delete(self, request: web.Request) -> web.Response:
        """DELETE /v2/transcript/{transcript_id}: blank the text and drop the upload."""
        record = self._owned(request)
        if record is None:
            return error_response(404, "Transcript not found")
        if not record.finished:
            return error_response(
                400, "Transcript is still being processed; only finished transcripts can be deleted"
            )
        record.deleted = True
        if record.upload is not None:
            self._fake.uploads.pop(record.upload.upload_url, None)
        return web.json_response(record.to_json())

    async def srt(self, request: web.Request) -> web.Response:
        """GET /v2/transcript/{transcript_id}/srt."""
        return self._captions(request, render_srt)

    async def vtt(self, request: web.Request) -> web.Response:
        """GET /v2/transcript/{transcript_id}/vtt."""
        return self._captions(request, render_vtt)

    async def sentences(self, request: web.Request) -> web.Response:
        """GET /v2/transcript/{transcript_id}/sentences."""
        return self._blocks(request, "sentences")

    async def paragraphs(self, request: web.Request) -> web.Response:
        """GET /v2/transcript/{transcript_id}/paragraphs."""
        return self._blocks(request, "paragraphs")

    async def list_transcripts(self, request: web.Request) -> web.Response:
        """GET /v2/transcript: the account's transcripts, newest first, one page."""
        self._fake.counters.lists += 1
        try:
            return web.json_response(self._list_page(request))
        except _BadQueryError as exc:
            return error_response(400, str(exc))

    # -- helpers -------------------------------------------------------------------------

    def _owned(self, request: web.Request) -> TranscriptRecord | None:
        record = self._fake.transcripts.get(request.match_info["transcript_id"])
        return record if record is not None and record.account == _account(request) else None

    def _completed(self, request: web.Request) -> TranscriptRecord | web.Response:
        record = self._owned(request)
        if record is None:
            return error_response(404, "Transcript not found")
        if record.status != "completed":
            return error_response(400, f"Transcript is not completed (status: {record.status})")
        return record

    def _captions(self, request: web.Request, render: _Renderer) -> web.Response:
        record = self._completed(request)
        if isinstance(record, web.Response):
            return record
        raw = request.query.get("chars_per_caption")
        if raw is not None and (not raw.isdigit() or int(raw) < 1):
            return error_response(400, "chars_per_caption must be a positive integer")
        text = render(record.words(), int(raw) if raw else None)
        return web.Response(text=text, content_type="text/plain")

    def _blocks(self, request: web.Request, kind: str) -> web.Response:
        record = self._completed(request)
        if isinstance(record, web.Response):
            return record
        words = record.words()
        blocks = sentences_of(words) if kind == "sentences" else paragraphs_of(words)
        result = record.result
        return web.json_response(
            {
                "id": record.id,
                "confidence": result.confidence if result else 0.0,
                "audio_duration": result.audio_duration if result else 0,
                kind: blocks,
            }
        )

    def _list_page(self, request: web.Request) -> dict[str, Any]:
        query = request.query
        limit = _limit(query.get("limit"))
        mine = [r for r in self._fake.transcripts.values() if r.account == _account(request)]
        matching = _filtered(mine, query.get("status"), query.get("created_on"))
        older_than = self._seq_of(mine, query.get("before_id"), "before_id")
        newer_than = self._seq_of(mine, query.get("after_id"), "after_id")
        window = [
            r
            for r in matching
            if (older_than is None or r.seq < older_than)
            and (newer_than is None or r.seq > newer_than)
        ]
        window.sort(key=lambda r: r.seq, reverse=True)
        forward = newer_than is not None and older_than is None
        page = window[-limit:] if forward else window[:limit]
        base = self._fake.base_url
        keep = {k: v for k, v in query.items() if k in ("status", "created_on")}

        def url(**cursor: str) -> str:
            return f"{base}/v2/transcript?{urlencode({'limit': limit, **keep, **cursor})}"

        older = bool(page) and any(r.seq < page[-1].seq for r in matching)
        newer = bool(page) and any(r.seq > page[0].seq for r in matching)
        return {
            "page_details": {
                "limit": limit,
                "result_count": len(page),
                "current_url": f"{base}{request.path_qs}",
                "prev_url": url(before_id=page[-1].id) if older else None,
                "next_url": url(after_id=page[0].id) if newer else None,
            },
            "transcripts": [r.list_item(base) for r in page],
        }

    def _seq_of(self, mine: list[TranscriptRecord], ref: str | None, name: str) -> int | None:
        if ref is None:
            return None
        for record in mine:
            if record.id == ref:
                return record.seq
        raise _BadQueryError(f"{name} does not name one of your transcripts")


def _account(request: web.Request) -> str:
    return request.headers.get("Authorization", "")


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIST_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise _BadQueryError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    return int(raw)


def _filtered(
    records: list[TranscriptRecord], status: str | None, created_on: str | None
) -> list[TranscriptRecord]:
    if status is not None and status not in STATUSES:
        raise _BadQueryError(f"status must be one of {', '.join(STATUSES)}")
    day = None
    if created_on is not None:
        try:
            day = date.fromisoformat(created_on)
        except ValueError:
            raise _BadQueryError("created_on must be a date, YYYY-MM-DD") from None
    return [
        r
        for r in records
        if (status is None or r.status == status) and (day is None or r.created.date() == day)
    ]
