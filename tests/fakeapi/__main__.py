"""Run the fake AssemblyAI API standalone until SIGTERM or SIGINT.

    python -m fakeapi --port 8089 --api-key KEY --latency-s 2 --concurrency 5

Prints one line, the base URL, once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from fakeapi.fake_api import FakeAssemblyAI, FakeConfig
from fakeapi.faults import FAULT_KINDS, FaultConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fakeapi", description=__doc__)
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=0, help="0 picks a free port")
    add("--api-key", action="append", dest="api_keys", help="a valid key (repeatable)")
    add("--latency-s", type=float, default=0.2, help="processing time of a job")
    add("--latency-per-audio-s", type=float, default=0.0, help="extra per second of audio")
    add("--concurrency", type=int, default=5, help="jobs processed at once per key")
    add("--upload-bandwidth-bps", type=float, help="bytes/s all uploads share; default: no limit")
    add("--fault-rate", type=float, default=0.0, help="fraction of requests faulted, 0..1")
    add("--fault-kinds", default=",".join(FAULT_KINDS), help="comma-separated fault kinds")
    add("--fault-endpoints", default="", help="comma-separated 'METHOD /route'; empty: all")
    add("--retry-after-s", type=int, default=1, help="Retry-After of injected 429s")
    add("--slow-s", type=float, default=2.0, help="delay of 'slow' faults")
    add("--seed", type=int, default=None, help="seed of the fault sequence")
    add("--webhook-retry-delay-s", type=float, default=0.1)
    add("--error-for", action="append", default=[], help="content sha256 that fails (repeatable)")
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> FakeConfig:
    """Build a FakeConfig from command-line arguments."""
    args = _parser().parse_args(argv)
    endpoints = [e.strip() for e in args.fault_endpoints.split(",") if e.strip()]
    faults = FaultConfig(
        rate=args.fault_rate,
        kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()),
        retry_after_s=args.retry_after_s,
        slow_s=args.slow_s,
        seed=args.seed,
        endpoints=frozenset(endpoints) if endpoints else None,
    )
    return FakeConfig(
        api_keys=tuple(args.api_keys or ("test-key",)),
        host=args.host,
        port=args.port,
        latency_s=args.latency_s,
        latency_per_audio_s=args.latency_per_audio_s,
        concurrency=args.concurrency,
        upload_bandwidth_bps=args.upload_bandwidth_bps,
        faults=faults,
        error_for=set(args.error_for),
        webhook_retry_delay_s=args.webhook_retry_delay_s,
    )


async def serve(config: FakeConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeAssemblyAI(config) as fake:
        print(fake.base_url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        config = config_from_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
