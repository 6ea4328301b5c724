"""The fake AssemblyAI server, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import assemblyai as aai
import pytest
import srt
import webvtt
from aiohttp import web

from fakeapi import (
    CDN_UPLOAD_PREFIX,
    DROPPED,
    ROUTE_LIST,
    ROUTE_POLL,
    ROUTE_SUBMIT,
    ROUTE_UPLOAD,
    FakeAssemblyAI,
    FakeConfig,
    FakeCounters,
    FaultConfig,
    fake_text_for,
    looks_like_audio,
)
from fakeapi.__main__ import config_from_args
from fakeapi.content import audio_ms_of

KEY = "test-key"
OTHER_KEY = "other-key"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MODELS = ["universal-3-pro"]
TRANSCRIPT_REQUIRED = (
    "id", "speech_model", "language_model", "acoustic_model", "status", "audio_url",
    "webhook_auth", "auto_highlights", "redact_pii", "summarization",
    "language_confidence_threshold", "language_confidence",
)  # fmt: skip


def mp3_bytes(size: int = 4000, seed: int = 0) -> bytes:
    """An ID3 header and random bytes: audio enough for the fake's sniffing."""
    return b"ID3" + random.Random(seed).randbytes(size - 3)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vtt_clock(ms: int) -> str:
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAssemblyAI]:
    config = FakeConfig(api_keys=(KEY, OTHER_KEY), latency_s=0.05, concurrency=5)
    async with FakeAssemblyAI(config) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAssemblyAI) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(fake.base_url, headers={"Authorization": KEY}) as session:
        yield session


async def upload(session: aiohttp.ClientSession, data: bytes) -> str:
    async with session.post("/v2/upload", data=data) as response:
        assert response.status == 200, await response.text()
        url: str = (await response.json())["upload_url"]
        return url


async def submit(session: aiohttp.ClientSession, audio_url: str, **options: Any) -> dict[str, Any]:
    body = {"audio_url": audio_url, "speech_models": MODELS, **options}
    async with session.post("/v2/transcript", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def get_json(session: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with session.get(path) as response:
        return response.status, await response.json()


async def transcribe(
    fake: FakeAssemblyAI, session: aiohttp.ClientSession, data: bytes, **options: Any
) -> dict[str, Any]:
    """Upload, submit, wait for the job to finish, and return the polled transcript."""
    job = await submit(session, await upload(session, data), **options)
    await fake.wait_for_status(job["id"])
    status, transcript = await get_json(session, f"/v2/transcript/{job['id']}")
    assert status == 200
    return transcript  # type: ignore[no-any-return]


# -- content ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"ID3\x04\x00",
        b"\xff\xfb\x90\x00",
        b"\xff\xf1\x50\x80",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"fLaC\x00\x00",
        b"OggS\x00\x02",
        b"\x00\x00\x00\x20ftypM4A ",
        b"\x1a\x45\xdf\xa3\x9f",
        b"#!AMR\n",
        b"FORM\x00\x00\x00\x10AIFF",
        bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"),
    ],
)
def test_known_audio_signatures_are_audio(head: bytes) -> None:
    assert looks_like_audio(head)


@pytest.mark.parametrize(
    "head", [b"", b"hello world", b"%PDF-1.7", b"\x89PNG\r\n", b"\xff\xd8\xff"]
)
def test_other_files_are_not_audio(head: bytes) -> None:
    assert not looks_like_audio(head)


def test_fake_text_is_a_function_of_the_digest() -> None:
    digest = sha(b"some audio")
    text = fake_text_for(digest)
    assert text == fake_text_for(digest)
    assert text.endswith(digest[:8])
    assert len(text.split()) == 9
    assert fake_text_for(sha(b"other audio")) != text


