"""Failure handling against the fake API: outages, ambiguous submits, dedupe, stale state."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
import structlog
from msgspec.structs import replace

from conftest import API_KEY, Folders, Services, eventually, expected_text, make_audio, settings_for
from fakeapi import (
    ROUTE_LIST,
    ROUTE_SUBMIT,
    FakeAssemblyAI,
    FakeConfig,
    FaultConfig,
)
from transcribed.backends import Job
from transcribed.backends.assemblyai import AssemblyAIBackend
from transcribed.backends.assemblyai_api import AssemblyAIClient
from transcribed.config import Settings, load_settings


class _Checkpoints:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []

    def uploaded(self, upload_url: str) -> None:
        self.events.append(("uploaded", upload_url))

    async def submitting(self) -> None:
        self.events.append(("submitting", None))

    def submitted(self, transcript_id: str) -> None:
        self.events.append(("submitted", transcript_id))

    def upload_lost(self) -> None:
        self.events.append(("upload_lost", None))

    def phase(self, name: str) -> None:
        pass


async def test_a_duplicate_file_gets_outputs_without_a_second_upload(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    sha = make_audio(folders.inbox / "original.mp3", seed="same")
    assert await services.run(settings_for(folders, fake), once=True) == 0
    shutil.copy(folders.done / "original.mp3", folders.inbox / "copy under another name.mp3")
    (folders.inbox / "sub").mkdir()
    shutil.copy(folders.done / "original.mp3", folders.inbox / "sub" / "again.mp3")

    with structlog.testing.capture_logs() as logs:
        assert await services.run(settings_for(folders, fake), once=True) == 0

    for name in ("original", "copy under another name", "sub/again"):
        assert (folders.outbox / f"{name}.txt").read_text() == expected_text(sha) + "\n"
    assert fake.counters.uploads_by_sha256[sha] == 1
    assert fake.counters.submits_by_sha256[sha] == 1
    assert sum(1 for e in logs if e["event"] == "duplicate_reused") == 2


async def test_dedupe_can_be_turned_off(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    sha = make_audio(folders.inbox / "a.mp3", seed="same")
    shutil.copy(folders.inbox / "a.mp3", folders.inbox / "b.mp3")
    settings = settings_for(folders, fake, **{"daemon.dedupe": False})
    assert await services.run(settings, once=True) == 0
    assert fake.counters.uploads_by_sha256[sha] == 2


async def test_identical_files_in_one_batch_are_uploaded_once(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    sha = make_audio(folders.inbox / "a.mp3", seed="twins")
    for name in ("b.mp3", "c.mp3"):
        shutil.copy(folders.inbox / "a.mp3", folders.inbox / name)
    assert await services.run(settings_for(folders, fake), once=True) == 0
    assert fake.counters.uploads_by_sha256[sha] == 1
    assert len(list(folders.outbox.glob("*.txt"))) == 3


async def test_a_submit_whose_answer_is_lost_is_found_not_paid_twice(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    # The service creates the transcript, but the answer comes after the client gave up.
    fake.config.faults = FaultConfig(slow_s=1.5)
    fake.fail_next(ROUTE_SUBMIT, kind="slow")
    sha = make_audio(folders.inbox / "a.mp3", seed="ambiguous")
    settings = settings_for(folders, fake, **{"assemblyai.read_timeout_s": 0.5})
    with structlog.testing.capture_logs() as logs:
        assert await services.run(settings, once=True) == 0
    assert fake.counters.submits_by_sha256[sha] == 1
    assert fake.counters.requests_to(ROUTE_LIST) >= 1
    assert any(e["event"] == "submit_recovered" for e in logs), [e["event"] for e in logs]
    assert (folders.outbox / "a.txt").read_text() == expected_text(sha) + "\n"


async def test_an_outage_of_the_api_is_waited_out_and_reported_as_degraded(
    folders: Folders, fake: FakeAssemblyAI, monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    import transcribed.backends.assemblyai_api as api

    monkeypatch.setattr(api, "DEGRADED_AFTER_S", 0.5)  # a short outage is enough to show it
    sha = make_audio(folders.inbox / "a.mp3", seed="outage")
    fake.config.faults = FaultConfig(rate=1.0, kinds=("503", "drop"), seed=1)
    settings = settings_for(folders, fake, **{"assemblyai.retry_max_backoff_s": 0.2})
    with structlog.testing.capture_logs() as logs:
        _, task = services.start(settings, once=True)
        await eventually(
            lambda: any(e["event"] == "api_degraded" for e in logs), 20, "degraded report"
        )
        assert not task.done()
        assert (folders.inbox / "a.mp3").is_file()
        fake.config.faults = FaultConfig()
        assert await asyncio.wait_for(task, 30) == 0
    assert any(e["event"] == "api_recovered" for e in logs)
    assert (folders.outbox / "a.txt").read_text() == expected_text(sha) + "\n"
    assert not any(folders.failed.iterdir())


async def test_an_upload_url_the_api_no_longer_accepts_is_uploaded_again(
    tmp_path: Path, fake: FakeAssemblyAI
) -> None:
    settings = settings_for_backend(fake)
    path = tmp_path / "a.mp3"
    sha = make_audio(path, seed="expired")
    backend = AssemblyAIBackend(settings.assemblyai, settings.transcription, ["txt"])
    await backend.start()
    try:
        stale = await backend.client.upload(path, path.stat().st_size, lambda _n: None)
        fake.forget_uploads()
        checkpoints = _Checkpoints()
        job = Job(id=1, path=path, rel_path="a.mp3", size=path.stat().st_size, upload_url=stale)
        result = await backend.transcribe(job, checkpoints)
    finally:
        await backend.close()
    assert result.text == expected_text(sha)
    kinds = [kind for kind, _ in checkpoints.events]
    assert kinds[:3] == ["submitting", "upload_lost", "uploaded"]
    assert fake.counters.uploads_by_sha256[sha] == 2
    assert fake.counters.submits_by_sha256[sha] == 1


def settings_for_backend(fake: FakeAssemblyAI) -> Settings:
    return load_settings(
        None,
        {},
        {
            "assemblyai.base_url": fake.base_url,
            "assemblyai.api_key": API_KEY,
            "assemblyai.poll_min_s": 0.05,
            "assemblyai.poll_max_s": 0.5,
            "assemblyai.retry_max_backoff_s": 0.5,
        },
    )


async def test_a_stuck_job_is_reported_polled_slowly_and_resubmitted_when_asked(
    tmp_path: Path, fake: FakeAssemblyAI
) -> None:
    path = tmp_path / "a.mp3"
    sha = make_audio(path, seed="stuck")
    settings = settings_for_backend(fake)
    aai = replace(settings.assemblyai, stuck_after_s=0.3, resubmit_stuck=True)
    backend = AssemblyAIBackend(aai, settings.transcription, ["txt"])
    fake.hold_jobs()
    await backend.start()
    try:
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(
                backend.transcribe(
                    Job(id=1, path=path, rel_path="a.mp3", size=8000), _Checkpoints()
                )
            )
            await eventually(
                lambda: any(e["event"] == "job_resubmitted" for e in logs), 10, "resubmit"
            )
            fake.release_jobs()
            result = await asyncio.wait_for(task, 20)
    finally:
        await backend.close()
    assert any(e["event"] == "job_stuck" for e in logs)
    assert fake.counters.submits_by_sha256[sha] == 2
    assert fake.counters.uploads_by_sha256[sha] == 1
    assert result.text == expected_text(sha)


async def test_request_rate_stays_within_the_budget(folders: Folders, services: Services) -> None:
    config = FakeConfig(api_keys=(API_KEY,), latency_s=2.0, concurrency=100)
    async with FakeAssemblyAI(config) as fake:
        for i in range(60):
            make_audio(folders.inbox / f"{i}.mp3", seed=f"budget{i}")
        settings = settings_for(
            folders,
            fake,
            **{
                "assemblyai.requests_per_s": 10.0,
                "assemblyai.request_burst": 5,
                "assemblyai.poll_min_s": 0.2,
            },
        )
        started = time.monotonic()
        assert await services.run(settings, once=True) == 0
        elapsed = time.monotonic() - started
        beyond = fake.counters.burst_beyond(10.0)
        peak = fake.counters.peak_rps
        total = fake.counters.total_requests
    print(f"60 jobs, 10/s + burst 5: peak {peak}/s, {beyond:g} beyond the rate, {total} requests")
    assert beyond <= 5 + 1
    assert peak <= 10 + 5 + 1
    assert total <= 10 * elapsed + 5 + 1


async def test_a_burst_goes_out_at_once_then_the_rate_holds(
    folders: Folders, services: Services
) -> None:
    config = FakeConfig(api_keys=(API_KEY,), latency_s=1.0, concurrency=100)
    async with FakeAssemblyAI(config) as fake:
        for i in range(20):
            make_audio(folders.inbox / f"{i}.mp3", seed=f"burst{i}")
        settings = settings_for(
            folders,
            fake,
            **{"assemblyai.requests_per_s": 5.0, "assemblyai.request_burst": 40},
        )
        assert await services.run(settings, once=True) == 0
        counters = fake.counters
    # 20 uploads and 20 submits fit the burst: they need not wait for the 5/s rate. (Counted
    # over runs of seconds, so a burst that straddles a second boundary still counts whole.)
    assert counters.burst_beyond(5.0) >= 25
    assert counters.burst_beyond(5.0) <= 40 + 1


async def test_after_a_429_requests_keep_to_the_rate_instead_of_bursting(
    folders: Folders,
) -> None:
    config = FakeConfig(api_keys=(API_KEY,), faults=FaultConfig(retry_after_s=1))
    async with FakeAssemblyAI(config) as fake:
        settings = settings_for(
            folders, fake, **{"assemblyai.requests_per_s": 10.0, "assemblyai.request_burst": 100}
        )
        async with AssemblyAIClient(settings.assemblyai) as client:
            fake.fail_next(ROUTE_LIST, status=429)
            await client.list_transcripts(limit="1")  # 429, a 1 s pause, then answered
            fake.reset_counters()
            await asyncio.gather(*(client.list_transcripts(limit="1") for _ in range(30)))
            beyond = fake.counters.burst_beyond(10.0)
    # The bucket refilled during the pause; without the steady rate all 30 would go at once.
    assert beyond <= 2
