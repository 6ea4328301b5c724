"""SRT and WebVTT captions rendered from a transcript's words."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

DEFAULT_CHARS_PER_CAPTION = 40


def _clock(ms: int, decimal: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal}{millis:03d}"


def _captions(
    words: Sequence[dict[str, Any]], chars_per_caption: int
) -> Iterator[tuple[int, int, str]]:
    """(start ms, end ms, text) per caption, packing whole words up to the character limit."""
    group: list[dict[str, Any]] = []
    for word in words:
        candidate = " ".join(w["text"] for w in [*group, word])
        if group and len(candidate) > chars_per_caption:
            yield group[0]["start"], group[-1]["end"], " ".join(w["text"] for w in group)
            group = []
        group.append(word)
    if group:
        yield group[0]["start"], group[-1]["end"], " ".join(w["text"] for w in group)


def render_srt(words: Sequence[dict[str, Any]], chars_per_caption: int | None = None) -> str:
    """SubRip captions: 1-based index, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, text, blank line."""
    limit = chars_per_caption or DEFAULT_CHARS_PER_CAPTION
    blocks = [
        f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_captions(words, limit), start=1)
    ]
    return "\n".join(blocks)


def render_vtt(words: Sequence[dict[str, Any]], chars_per_caption: int | None = None) -> str:
    """WebVTT captions: `WEBVTT` header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues."""
    limit = chars_per_caption or DEFAULT_CHARS_PER_CAPTION
    cues = [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n"
        for start, end, text in _captions(words, limit)
    ]
    return "\n".join(["WEBVTT\n", *cues])
