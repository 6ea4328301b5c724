"""A tutorial-style script: one file at a time, upload -> submit -> poll every 3 s.

    python -m bench.tutorial_client --base-url URL --api-key KEY --out DIR FILE...

What the getting-started scripts do, written with aiohttp but strictly sequential: read the
file, POST it to /v2/upload, POST /v2/transcript, then GET the transcript every 3 s until it is
completed or failed, write its text, and go on to the next file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import aiohttp

POLL_S = 3.0


async def transcribe(session: aiohttp.ClientSession, base: str, path: Path) -> dict[str, object]:
    async with session.post(f"{base}/v2/upload", data=path.read_bytes()) as response:
        response.raise_for_status()
        upload_url = (await response.json())["upload_url"]
    params = {"audio_url": upload_url, "speech_models": ["universal-3-pro"]}
    async with session.post(f"{base}/v2/transcript", json=params) as response:
        response.raise_for_status()
        transcript_id = (await response.json())["id"]
    while True:
        async with session.get(f"{base}/v2/transcript/{transcript_id}") as response:
            response.raise_for_status()
            transcript: dict[str, object] = await response.json()
        if transcript["status"] in ("completed", "error"):
            return transcript
        await asyncio.sleep(POLL_S)


async def run(base: str, key: str, out: Path, files: list[Path]) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    done = {"completed": 0, "errors": 0}
    async with aiohttp.ClientSession(headers={"authorization": key}) as session:
        for path in files:
            transcript = await transcribe(session, base, path)
            if transcript["status"] == "completed":
                (out / f"{path.stem}.txt").write_text(str(transcript.get("text") or ""))
                done["completed"] += 1
            else:
                done["errors"] += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.base_url, args.api_key, args.out, args.files))))


if __name__ == "__main__":
    main()
