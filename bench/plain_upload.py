"""The reference upload: one streamed aiohttp POST of a file to /v2/upload.

    python -m bench.plain_upload --base-url URL --api-key KEY FILE

Reads the file in 1 MiB chunks, sets Content-Length, and prints the answer as JSON. No retries,
no rate limit, no hashing: the plainest way to push the bytes, as a ceiling for the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

CHUNK = 1 << 20


async def chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


async def upload(base: str, key: str, path: Path) -> dict[str, object]:
    headers = {
        "Authorization": key,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(path.stat().st_size),
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{base}/v2/upload", data=chunks(path), headers=headers) as response,
    ):
        response.raise_for_status()
        answer: dict[str, object] = await response.json()
        return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(upload(args.base_url, args.api_key, args.file))))


if __name__ == "__main__":
    main()
