"""The fake's shared upload bandwidth: all uploads together go no faster than the limit, and
concurrent uploads share it fairly (a small upload started during a big one is not stuck
behind it)."""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fakeapi import FakeAssemblyAI, FakeConfig

KEY = "bandwidth-key"
RATE_BPS = 1_000_000


def body(size: int, seed: int) -> bytes:
    return b"ID3" + random.Random(seed).randbytes(size - 3)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAssemblyAI]:
    config = FakeConfig(api_keys=(KEY,), latency_s=0.05, upload_bandwidth_bps=RATE_BPS)
    async with FakeAssemblyAI(config) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAssemblyAI) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(fake.base_url, headers={"Authorization": KEY}) as session:
        yield session


async def upload(session: aiohttp.ClientSession, data: bytes) -> float:
    """Upload ``data``; returns when the answer came (monotonic seconds)."""
    async with session.post("/v2/upload", data=io.BytesIO(data)) as response:
        assert response.status == 200, await response.text()
        await response.read()
    return time.monotonic()


async def test_uploads_together_go_no_faster_than_the_shared_limit(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    sizes = (300_000, 300_000, 200_000)
    began = time.monotonic()
    await asyncio.gather(*(upload(client, body(n, i)) for i, n in enumerate(sizes)))
    # Every byte read reserves the link for bytes / rate, one reservation after another.
    assert time.monotonic() - began >= sum(sizes) / RATE_BPS
    assert fake.counters.uploads_completed == len(sizes)


async def test_a_small_upload_shares_the_link_with_a_big_one_already_running(
    fake: FakeAssemblyAI, client: aiohttp.ClientSession
) -> None:
    big = asyncio.create_task(upload(client, body(1_500_000, 1)))
    try:
        # The big one is on the link before the small one starts.
        await fake.wait_until(lambda: big.done() or fake.counters.upload_bytes > 0)
        assert not big.done()
        small_done = await upload(client, body(100_000, 2))
        big_done = await big
    finally:
        big.cancel()
    # First come, first served would finish the big upload (1.5 s at the limit) first.
    assert small_done < big_done


async def test_without_a_limit_uploads_are_not_paced() -> None:
    config = FakeConfig(api_keys=(KEY,), latency_s=0.05)
    assert config.upload_bandwidth_bps is None
    async with (
        FakeAssemblyAI(config) as server,
        aiohttp.ClientSession(server.base_url, headers={"Authorization": KEY}) as session,
    ):
        began = time.monotonic()
        # At 1 MB/s this would take 20 s; unpaced it is a local copy.
        await upload(session, body(20_000_000, 3))
        assert time.monotonic() - began < 15
