"""Regenerate the bundled speech samples in ``samples/`` (not needed at run time).

Each sample is one English sentence spoken by espeak-ng and encoded by ffmpeg as a small mono
MP3 (16 kHz, 32 kbps). ``samples/transcripts.json`` maps each file name to the text spoken.

Needs the ``espeak-ng`` and ``ffmpeg`` programs (Debian: ``apt-get install espeak-ng ffmpeg``)::

    python bench/make_samples.py            # writes samples/*.mp3 and samples/transcripts.json
    python bench/make_samples.py --out DIR  # somewhere else
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: file name -> (espeak-ng voice, words per minute, sentence)
SAMPLES: dict[str, tuple[str, int, str]] = {
    "weather.mp3": (
        "en-us+f3",
        160,
        "Tomorrow will be cloudy in the morning with light rain in the afternoon "
        "and a high of twelve degrees.",
    ),
    "meeting.mp3": (
        "en-us",
        165,
        "Please remember that the team meeting has moved to Thursday at ten o'clock "
        "in the small conference room.",
    ),
    "train.mp3": (
        "en-gb-x-rp",
        160,
        "The next train to the city center leaves from platform four in five minutes.",
    ),
    "kitchen.mp3": (
        "en-us+m3",
        155,
        "Put the milk back in the fridge and wash the dishes before you go to bed.",
    ),
    "library.mp3": (
        "en-us+klatt",
        160,
        "The library will be closed on Monday because of the public holiday.",
    ),
}


def _need(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SystemExit(f"{program} is not installed; it is needed to make the samples")
    return found


def make(out: Path) -> None:
    """Speak every sentence, encode it as MP3 in ``out`` and write ``transcripts.json``."""
    espeak, ffmpeg = _need("espeak-ng"), _need("ffmpeg")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (voice, wpm, text) in SAMPLES.items():
            wav = Path(tmp) / (Path(name).stem + ".wav")
            subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
            subprocess.run(
                [ffmpeg, "-loglevel", "error", "-y", "-i", str(wav), "-ac", "1", "-ar", "16000",
                 "-codec:a", "libmp3lame", "-b:a", "32k", "-map_metadata", "-1",
                 "-fflags", "+bitexact", "-flags:a", "+bitexact", str(out / name)],
                check=True,
            )  # fmt: skip
            print(f"{name}: {(out / name).stat().st_size} bytes")
    transcripts = {name: text for name, (_, _, text) in SAMPLES.items()}
    (out / "transcripts.json").write_text(json.dumps(transcripts, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "samples")
    make(parser.parse_args().out)


if __name__ == "__main__":
    main()
