"""The SRT/WebVTT renderer: cue limits, timestamp formats, and files that real parsers accept."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
import srt
import webvtt

from transcribed.subtitles import (
    Cue,
    CueLimits,
    Word,
    build_cues,
    format_timestamp,
    render,
    spread_words,
    to_srt,
    to_vtt,
    words_from_transcript,
)

LIMITS = CueLimits()


def steady_words(text: str, start_ms: int = 0, per_word_ms: int = 300) -> list[Word]:
    """One word every ``per_word_ms``, each lasting 80% of it."""
    return [
        Word(token, start_ms + i * per_word_ms, start_ms + i * per_word_ms + per_word_ms * 4 // 5)
        for i, token in enumerate(text.split())
    ]


LONG_TEXT = (
    "The quarterly planning meeting covered the budget for next year and the hiring plan "
    "for the support team while everyone agreed that the new office should open in spring "
    "and that the move itself would need at least two weekends of careful preparation "
    "with help from every department in the building"
)


def parse_srt(text: str) -> list[srt.Subtitle]:
    return list(srt.parse(text, ignore_errors=False))


def parse_vtt(text: str) -> list[webvtt.Caption]:
    return list(webvtt.from_string(text).captions)


def assert_ordered_within(cues: list[Cue], duration_ms: int | None = None) -> None:
    previous_end = 0
    for cue in cues:
        assert previous_end <= cue.start_ms < cue.end_ms
        previous_end = cue.end_ms
    if duration_ms is not None and cues:
        assert cues[-1].end_ms <= duration_ms


def test_timestamps_use_comma_for_srt_and_dot_for_vtt() -> None:
    assert format_timestamp(62_345) == "00:01:02,345"
    assert format_timestamp(62_345, ".") == "00:01:02.345"
    assert format_timestamp(3 * 3_600_000 + 7) == "03:00:00,007"
    assert format_timestamp(-5) == "00:00:00,000"


def test_long_text_splits_into_cues_within_limits() -> None:
    words = steady_words(LONG_TEXT)
    cues = build_cues([words], duration_ms=words[-1].end_ms + 500)

    assert len(cues) >= 4
    for cue in cues:
        assert 1 <= len(cue.lines) <= LIMITS.lines
        assert all(len(line) <= LIMITS.line_chars for line in cue.lines)
        assert cue.end_ms - cue.start_ms <= LIMITS.cue_ms
    assert " ".join(line for cue in cues for line in cue.lines) == LONG_TEXT
    assert_ordered_within(cues, words[-1].end_ms + 500)


def test_two_line_cues_are_balanced() -> None:
    cues = build_cues([steady_words("one two three four five six seven eight nine ten eleven")])
    assert len(cues) == 1
    first, second = cues[0].lines
    assert abs(len(first) - len(second)) <= 6


def test_slow_speech_is_cut_by_cue_duration() -> None:
    words = steady_words("a few words spoken very slowly indeed", per_word_ms=2000)
    cues = build_cues([words])
    assert len(cues) >= 2
    assert all(cue.end_ms - cue.start_ms <= LIMITS.cue_ms for cue in cues)


def test_cue_ends_at_segment_and_sentence_boundaries() -> None:
    first = steady_words("This sentence ends right here. And another one starts now")
    second = steady_words("New segment", start_ms=first[-1].end_ms + 100)
    cues = build_cues([first, second])
    assert [" ".join(cue.lines) for cue in cues] == [
        "This sentence ends right here.",
        "And another one starts now",
        "New segment",
    ]


def test_long_pause_starts_a_new_cue() -> None:
    words = [Word("Hello", 0, 400), Word("again", 5000, 5400)]
    assert [cue.lines for cue in build_cues([words])] == [("Hello",), ("again",)]


def test_no_words_gives_valid_empty_files() -> None:
    assert build_cues([]) == []
    assert build_cues([[], [Word("  ", 0, 10)]]) == []
    assert to_srt([]) == ""
    assert parse_srt(to_srt([])) == []
    assert to_vtt([]).startswith("WEBVTT")
    assert parse_vtt(to_vtt([])) == []


def test_one_word_is_stretched_to_a_readable_length_inside_the_audio() -> None:
    cues = build_cues([[Word("Hi.", 100, 250)]], duration_ms=600)
    assert cues == [Cue(100, 600, ("Hi.",))]
    cues = build_cues([[Word("Hi.", 100, 250)]])
    assert cues == [Cue(100, 100 + LIMITS.min_cue_ms, ("Hi.",))]


def test_very_long_word_is_cut_into_line_sized_pieces() -> None:
    word = "x" * 100
    cues = build_cues([[Word(word, 0, 3000), Word("end", 3000, 3200)]], duration_ms=4000)
    lines = [line for cue in cues for line in cue.lines]
    assert all(len(line) <= LIMITS.line_chars for line in lines)
    assert "".join(lines).replace(" ", "").startswith(word)
    assert lines[-1].endswith("end")
    assert_ordered_within(cues, 4000)


def test_overlapping_and_out_of_range_timings_are_repaired() -> None:
    segments = [
        [Word("first", 0, 900), Word("words.", 900, 1500)],
        [Word("overlap", 1200, 1800)],
        [Word("late", 9000, 9500)],
    ]
    cues = build_cues(segments, duration_ms=2500)
    assert_ordered_within(cues, 2500)
    assert " ".join(line for cue in cues for line in cue.lines) == "first words. overlap late"


def test_srt_parses_back_with_the_srt_library() -> None:
    words = steady_words(LONG_TEXT, start_ms=61_000)
    text = render("srt", [words], duration_ms=words[-1].end_ms)
    subtitles = parse_srt(text)
    cues = build_cues([words], duration_ms=words[-1].end_ms)
    assert [s.index for s in subtitles] == list(range(1, len(cues) + 1))
    for subtitle, cue in zip(subtitles, cues, strict=True):
        assert subtitle.start == dt.timedelta(milliseconds=cue.start_ms)
        assert subtitle.end == dt.timedelta(milliseconds=cue.end_ms)
        assert subtitle.content == "\n".join(cue.lines)


def test_vtt_parses_back_and_escapes_markup() -> None:
    words = [Word("Fish", 0, 300), Word("&", 300, 400), Word("<chips>", 400, 900)]
    text = render("vtt", [words], duration_ms=1000)
    assert text.startswith("WEBVTT\n\n")
    assert "&amp; &lt;chips&gt;" in text
    (caption,) = parse_vtt(text)
    assert caption.start == "00:00:00.000"
    assert caption.end == "00:00:01.000"


def test_vtt_and_srt_agree_on_times() -> None:
    words = steady_words(LONG_TEXT)
    srt_times = [(s.start, s.end) for s in parse_srt(render("srt", [words]))]
    vtt_times = [
        (
            dt.timedelta(milliseconds=c.start_time.in_milliseconds()),
            dt.timedelta(milliseconds=c.end_time.in_milliseconds()),
        )
        for c in parse_vtt(render("vtt", [words]))
    ]
    assert srt_times == vtt_times


def test_words_from_an_assemblyai_transcript() -> None:
    words = words_from_transcript([{"text": "Hi", "start": 10, "end": 90, "confidence": 0.9}])
    assert words == [Word("Hi", 10, 90)]


@pytest.mark.parametrize(("text", "count"), [("", 0), ("one", 1), ("one two three", 3)])
def test_spread_words_shares_the_segment_time(text: str, count: int) -> None:
    words = spread_words(text, 1000, 2000)
    assert len(words) == count
    if words:
        assert words[0].start_ms == 1000
        assert words[-1].end_ms == 2000
        assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(words))
