"""The fake AssemblyAI server in its own process, with a small control endpoint for benchmarks.

    python -m bench.fake_server --latency-s 5 --concurrency 200 --api-key KEY
    python -m bench.fake_server --latency-s 3 --latency-per-audio-s 0.00556 \
        --upload-bandwidth-bps 8e6 --concurrency 200 --api-key KEY

Prints one JSON line once it listens: ``{"base_url": ..., "control_url": ...}``. The control
server (a second port on the same event loop) answers:

- ``GET /counters``: the fake's counters as JSON (totals, per-route counts, peak requests/s);
- ``GET /uploads``: one record per finished upload: wall-clock start (request handler entered)
  and end (body fully read), size and sha256, so a benchmark can time each upload from outside;
- ``GET /jobs``: transcripts per status;
- ``GET /timeline``: when each transcript was created (submitted) and completed, as two sorted
  lists of wall-clock seconds;
- ``POST /reset``: zero the counters and forget the upload records.

Running the fake in its own process keeps its CPU out of the measuring process and out of the
client being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from fakeapi import FakeAssemblyAI, FakeConfig


@dataclass(slots=True)
class UploadTiming:
    """One upload as the server saw it (wall-clock seconds, comparable across processes)."""

    start: float
    end: float
    size: int
    sha256: str


class TimedFake(FakeAssemblyAI):
    """The fake, also recording when each upload started and ended."""

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.upload_timings: list[UploadTiming] = []

    async def receive_upload(self, request: web.Request, account: str) -> web.Response:
        start = time.time()
        response = await super().receive_upload(request, account)
        end = time.time()
        if response.status == 200 and isinstance(response.body, bytes):
            upload = self.uploads.get(json.loads(response.body).get("upload_url", ""))
            if upload is not None:
                self.upload_timings.append(UploadTiming(start, end, upload.size, upload.sha256))
        return response


def counters_json(fake: FakeAssemblyAI) -> dict[str, Any]:
    """Everything a benchmark reports about the server side, as plain JSON."""
    c = fake.counters
    return {
        "total_requests": c.total_requests,
        "peak_rps": c.peak_rps,
        "requests": [[m, r, s, n] for (m, r, s), n in sorted(c.requests.items())],
        "requests_per_second": sorted(c.requests_per_second.items()),
        "uploads_started": c.uploads_started,
        "uploads_completed": c.uploads_completed,
        "upload_bytes": c.upload_bytes,
        "submits": c.submits,
        "polls": c.polls,
        "lists": c.lists,
        "webhook_attempts": c.webhook_attempts,
        "webhook_deliveries": c.webhook_deliveries,
    }


def _epoch(moment: datetime) -> float:
    """The fake's naive UTC times as wall-clock seconds."""
    return moment.replace(tzinfo=UTC).timestamp()


def control_app(fake: TimedFake) -> web.Application:
    """The control routes over one running fake."""

    async def counters(_request: web.Request) -> web.Response:
        return web.json_response(counters_json(fake))

    async def uploads(_request: web.Request) -> web.Response:
        return web.json_response([asdict(t) for t in fake.upload_timings])

    async def jobs(_request: web.Request) -> web.Response:
        return web.json_response(dict(Counter(r.status for r in fake.transcripts.values())))

    async def timeline(_request: web.Request) -> web.Response:
        records = list(fake.transcripts.values())
        return web.json_response(
            {
                "created": sorted(_epoch(r.created) for r in records),
                "completed": sorted(_epoch(r.completed) for r in records if r.completed),
            }
        )

    async def reset(_request: web.Request) -> web.Response:
        fake.reset_counters()
        fake.upload_timings.clear()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/counters", counters)
    app.router.add_get("/uploads", uploads)
    app.router.add_get("/jobs", jobs)
    app.router.add_get("/timeline", timeline)
    app.router.add_post("/reset", reset)
    return app


async def serve(config: FakeConfig) -> None:
    """Run the fake and its control server until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with TimedFake(config) as fake:
        runner = web.AppRunner(control_app(fake), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        urls = {"base_url": fake.base_url, "control_url": f"http://{host}:{port}"}
        print(json.dumps(urls), flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", action="append", dest="api_keys", required=True)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--latency-per-audio-s", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--upload-bandwidth-bps", type=float, default=None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    config = FakeConfig(
        api_keys=tuple(args.api_keys),
        port=args.port,
        latency_s=args.latency_s,
        latency_per_audio_s=args.latency_per_audio_s,
        concurrency=args.concurrency,
        upload_bandwidth_bps=args.upload_bandwidth_bps,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
