"""Real MP3 recordings of realistic lengths for the ``mixed`` scenario, made once and cached.

A few sentences are spoken once by espeak-ng and encoded as a short MP3 unit (speech, then a
pause; 16 kHz mono, 16 kbps: 2000 bytes per second). Each recording loops that unit to its
length with ffmpeg's stream copy (no re-encoding, so 17 hours take seconds) and carries its
own title tag, so that no two recordings have the same content. ffmpeg writes an Info frame,
so the length is in each file's header, as in a real recorder's file.

Recordings live in ``$XDG_CACHE_HOME/transcribed-bench`` (``~/.cache`` by default), named by
set, index and length; a second run reuses them. Needs ``espeak-ng`` and ``ffmpeg``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

BITRATE_BPS = 16_000
SENTENCES = (
    "Good morning everyone, and thank you for joining the weekly planning meeting.",
    "Tomorrow will be cloudy in the morning with light rain in the afternoon.",
    "Please remember that the review has moved to Thursday at ten o'clock.",
    "The library will be closed on Monday because of the public holiday.",
    "In today's lecture we look at how queues form when a service is busy.",
)
PAUSE_S = 3.0
_UNIT_VERSION = "unit-v1"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "transcribed-bench"


def log_spread(count: int, shortest_s: float, longest_s: float) -> list[int]:
    """``count`` lengths in whole seconds, evenly spread on a log scale: many short memos,
    fewer meetings, a few long lectures (40 from 1 to 120 minutes add up to about 17 h)."""
    if count == 1:
        return [round(longest_s)]
    ratio = (longest_s / shortest_s) ** (1 / (count - 1))
    return [round(shortest_s * ratio**i) for i in range(count)]


def _need(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise RuntimeError(
            f"{program} is not installed; the mixed scenario needs espeak-ng and ffmpeg "
            "(Debian: apt-get install espeak-ng ffmpeg)"
        )
    return found


def _unit(folder: Path) -> Path:
    """The spoken unit every recording loops, made once."""
    unit = folder / f"{_UNIT_VERSION}.mp3"
    if unit.exists():
        return unit
    espeak, ffmpeg = _need("espeak-ng"), _need("ffmpeg")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "160", "-w", str(wav), " ".join(SENTENCES)],
                       check=True, capture_output=True)  # fmt: skip
        partial = Path(tmp) / "unit.mp3"
        subprocess.run(
            [ffmpeg, "-loglevel", "error", "-y", "-i", str(wav), "-af", f"apad=pad_dur={PAUSE_S}",
             "-ac", "1", "-ar", "16000", "-codec:a", "libmp3lame", "-b:a", str(BITRATE_BPS),
             "-map_metadata", "-1", str(partial)],
            check=True,
        )  # fmt: skip
        partial.replace(unit)
    return unit


def recordings(
    lengths_s: Sequence[int], *, prefix: str = "rec", folder: Path | None = None
) -> list[Path]:
    """One MP3 per length (seconds), made if not cached yet: ``PREFIX-NN-LENGTHs.mp3``."""
    folder = folder or cache_dir()
    unit = _unit(folder)
    paths = []
    for index, length in enumerate(lengths_s):
        path = folder / f"{prefix}-{index:02d}-{length}s.mp3"
        if not path.exists():
            ffmpeg = _need("ffmpeg")
            partial = path.with_suffix(".part.mp3")
            subprocess.run(
                [ffmpeg, "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(unit),
                 "-t", str(length), "-c", "copy", "-metadata", f"title={prefix} {index} ({length} s)",
                 str(partial)],
                check=True,
            )  # fmt: skip
            partial.replace(path)
        paths.append(path)
    return paths