# -- auth and validation ---------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "wrong"}, {"Authorization": ""}])
async def test_requests_without_a_valid_key_get_401(
    fake: FakeAssemblyAI, headers: dict[str, str]
) -> None:
    async with aiohttp.ClientSession(fake.base_url, headers=headers) as session:
        for method, path in [
            ("POST", "/v2/upload"),
            ("POST", "/v2/transcript"),
            ("GET", "/v2/transcript"),
            ("GET", "/v2/transcript/abc"),
            ("DELETE", "/v2/transcript/abc"),
            ("GET", "/v2/transcript/abc/srt"),
        ]:
            async with session.request(method, path, data=b"x") as response:
                assert response.status == 401
                body = await response.json()
                assert body == {"error": "Authentication error, API token missing/invalid"}
    assert fake.counters.uploads_started == 0
    assert fake.transcripts == {}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "speech_models"),
        ({"speech_models": []}, "speech_models"),
        ({"speech_models": [""]}, "speech_models"),
        ({"speech_model": "best"}, "speech_model"),
        ({"speech_models": MODELS, "speech_model": "best"}, "speech_model"),
        ({"speech_models": MODELS, "word_boost": ["x"]}, "word_boost"),
        ({"speech_models": MODELS, "dual_channel": True}, "dual_channel"),
        ({"speech_models": MODELS, "punctuate": "yes"}, "punctuate"),
    ],
)
async def test_invalid_submits_are_400(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession, body: dict[str, Any], fragment: str
) -> None:
    audio_url = await upload(client, mp3_bytes())
    async with client.post("/v2/transcript", json={"audio_url": audio_url, **body}) as response:
        assert response.status == 400
        assert fragment in (await response.json())["error"]
    assert fake.transcripts == {}


async def test_submit_that_is_not_json_is_400(client: aiohttp.ClientSession) -> None:
    async with client.post("/v2/transcript", data=b"{nope") as response:
        assert response.status == 400
        assert "error" in await response.json()


async def test_empty_upload_is_400(fake: FakeAssemblyAI, client: aiohttp.ClientSession) -> None:
    async with client.post("/v2/upload", data=b"") as response:
        assert response.status == 400
        assert "error" in await response.json()
    assert fake.uploads == {}


