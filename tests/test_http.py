"""The health and metrics endpoint over real HTTP, with the daemon running in-process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from conftest import Folders, Services, eventually, make_audio, service_url, settings_for
from fakeapi import ROUTE_POLL, FakeAssemblyAI, audio_duration_for
from transcribed.errors import ExitCode
from transcribed.http import HttpServer
from transcribed.metrics import Metrics
from transcribed.service import Service


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text; a missing series fails the test, never reads 0."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels or ''} in the metrics")


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_readyz_is_503_naming_the_part_not_ready_then_200_once_all_are() -> None:
    parts: dict[str, str] = {"journal": "ok", "watcher": "ok", "backend": "starting"}

    def readiness() -> Mapping[str, str]:
        return parts

    async with HttpServer("127.0.0.1", 0, Metrics(), readiness) as server:
        status, _, body = await get(f"{server.url}/readyz")
        assert status == 503
        assert '"backend": "starting"' in body
        status, _, body = await get(f"{server.url}/healthz")
        assert (status, body) == (200, '{"status": "ok"}')

        parts["backend"] = "ok"
        status, _, body = await get(f"{server.url}/readyz")
        assert status == 200
        assert '"status": "ok"' in body


async def test_a_busy_listen_address_is_a_restartable_failure_exit_1(
    folders: Folders, services: Services
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(
            folders, None, **{"backend": "local", "http.listen": f"127.0.0.1:{port}"}
        )
        assert await services.run(settings) == ExitCode.FAILED


async def test_metrics_move_as_files_flow_through_the_daemon(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    fake.hold_jobs()
    fake.fail_next(ROUTE_POLL, 503)
    sizes = {f"a{i}.mp3": 8000 + 1000 * i for i in range(3)}
    for name, size in sizes.items():
        make_audio(folders.inbox / name, seed=name, size=size)
    bad = make_audio(folders.inbox / "bad.mp3", seed="bad", size=5000)
    fake.config.error_for.add(bad)
    settings = settings_for(
        folders, fake, **{"http.listen": "127.0.0.1:0", "assemblyai.max_concurrent_jobs": 1}
    )
    service, task = services.start(settings)
    await asyncio.wait_for(service.watcher_ready.wait(), 30)
    base = await service_url(service)

    status, _, body = await get(f"{base}/readyz")
    assert status == 200, body
    # An account that runs one job at a time, and the service holding it: one running, one
    # waiting in the service's queue, the rest waiting here.
    await fake.wait_until(lambda: fake.counters.submits == 2, timeout_s=30)
    await eventually(lambda: service.watcher is not None and not service.watcher.unsettled)
    status, content_type, text = await get(f"{base}/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    assert sample(text, "transcribed_jobs_in_flight") == 2
    assert sample(text, "transcribed_queue_depth") == 2
    assert sample(text, "transcribed_oldest_waiting_file_age_seconds") > 0
    assert sample(text, "transcribed_upload_bytes_total") > 0
    assert sample(text, "transcribed_api_requests_total", endpoint="upload", status="200") == 2
    assert sample(text, "transcribed_files_total", outcome="done") == 0

    fake.release_jobs()
    await eventually(
        lambda: (
            service.pool is not None and service.pool.stats.done + service.pool.stats.failed == 4
        ),
        30,
        "four outcomes",
    )
    _, _, text = await get(f"{base}/metrics")
    service.request_stop()
    assert await task == 0

    total_bytes = sum(sizes.values()) + 5000
    assert sample(text, "transcribed_files_total", outcome="done") == 3
    assert sample(text, "transcribed_files_total", outcome="failed") == 1
    assert sample(text, "transcribed_jobs_in_flight") == 0
    assert sample(text, "transcribed_queue_depth") == 0
    assert sample(text, "transcribed_oldest_waiting_file_age_seconds") == 0
    assert sample(text, "transcribed_upload_bytes_total") == total_bytes
    assert sample(text, "transcribed_api_requests_total", endpoint="upload", status="200") == 4
    assert sample(text, "transcribed_api_requests_total", endpoint="submit", status="200") == 4
    assert sample(text, "transcribed_api_requests_total", endpoint="poll", status="503") == 1
    assert sample(text, "transcribed_api_retries_total", endpoint="poll") == 1
    assert sample(text, "transcribed_job_duration_seconds_count", outcome="done") == 3
    assert sample(text, "transcribed_job_duration_seconds_count", outcome="failed") == 1
    assert sample(text, "transcribed_job_duration_seconds_sum", outcome="done") > 0
    assert sample(text, "transcribed_audio_seconds_total") == sum(
        audio_duration_for(size) for size in sizes.values()
    )


async def test_readiness_reports_each_part_before_the_service_runs(folders: Folders) -> None:
    service = Service(settings_for(folders, None, backend="local"))
    assert service.readiness() == {
        "journal": "not open",
        "intake": "not running",
        "backend": "starting",
    }
