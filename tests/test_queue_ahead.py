"""The service's queue is kept fed: as many jobs wait at the service as it runs, no more."""

from __future__ import annotations

from conftest import Folders, Services, expected_text, make_audio, settings_for
from fakeapi import FakeAssemblyAI

CAP = 3


async def test_one_cap_of_jobs_waits_at_the_service_and_starts_as_slots_free(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    fake.config.concurrency = CAP  # the account runs 3 jobs at once; the rest queue there
    fake.hold_jobs()
    shas = [make_audio(folders.inbox / f"{i:02d}.mp3", seed=f"q{i}") for i in range(10)]
    settings = settings_for(folders, fake, **{"assemblyai.max_concurrent_jobs": CAP})
    service, task = services.start(settings, once=True)

    def statuses() -> list[str]:
        return [record.status for record in fake.transcripts.values()]

    # The cap running, as many again waiting in the service's queue, and no more than that.
    await fake.wait_until(lambda: fake.counters.submits == 2 * CAP, timeout_s=30)
    await fake.wait_until(lambda: statuses().count("processing") == CAP, timeout_s=30)
    assert statuses().count("queued") == CAP
    assert service.pool is not None and service.pool.in_flight == 2 * CAP

    fake.release_jobs()
    assert await task == 0
    for i, sha in enumerate(shas):
        assert (folders.outbox / f"{i:02d}.txt").read_text() == expected_text(sha) + "\n"
        assert fake.counters.submits_by_sha256[sha] == 1
