"""The event loop stays responsive while the local engine decodes: /healthz answers fast."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import Folders, Services, service_url, settings_for

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.mark.local
async def test_health_probes_answer_within_0_2_s_during_a_local_batch(
    folders: Folders, services: Services
) -> None:
    pytest.importorskip("faster_whisper")
    for copy in range(2):
        for sample in sorted(SAMPLES.glob("*.mp3")):
            shutil.copy(sample, folders.inbox / f"{copy}-{sample.name}")
    settings = settings_for(folders, None, backend="local", **{"http.listen": "127.0.0.1:0"})
    service, run = services.start(settings, once=True)
    url = f"{await service_url(service)}/healthz"

    latencies: list[float] = []
    busy_probes = 0
    async with aiohttp.ClientSession() as session:
        while not run.done():
            started = time.perf_counter()
            try:
                async with session.get(url) as answer:
                    assert answer.status == 200
            except aiohttp.ClientConnectionError:
                assert run.done() or service.stop.is_set(), "the endpoint went away mid-run"
                break  # the batch ended between the check and the probe
            latencies.append(time.perf_counter() - started)
            if service.pool is not None and service.pool.in_flight:
                busy_probes += 1
            await asyncio.sleep(0.05)  # the probes' pace, not a wait for anything
    assert await run == 0
    assert len(list(folders.outbox.glob("*.txt"))) == 10
    assert busy_probes >= 10, "the probes did not overlap the decoding"
    print(f"\n{len(latencies)} probes, {busy_probes} while decoding, max {max(latencies):.3f}s")
    assert max(latencies) < 0.2
