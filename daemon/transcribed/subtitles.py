"""SubRip (SRT) and WebVTT captions from word timings, as pure functions.

Words are grouped into cues of at most ``CueLimits.lines`` lines of ``CueLimits.line_chars``
characters and ``CueLimits.cue_ms`` milliseconds. A cue always ends at a segment boundary, after
a sentence once it holds enough text, and before a long pause. Cue times are whole milliseconds,
never overlap, never go backwards and stay inside the audio when its duration is known.

Nothing here knows about a transcription engine: a segment is just a sequence of :class:`Word`,
so the same code captions faster-whisper segments or a flat AssemblyAI word list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SENTENCE_ENDS = (".", "?", "!", "…", "。", "？", "！")  # noqa: RUF001 - full-width marks are meant


@dataclass(frozen=True, slots=True)
class Word:
    """One spoken word and when it was said, in milliseconds from the start of the audio."""

    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class CueLimits:
    """How much one caption may hold; the defaults follow common broadcast guidelines."""

    line_chars: int = 42
    lines: int = 2
    cue_ms: int = 7000
    #: Short cues are stretched to this length when the next cue leaves room.
    min_cue_ms: int = 1000
    #: A cue ends after a sentence once it holds at least this many characters.
    sentence_chars: int = 20
    #: A silence longer than this between two words always starts a new cue.
    pause_ms: int = 2000


@dataclass(frozen=True, slots=True)
class Cue:
    """One caption: its time span and its lines of text."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def words_from_transcript(words: Iterable[Mapping[str, Any]]) -> list[Word]:
    """AssemblyAI-shaped word dicts (``text``, ``start``, ``end`` in ms) as :class:`Word`."""
    return [Word(str(w["text"]), int(w["start"]), int(w["end"])) for w in words]


def spread_words(text: str, start_ms: int, end_ms: int) -> list[Word]:
    """Words of a segment without word timings, its time shared out by length."""
    parts = text.split()
    total = sum(len(part) for part in parts)
    words: list[Word] = []
    done = 0
    span = max(end_ms - start_ms, 0)
    for part in parts:
        begin = start_ms + span * done // total
        done += len(part)
        words.append(Word(part, begin, start_ms + span * done // total))
    return words


def build_cues(
    segments: Iterable[Sequence[Word]],
    *,
    duration_ms: int | None = None,
    limits: CueLimits | None = None,
) -> list[Cue]:
    """Group the words of each segment into cues that respect ``limits``."""
    limits = limits or CueLimits()
    groups: list[list[Word]] = []
    for segment in segments:
        current: list[Word] = []
        for word in _split_long_words(segment, limits.line_chars):
            if current and not _fits(current, word, limits):
                groups.append(current)
                current = []
            current.append(word)
            text_len = len(" ".join(w.text for w in current))
            if word.text.endswith(SENTENCE_ENDS) and text_len >= limits.sentence_chars:
                groups.append(current)
                current = []
        if current:
            groups.append(current)
    return _timed(groups, duration_ms, limits)


def format_timestamp(ms: int, decimal: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``decimal="."``, ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(int(ms), 0)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal}{millis:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip text: numbered blocks separated by blank lines."""
    blocks = [
        f"{index}\n{format_timestamp(cue.start_ms)} --> {format_timestamp(cue.end_ms)}\n"
        + "\n".join(cue.lines)
        + "\n"
        for index, cue in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT text: the ``WEBVTT`` header, then one block per cue with its text escaped."""
    blocks = [
        f"{format_timestamp(cue.start_ms, '.')} --> {format_timestamp(cue.end_ms, '.')}\n"
        + "\n".join(_vtt_escape(line) for line in cue.lines)
        + "\n"
        for cue in cues
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def render(
    kind: Literal["srt", "vtt"],
    segments: Iterable[Sequence[Word]],
    *,
    duration_ms: int | None = None,
    limits: CueLimits | None = None,
) -> str:
    """Build the cues and write them as ``srt`` or ``vtt``."""
    cues = build_cues(segments, duration_ms=duration_ms, limits=limits)
    return to_srt(cues) if kind == "srt" else to_vtt(cues)


def _vtt_escape(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _split_long_words(words: Iterable[Word], width: int) -> list[Word]:
    """Clean up the text and cut any word longer than a line into line-sized pieces."""
    out: list[Word] = []
    for word in words:
        text = " ".join(word.text.split())
        if not text:
            continue
        if len(text) <= width:
            out.append(Word(text, word.start_ms, word.end_ms))
            continue
        span = max(word.end_ms - word.start_ms, 0)
        for offset in range(0, len(text), width):
            piece = text[offset : offset + width]
            begin = word.start_ms + span * offset // len(text)
            end = word.start_ms + span * (offset + len(piece)) // len(text)
            out.append(Word(piece, begin, end))
    return out


def _fits(current: Sequence[Word], word: Word, limits: CueLimits) -> bool:
    if word.start_ms - current[-1].end_ms > limits.pause_ms:
        return False
    if word.end_ms - current[0].start_ms > limits.cue_ms:
        return False
    return len(_wrap([w.text for w in (*current, word)], limits.line_chars)) <= limits.lines


def _wrap(texts: Sequence[str], width: int) -> list[str]:
    """Greedy line filling; a text longer than ``width`` gets a line of its own."""
    lines: list[str] = []
    line = ""
    for text in texts:
        if line and len(line) + 1 + len(text) > width:
            lines.append(line)
            line = text
        else:
            line = f"{line} {text}" if line else text
    if line:
        lines.append(line)
    return lines


def _balanced(texts: Sequence[str], width: int) -> tuple[str, ...]:
    """The same number of lines as greedy filling, with lengths as even as possible."""
    greedy = _wrap(texts, width)
    if len(greedy) <= 1:
        return tuple(greedy)
    total = len(" ".join(texts))
    for trial in range(math.ceil(total / len(greedy)), width):
        lines = _wrap(texts, trial)
        if len(lines) <= len(greedy):
            return tuple(lines)
    return tuple(greedy)


def _timed(groups: list[list[Word]], duration_ms: int | None, limits: CueLimits) -> list[Cue]:
    """Turn word groups into cues whose times are ordered, disjoint and inside the audio."""
    if duration_ms is not None and duration_ms <= 0:
        duration_ms = None
    spans: list[tuple[int, int, list[Word]]] = []
    previous_end = 0
    for index, group in enumerate(groups):
        start = max(group[0].start_ms, previous_end, 0)
        end = max(group[-1].end_ms, start)
        end = min(end, start + limits.cue_ms)
        if end - start < limits.min_cue_ms:
            room = groups[index + 1][0].start_ms if index + 1 < len(groups) else None
            stretched = start + limits.min_cue_ms
            end = max(end, min(stretched, room) if room is not None else stretched)
        if duration_ms is not None:
            end = min(end, duration_ms)
        if end <= start and spans:
            # Nothing left of the audio (timings past its end): add the words to the last cue.
            last_start, last_end, words = spans[-1]
            spans[-1] = (last_start, last_end, words + group)
            continue
        if end <= start:
            start, end = 0, max(end, 1)
        spans.append((start, end, list(group)))
        previous_end = end
    return [
        Cue(start, end, _balanced([w.text for w in words], limits.line_chars))
        for start, end, words in spans
    ]
