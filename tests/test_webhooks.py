"""Webhook mode: the fake service POSTs real notifications to the daemon's receiver."""

from __future__ import annotations

import aiohttp
from msgspec.structs import replace

from conftest import (
    Folders,
    Services,
    eventually,
    expected_text,
    held_port,
    make_audio,
    service_url,
    settings_for,
)
from fakeapi import FakeAssemblyAI
from transcribed.backends.assemblyai import WEBHOOK_HEADER
from transcribed.config import Settings


def _webhook_settings(
    folders: Folders, fake: FakeAssemblyAI, port: int, **extra: object
) -> Settings:
    # The receiver's address must be in the settings before the service starts, so the test
    # holds the port (see `held_port`) and the service listens on it alongside.
    return settings_for(
        folders,
        fake,
        **{
            "http.listen": f"127.0.0.1:{port}",
            "assemblyai.webhook_url": f"http://127.0.0.1:{port}/webhook",
            **extra,
        },
    )


async def _notifications_settled(fake: FakeAssemblyAI, count: int) -> None:
    """The fake has had its last word on ``count`` notifications (it counts after the reply)."""
    counters = fake.counters
    await fake.wait_until(
        lambda: (
            counters.webhook_deliveries + counters.webhook_refusals + counters.webhooks_abandoned
            >= count
        ),
        timeout_s=30,
    )


async def test_notifications_replace_polling(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    fake.config.latency_s = 1.0
    shas = [make_audio(folders.inbox / f"{i}.mp3", seed=f"hook{i}") for i in range(10)]
    with held_port(shareable=True) as port:
        settings = _webhook_settings(folders, fake, port, **{"assemblyai.poll_max_s": 30.0})
        assert await services.run(settings, once=True) == 0
    for i, sha in enumerate(shas):
        assert (folders.outbox / f"{i}.txt").read_text() == expected_text(sha) + "\n"
    await _notifications_settled(fake, 10)
    assert fake.counters.webhook_deliveries == 10
    # One fetch per job after its notification; no timer polls, no list sweeps.
    assert fake.counters.polls == 10
    assert fake.counters.lists <= 1  # the key check at start-up
    record = next(iter(fake.transcripts.values()))
    assert record.params["webhook_auth_header_name"] == WEBHOOK_HEADER


async def test_the_receiver_refuses_bad_secrets_and_unknown_transcripts(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    fake.hold_jobs()
    make_audio(folders.inbox / "a.mp3", seed="refuse")
    with held_port(shareable=True) as port:
        service, task = services.start(_webhook_settings(folders, fake, port))
        await fake.wait_until(lambda: fake.counters.submits == 1, 20)
        transcript_id = next(iter(fake.transcripts))
        secret = service.webhook_secret
        assert secret
        url = f"{await service_url(service)}/webhook"
        assert url == f"http://127.0.0.1:{port}/webhook"
        async with aiohttp.ClientSession() as session:
            body = {"transcript_id": transcript_id, "status": "completed"}
            async with session.post(url, json=body, headers={WEBHOOK_HEADER: "wrong"}) as answer:
                assert answer.status == 401
            async with session.post(url, json=body) as answer:
                assert answer.status == 401
            unknown = {"transcript_id": "not-ours", "status": "completed"}
            async with session.post(url, json=unknown, headers={WEBHOOK_HEADER: secret}) as answer:
                assert answer.status == 404
            async with session.post(url, data=b"{", headers={WEBHOOK_HEADER: secret}) as answer:
                assert answer.status == 400
        fake.release_jobs()
        await eventually(lambda: (folders.outbox / "a.txt").exists(), 20, "transcript")
        await _notifications_settled(fake, 1)
        service.request_stop()
        assert await task == 0
    assert fake.counters.webhook_deliveries == 1


async def test_a_lost_notification_is_caught_by_the_safety_net_poll(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    fake.config.webhook_attempts = 1
    sha = make_audio(folders.inbox / "a.mp3", seed="lost")
    # The receiver runs, but the service sends to a port that is bound and never listens:
    # every notification is refused, so lost.
    with held_port(shareable=True) as port, held_port() as nobody:
        settings = _webhook_settings(folders, fake, port, **{"assemblyai.poll_max_s": 1.0})
        lost = f"http://127.0.0.1:{nobody}/webhook"
        settings = replace(settings, assemblyai=replace(settings.assemblyai, webhook_url=lost))
        assert await services.run(settings, once=True) == 0
        await _notifications_settled(fake, 1)
    assert (folders.outbox / "a.txt").read_text() == expected_text(sha) + "\n"
    assert fake.counters.webhook_deliveries == 0
    assert fake.counters.webhooks_abandoned == 1
