"""The official SDK as a user would run it on a folder: ``Transcriber().transcribe_group``.

    python -m bench.sdk_client --base-url URL --api-key KEY --out DIR FILE...

Leaves the SDK's defaults alone (it polls every 3 s), except ``speech_models``, which the API
requires. Writes each transcript's text to ``DIR/<transcript id>.txt`` once the group is done
(``transcribe_group`` returns nothing earlier) and prints a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import assemblyai as aai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    aai.settings.base_url = args.base_url
    aai.settings.api_key = args.api_key
    config = aai.TranscriptionConfig(speech_models=["universal-3-pro"])
    group = aai.Transcriber().transcribe_group(args.files, config=config)
    if not isinstance(group, aai.TranscriptGroup):  # only with return_failures=True
        raise TypeError(f"unexpected answer from transcribe_group: {type(group).__name__}")
    args.out.mkdir(parents=True, exist_ok=True)
    completed = errors = 0
    for transcript in group:
        if transcript.status == aai.TranscriptStatus.completed:
            (args.out / f"{transcript.id}.txt").write_text(transcript.text or "")
            completed += 1
        else:
            errors += 1
    print(json.dumps({"completed": completed, "errors": errors}))


if __name__ == "__main__":
    main()
