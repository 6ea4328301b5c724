"""The event loop stays responsive while the local engine decodes: /healthz answers fast."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import Folders, settings_for
from transcribed.service import Service

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.mark.local
async def test_health_probes_answer_within_0_2_s_during_a_local_batch(folders: Folders) -> None:
    pytest.importorskip("faster_whisper")
    for copy in range(2):
        for sample in sorted(SAMPLES.glob("*.mp3")):
            shutil.copy(sample, folders.inbox / f"{copy}-{sample.name}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings_for(folders, None, backend="local", **{"http.listen": f"127.0.0.1:{port}"})
    service = Service(settings, once=True)
    run = asyncio.create_task(service.run())

    latencies: list[float] = []
    busy_probes = 0
    async with aiohttp.ClientSession() as session:
        while not run.done():
            started = time.perf_counter()
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    assert answer.status == 200
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # not listening yet, or already closed
                continue
            latencies.append(time.perf_counter() - started)
            if service.pool is not None and service.pool.in_flight:
                busy_probes += 1
            await asyncio.sleep(0.05)
    assert await run == 0
    assert len(list(folders.outbox.glob("*.txt"))) == 10
    assert busy_probes >= 10, "the probes did not overlap the decoding"
    print(f"\n{len(latencies)} probes, {busy_probes} while decoding, max {max(latencies):.3f}s")
    assert max(latencies) < 0.2