async def test_upload_of_another_account_is_403(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    audio_url = await upload(client, mp3_bytes())
    assert audio_url.startswith(CDN_UPLOAD_PREFIX)
    async with aiohttp.ClientSession(fake.base_url, headers={"Authorization": OTHER_KEY}) as other:
        body = {"audio_url": audio_url, "speech_models": MODELS}
        async with other.post("/v2/transcript", json=body) as response:
            assert response.status == 403
            assert await response.json() == {"error": "Cannot access uploaded file"}
        status, _ = await get_json(other, "/v2/transcript")
        assert status == 200
    assert fake.transcripts == {}


async def test_forgotten_upload_is_403(fake: FakeAssemblyAI, client: aiohttp.ClientSession) -> None:
    audio_url = await upload(client, mp3_bytes())
    fake.forget_uploads()
    body = {"audio_url": audio_url, "speech_models": MODELS}
    async with client.post("/v2/transcript", json=body) as response:
        assert response.status == 403


async def test_transcripts_of_another_account_are_404(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    job = await submit(client, await upload(client, mp3_bytes()))
    async with aiohttp.ClientSession(fake.base_url, headers={"Authorization": OTHER_KEY}) as other:
        status, body = await get_json(other, f"/v2/transcript/{job['id']}")
        assert (status, body) == (404, {"error": "Transcript not found"})
        status, listing = await get_json(other, "/v2/transcript")
        assert listing["transcripts"] == []
    status, _ = await get_json(client, "/v2/transcript/not-a-transcript")
    assert status == 404


# -- the job lifecycle -----------------------------------------------------------------


async def test_uploaded_audio_completes_with_the_text_of_its_sha256(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    data = mp3_bytes(48_000)
    audio_url = await upload(client, data)
    job = await submit(client, audio_url, punctuate=False, keyterms_prompt=["alpha"])
    assert job["status"] == "queued"
    assert all(name in job for name in TRANSCRIPT_REQUIRED)
    assert (job["audio_url"], job["speech_models"]) == (audio_url, MODELS)
    assert (job["punctuate"], job["keyterms_prompt"], job["format_text"]) == (
        False,
        ["alpha"],
        True,
    )
    assert job["text"] is None and job["words"] is None

    seen = set()
    while True:  # poll the way a client does, to see the status move in server time
        _, transcript = await get_json(client, f"/v2/transcript/{job['id']}")
        seen.add(transcript["status"])
        if transcript["status"] in ("completed", "error"):
            break
        await asyncio.sleep(0.01)
    assert seen >= {"processing", "completed"}
    assert transcript["text"] == fake_text_for(sha(data))
    assert transcript["audio_duration"] == 3
    assert transcript["language_code"] == "en_us"
    assert 0 < transcript["confidence"] <= 1
    words = transcript["words"]
    assert " ".join(w["text"] for w in words) == transcript["text"]
    assert all(isinstance(w["start"], int) and isinstance(w["end"], int) for w in words)
    assert all(w["start"] < w["end"] and w["speaker"] is None for w in words)
    assert words == sorted(words, key=lambda w: w["start"])
    assert "error" not in transcript


async def test_speaker_labels_give_utterances(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    transcript = await transcribe(fake, client, mp3_bytes(), speaker_labels=True)
    assert {w["speaker"] for w in transcript["words"]} == {"A"}
    assert [u["text"] for u in transcript["utterances"]] == [transcript["text"]]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"just some notes, not audio\n" * 200, "File type is text/plain (ASCII text)"),
        (b"%PDF-1.7" + bytes(8000), "application/pdf"),
        (mp3_bytes(2000), "too short"),
    ],
)
async def test_files_without_usable_audio_end_in_status_error(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession, data: bytes, fragment: str
) -> None:
    transcript = await transcribe(fake, client, data)
    assert transcript["status"] == "error"
    assert fragment in transcript["error"]
    assert transcript["text"] is None


async def test_error_for_makes_valid_audio_fail(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    data = mp3_bytes(seed=7)
    fake.config.error_for.add(sha(data))
    transcript = await transcribe(fake, client, data)
    assert (transcript["status"], transcript["error"]) == ("error", fake.config.error_message)


async def test_urls_that_are_not_uploads_fail_to_download(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    job = await submit(client, "https://example.com/talk.mp3")
    record = await fake.wait_for_status(job["id"])
    assert record.status == "error"
    assert record.error is not None and record.error.startswith("Download error")


async def test_jobs_over_the_concurrency_cap_stay_queued(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.config.concurrency = 1
    fake.hold_jobs()
    first = await submit(client, await upload(client, mp3_bytes(seed=1)))
    second = await submit(client, await upload(client, mp3_bytes(seed=2)))
    await fake.wait_for_status(first["id"], "processing")
    _, polled_first = await get_json(client, f"/v2/transcript/{first['id']}")
    _, polled_second = await get_json(client, f"/v2/transcript/{second['id']}")
    assert polled_first["status"] == "processing"
    assert (polled_second["status"], polled_second["throttled"]) == ("queued", True)

    fake.release_jobs()
    await fake.wait_for_status(first["id"], "completed")
    await fake.wait_for_status(second["id"], "processing", "completed")
    assert (await fake.wait_for_status(second["id"])).status == "completed"


async def test_raising_the_cap_starts_queued_jobs(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.config.concurrency = 0
    job = await submit(client, await upload(client, mp3_bytes()))
    assert fake.transcripts[job["id"]].status == "queued"
    fake.config.concurrency = 3
    fake.reschedule()
    assert (await fake.wait_for_status(job["id"])).status == "completed"


async def test_delete_blanks_the_transcript_and_its_upload(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.hold_jobs()
    audio_url = await upload(client, mp3_bytes())
    job = await submit(client, audio_url)
    async with client.delete(f"/v2/transcript/{job['id']}") as response:
        assert response.status == 400  # not finished yet
    fake.release_jobs()
    await fake.wait_for_status(job["id"])
    async with client.delete(f"/v2/transcript/{job['id']}") as response:
        assert response.status == 200
        deleted = await response.json()
    assert deleted["text"] == "Deleted by user."
    assert deleted["words"] is None
    body = {"audio_url": audio_url, "speech_models": MODELS}
    async with client.post("/v2/transcript", json=body) as response:
        assert response.status == 403


# -- captions, sentences, paragraphs ---------------------------------------------------


async def test_srt_and_vtt_captions_are_well_formed(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    transcript = await transcribe(fake, client, mp3_bytes(160_000))
    words = transcript["words"]
    async with client.get(f"/v2/transcript/{transcript['id']}/srt") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        srt_text = await response.text()
    cues = list(srt.parse(srt_text))
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert " ".join(c.content for c in cues) == transcript["text"]
    assert cues[0].start.total_seconds() * 1000 == words[0]["start"]
    assert round(cues[-1].end.total_seconds() * 1000) == words[-1]["end"]

    path = f"/v2/transcript/{transcript['id']}/vtt?chars_per_caption=12"
    async with client.get(path) as response:
        vtt_text = await response.text()
    assert vtt_text.startswith("WEBVTT\n")
    captions = webvtt.from_string(vtt_text).captions
    assert " ".join(c.text for c in captions) == transcript["text"]
    assert all(len(c.text) <= 12 or " " not in c.text for c in captions)
    assert len(captions) > len(cues)
    position = 0
    for caption in captions:  # each cue spans its words exactly
        spoken = words[position : position + len(caption.text.split())]
        assert (caption.start, caption.end) == (
            vtt_clock(spoken[0]["start"]),
            vtt_clock(spoken[-1]["end"]),
        )
        position += len(spoken)


async def test_captions_of_unfinished_transcripts_are_400(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.hold_jobs()
    job = await submit(client, await upload(client, mp3_bytes()))
    for tail in ("srt", "vtt", "sentences", "paragraphs"):
        async with client.get(f"/v2/transcript/{job['id']}/{tail}") as response:
            assert response.status == 400, tail
    async with client.get(f"/v2/transcript/{job['id']}/srt?chars_per_caption=x") as response:
        assert response.status == 400


async def test_sentences_and_paragraphs_cover_the_words(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    transcript = await transcribe(fake, client, mp3_bytes())
    status, sentences = await get_json(client, f"/v2/transcript/{transcript['id']}/sentences")
    assert status == 200
    assert sentences["id"] == transcript["id"]
    assert sentences["audio_duration"] == transcript["audio_duration"]
    assert " ".join(s["text"] for s in sentences["sentences"]) == transcript["text"]
    assert sum(len(s["words"]) for s in sentences["sentences"]) == len(transcript["words"])
    _, paragraphs = await get_json(client, f"/v2/transcript/{transcript['id']}/paragraphs")
    assert [p["text"] for p in paragraphs["paragraphs"]] == [transcript["text"]]


# -- listing ---------------------------------------------------------------------------


async def test_list_is_newest_first_with_audio_urls(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.hold_jobs()
    jobs = [await submit(client, await upload(client, mp3_bytes(seed=i))) for i in range(5)]
    newest_first = [j["id"] for j in reversed(jobs)]

    _, listing = await get_json(client, "/v2/transcript")
    assert [t["id"] for t in listing["transcripts"]] == newest_first
    assert [t["audio_url"] for t in listing["transcripts"]] == [
        j["audio_url"] for j in reversed(jobs)
    ]
    item = listing["transcripts"][0]
    assert set(item) == {
        "id",
        "resource_url",
        "status",
        "created",
        "completed",
        "audio_url",
        "error",
    }
    assert item["resource_url"].endswith(f"/v2/transcript/{item['id']}")
    assert listing["page_details"]["result_count"] == 5

    _, page = await get_json(client, "/v2/transcript?limit=2")
    assert [t["id"] for t in page["transcripts"]] == newest_first[:2]
    assert page["page_details"]["next_url"] is None
    prev_url = page["page_details"]["prev_url"]
    assert f"before_id={newest_first[1]}" in prev_url
    async with client.get(prev_url) as response:
        older = await response.json()
    assert [t["id"] for t in older["transcripts"]] == newest_first[2:4]

    _, after = await get_json(client, f"/v2/transcript?after_id={jobs[1]['id']}&limit=2")
    assert [t["id"] for t in after["transcripts"]] == [jobs[3]["id"], jobs[2]["id"]]

    fake.release_jobs()
    await fake.wait_for_status(jobs[0]["id"])
    _, completed = await get_json(client, "/v2/transcript?status=completed&limit=200")
    assert jobs[0]["id"] in [t["id"] for t in completed["transcripts"]]
    assert all(t["completed"] for t in completed["transcripts"])

    for bad in ("limit=0", "limit=201", "limit=x", "status=done", "before_id=nope"):
        status, _ = await get_json(client, f"/v2/transcript?{bad}")
        assert status == 400, bad


# -- faults ----------------------------------------------------------------------------


async def test_fail_next_503_twice_then_success(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    audio_url = await upload(client, mp3_bytes())
    fake.fail_next(ROUTE_SUBMIT, status=503, times=2)
    body = {"audio_url": audio_url, "speech_models": MODELS}
    for _ in range(2):
        async with client.post("/v2/transcript", json=body) as response:
            assert response.status == 503
            assert await response.read() == b""
    assert fake.transcripts == {}  # a faulted submit has no effect
    async with client.post("/v2/transcript", json=body) as response:
        assert response.status == 200
    assert len(fake.transcripts) == 1
    assert fake.counters.requests_to(ROUTE_SUBMIT, 503) == 2
    assert fake.counters.faults[("503", ROUTE_SUBMIT)] == 2
    assert fake.pending_faults == 0


async def test_429_carries_retry_after_and_500_the_documented_body(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.config.faults = FaultConfig(retry_after_s=7)
    fake.fail_next(ROUTE_LIST, status=429)
    fake.fail_next(ROUTE_LIST, status=500)
    async with client.get("/v2/transcript") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        assert "error" in await response.json()
    async with client.get("/v2/transcript") as response:
        assert response.status == 500
        assert await response.json() == {"error": "Server error, developers have been alerted."}


async def test_drop_closes_the_connection_without_an_answer(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    audio_url = await upload(client, mp3_bytes())
    fake.fail_next(ROUTE_SUBMIT, kind="drop")
    body = {"audio_url": audio_url, "speech_models": MODELS}
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.post("/v2/transcript", json=body):
            pass
    assert fake.transcripts == {}
    assert fake.counters.requests_to(ROUTE_SUBMIT, DROPPED) == 1

    # aiohttp's client resends an idempotent request once after a disconnect: drop both
    fake.fail_next(ROUTE_POLL, kind="drop", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get("/v2/transcript/some-id"):
            pass
    assert fake.counters.requests_to(ROUTE_POLL, DROPPED) == 2


async def test_drop_mid_upload_records_no_upload(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.fail_next(ROUTE_UPLOAD, kind="drop_mid_upload")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.post("/v2/upload", data=io.BytesIO(mp3_bytes(2_000_000))):
            pass
    assert fake.uploads == {}
    assert fake.counters.uploads_completed == 0
    assert fake.counters.requests_to(ROUTE_UPLOAD, DROPPED) == 1
    assert (await upload(client, mp3_bytes())).startswith(CDN_UPLOAD_PREFIX)


async def test_slow_answers_late_but_takes_effect(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.config.faults = FaultConfig(slow_s=5)
    audio_url = await upload(client, mp3_bytes())
    fake.fail_next(ROUTE_SUBMIT, kind="slow")
    body = {"audio_url": audio_url, "speech_models": MODELS}
    with pytest.raises(asyncio.TimeoutError):
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with client.post("/v2/transcript", json=body, timeout=timeout):
            pass
    await fake.wait_until(lambda: len(fake.transcripts) == 1)
    _, listing = await get_json(client, "/v2/transcript?limit=1")
    assert listing["transcripts"][0]["audio_url"] == audio_url  # what a reconciling client sees


async def test_random_faults_follow_the_seed_and_the_endpoint_list(fake: FakeAssemblyAI) -> None:
    async def statuses() -> list[int]:
        fake.config.faults = FaultConfig(
            rate=0.5, kinds=("500", "503"), seed=42, endpoints=frozenset({ROUTE_LIST})
        )
        async with aiohttp.ClientSession(fake.base_url, headers={"Authorization": KEY}) as s:
            results = []
            for _ in range(30):
                async with s.get("/v2/transcript") as response:
                    results.append(response.status)
            async with s.get("/v2/transcript/x") as response:
                assert response.status == 404  # not an eligible endpoint
            return results

    first, second = await statuses(), await statuses()
    assert first == second
    assert {200, 500, 503} <= set(first)


# -- webhooks --------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint that answers with scripted statuses (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: asyncio.Queue[tuple[dict[str, Any], dict[str, str], str]] = asyncio.Queue()
        self.status_at_delivery: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.put_nowait((await request.json(), dict(request.headers), request.query_string))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver_url() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield receiver, f"http://{host}:{port}/hook"
    await runner.cleanup()


async def test_webhook_is_delivered_with_the_auth_header_after_retries(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession, receiver_url: tuple[Receiver, str]
) -> None:
    receiver, url = receiver_url
    receiver.statuses = [500, 503]
    fake.config.webhook_retry_delay_s = 0.01
    job = await submit(
        client,
        await upload(client, mp3_bytes()),
        webhook_url=f"{url}?job=7",
        webhook_auth_header_name="X-Hook-Secret",
        webhook_auth_header_value="s3cret",
    )
    assert job["webhook_auth"] is True
    assert "webhook_auth_header_value" not in job
    for _ in range(3):
        payload, headers, query = await asyncio.wait_for(receiver.calls.get(), 10)
        assert payload == {"transcript_id": job["id"], "status": "completed"}
        assert headers["X-Hook-Secret"] == "s3cret"
        assert query == "job=7"
    await fake.wait_until(lambda: fake.counters.webhook_deliveries == 1)
    assert fake.counters.webhook_attempts == 3
    _, polled = await get_json(client, f"/v2/transcript/{job['id']}")
    assert polled["webhook_status_code"] == 200


async def test_webhook_4xx_is_not_retried(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession, receiver_url: tuple[Receiver, str]
) -> None:
    receiver, url = receiver_url
    receiver.statuses = [410]
    job = await submit(client, await upload(client, b"not audio" * 400), webhook_url=url)
    payload, _, _ = await asyncio.wait_for(receiver.calls.get(), 10)
    assert payload == {"transcript_id": job["id"], "status": "error"}
    await fake.wait_until(lambda: fake.counters.webhook_refusals == 1)
    assert fake.counters.webhook_attempts == 1
    assert receiver.calls.empty()


# -- counters --------------------------------------------------------------------------


async def test_counters_track_requests_uploads_submits_and_polls(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    data = mp3_bytes(10_000)
    first_url = await upload(client, data)
    await upload(client, data)
    job = await submit(client, first_url)
    await submit(client, first_url)
    await get_json(client, f"/v2/transcript/{job['id']}")
    await get_json(client, f"/v2/transcript/{job['id']}")
    counters = fake.counters
    assert (counters.uploads_started, counters.uploads_completed) == (2, 2)
    assert counters.upload_bytes == 20_000
    assert counters.uploads_by_sha256[sha(data)] == 2
    assert counters.submits_by_sha256[sha(data)] == 2
    assert counters.submits_by_audio_url[first_url] == 2
    assert counters.submits == 2
    assert counters.polls == 2 and counters.polls_by_id[job["id"]] == 2
    assert counters.requests[("POST", "/v2/upload", 200)] == 2
    assert counters.requests_to(ROUTE_POLL) == 2
    assert counters.total_requests == 6
    assert 1 <= counters.peak_rps <= 6
    assert fake.transcripts_for(sha(data))[0].id == job["id"]

    fake.reset_counters()
    assert fake.counters.total_requests == 0 and fake.counters.peak_rps == 0
    assert fake.counters.uploads_by_sha256 == {}


def test_burst_beyond_is_the_worst_run_of_seconds_over_the_rate() -> None:
    counters = FakeCounters()
    counters.requests_per_second.update({100: 25, 101: 15, 103: 12})
    # 100-101 run 20 ahead of 10/s; the quiet second 102 gives 10 back; 103 adds only 2.
    assert counters.burst_beyond(10.0) == 20
    assert counters.burst_beyond(30.0) == 0
    assert FakeCounters().burst_beyond(1.0) == 0


# -- lifecycle and standalone ----------------------------------------------------------


async def test_stop_cancels_running_jobs_and_frees_the_port() -> None:
    server = FakeAssemblyAI(FakeConfig(latency_s=60))
    with pytest.raises(RuntimeError):
        _ = server.base_url
    await server.start()
    try:
        headers = {"Authorization": "test-key"}
        async with aiohttp.ClientSession(server.base_url, headers=headers) as s:
            job = await submit(s, await upload(s, mp3_bytes()))
        await server.wait_for_status(job["id"], "processing")
    finally:
        await server.stop()
    assert server.transcripts[job["id"]].status == "processing"
    assert server.background_errors == []


def test_module_runs_standalone_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fakeapi", "--port", "0", "--api-key", "k1"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,  # the fake is a test-support package beside the tests
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")

        async def probe() -> int:
            async with (
                aiohttp.ClientSession(headers={"Authorization": "k1"}) as session,
                session.get(f"{base_url}/v2/transcript?limit=1") as response,
            ):
                return response.status

        assert asyncio.run(probe()) == 200
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# -- the official SDK as an independent client -----------------------------------------


@pytest.fixture
def sdk_settings(fake: FakeAssemblyAI) -> Any:
    names = ("base_url", "api_key", "polling_interval")
    saved = {name: getattr(aai.settings, name) for name in names}
    aai.settings.base_url = fake.base_url
    aai.settings.api_key = KEY
    aai.settings.polling_interval = 0.05  # the SDK's default is a fixed 3 s
    yield aai.settings
    for name, value in saved.items():
        setattr(aai.settings, name, value)


async def test_official_sdk_transcribes_against_the_fake(
    fake: FakeAssemblyAI, sdk_settings: Any, tmp_path: Path
) -> None:
    paths = []
    for i in range(4):
        path = tmp_path / f"talk-{i}.mp3"
        path.write_bytes(mp3_bytes(5000 + i, seed=100 + i))
        paths.append(path)
    expected = {str(p): fake_text_for(sha(p.read_bytes())) for p in paths}
    sdk_client = aai.Client(settings=sdk_settings)
    config = aai.TranscriptionConfig(speech_models=MODELS)

    def run() -> tuple[Any, Any]:
        transcriber = aai.Transcriber(client=sdk_client)
        single = transcriber.transcribe(str(paths[0]), config=config)
        group = transcriber.transcribe_group([str(p) for p in paths[1:]], config=config)
        return single, group

    try:
        single, group = await asyncio.to_thread(run)
    finally:
        sdk_client.http_client.close()
    assert single.status == aai.TranscriptStatus.completed
    assert single.text == expected[str(paths[0])]
    assert single.audio_duration == 1
    assert [w.text for w in single.words] == single.text.split()
    assert len(group.transcripts) == 3
    assert {t.status for t in group.transcripts} == {aai.TranscriptStatus.completed}
    assert {t.text for t in group.transcripts} == {expected[str(p)] for p in paths[1:]}
    assert fake.counters.uploads_completed == 4
    assert {tuple(r.params) for r in fake.transcripts.values()} == {("audio_url", "speech_models")}


# -- the service's shape: audio length, processing time, the FIFO queue ------------------------

#: MPEG-2 layer III, 16 kbps, 16 kHz, mono: 72-byte frames of 36 ms, 2000 bytes per second.
CBR_16K_FRAME = b"\xff\xf3\x28\xc0" + bytes(68)


def test_an_mp3s_length_comes_from_its_header() -> None:
    kitchen = (SAMPLES / "kitchen.mp3").read_bytes()
    # LAME's Info frame counts 126 frames of 576 samples at 16 kHz; the 16 kB/s rule would
    # say 1.1 s for these 18 kB.
    assert audio_ms_of(kitchen[:65536], len(kitchen)) == 4536
    # No Info frame: constant bitrate, so the length follows from the size.
    hour = 3600 * 2000
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x00"
    assert audio_ms_of(tag + CBR_16K_FRAME * 100, len(tag) + hour) == 3_600_000
    # Random bytes behind an ID3 header are no MP3 stream: the size rule holds.
    assert audio_ms_of(mp3_bytes(48_000), 48_000) == 3000


async def test_processing_time_grows_with_the_mp3s_length_read_from_its_header(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.config.latency_s, fake.config.latency_per_audio_s = 3.0, 20 / 3600
    assert fake.processing_s(3_600_000) == pytest.approx(23.0)  # 3 s + 20 s per audio hour
    fake.config.latency_s, fake.config.latency_per_audio_s = 0.0, 0.1
    data = (SAMPLES / "kitchen.mp3").read_bytes()
    job = await submit(client, await upload(client, data))
    record = await fake.wait_for_status(job["id"])
    assert record.upload is not None and record.upload.audio_ms == 4536
    assert record.completed is not None
    # 0.1 x 4.536 s of audio; the size rule would have given 0.11 s.
    assert (record.completed - record.created).total_seconds() >= 0.45
    _, transcript = await get_json(client, f"/v2/transcript/{job['id']}")
    assert transcript["audio_duration"] == 4


async def test_jobs_over_the_cap_start_first_in_first_out(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    fake.config.concurrency = 1
    fake.hold_jobs()
    jobs = [await submit(client, await upload(client, mp3_bytes(seed=i))) for i in range(4)]
    assert [fake.transcripts[j["id"]].status for j in jobs] == ["processing"] + ["queued"] * 3
    fake.release_jobs()
    done = [await fake.wait_for_status(j["id"]) for j in jobs]
    finished = [r.completed for r in done]
    assert None not in finished
    assert finished == sorted(finished)  # type: ignore[type-var]


def test_the_command_line_sets_the_services_shape() -> None:
    config = config_from_args(
        ["--latency-s", "3", "--latency-per-audio-s", "0.005", "--upload-bandwidth-bps", "8e6"]
    )
    assert (config.latency_s, config.latency_per_audio_s) == (3.0, 0.005)
    assert config.upload_bandwidth_bps == 8e6
    assert config_from_args([]).upload_bandwidth_bps is None
