"""What the fake service "hears": audio sniffing and deterministic transcript content.

Everything here is a pure function of the uploaded bytes (their size, sha256 and first bytes),
so a test can compute the transcript of any file it wrote.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fakeapi.mp3 import mp3_duration_ms

BYTES_PER_SECOND = 16_000
"""The fake's rule for the length of an upload that is not a parsable MP3: 16 kB of upload is
one second of audio. An MP3 has the length its header says (see `audio_ms_of`)."""
MIN_AUDIO_MS = 160
SNIFF_BYTES = 64
"""How many leading bytes of an upload the fake keeps to decide whether it is audio."""

_NATO = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip
_SPOKEN_WORDS = 8
_SENTENCE_WORDS = 5
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_SIMPLE_MAGIC = (b"ID3", b"fLaC", b"OggS", b"\x1a\x45\xdf\xa3", b"#!AMR", b"caff", _ASF_GUID)


def looks_like_audio(head: bytes) -> bool:
    """Whether the first bytes of a file carry a known audio or video container signature."""
    if head.startswith(_SIMPLE_MAGIC):
        return True
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return True  # MPEG audio frame sync, which also covers ADTS AAC (FFF1 / FFF9)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return True
    return head[4:8] == b"ftyp"  # MP4 / M4A / MOV


def describe_file_type(head: bytes) -> str:
    """A `file(1)`-style description of a non-audio file, as the service reports it."""
    signatures = (
        (b"%PDF", "application/pdf (PDF document)"),
        (b"\x89PNG", "image/png (PNG image data)"),
        (b"\xff\xd8\xff", "image/jpeg (JPEG image data)"),
        (b"PK\x03\x04", "application/zip (Zip archive data)"),
        (b"GIF8", "image/gif (GIF image data)"),
    )
    for magic, description in signatures:
        if head.startswith(magic):
            return description
    if not head:
        return "application/x-empty (empty)"
    if all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return "text/plain (ASCII text)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream (data)"
    return "text/plain (Unicode text, UTF-8 text)"


def fake_text_for(data_sha256: str) -> str:
    """The transcript text the fake gives to content with this sha256 (hex digest).

    Eight NATO alphabet words picked by the digest's first bytes, then its first 8 hex digits.
    """
    digest = bytes.fromhex(data_sha256)
    words = [_NATO[b % len(_NATO)] for b in digest[:_SPOKEN_WORDS]]
    return " ".join([*words, data_sha256[:8].lower()])


def audio_ms_for(size: int) -> int:
    """Length in milliseconds of an upload of `size` bytes, under the 16 kB/s rule."""
    return size * 1000 // BYTES_PER_SECOND


def audio_duration_for(size: int) -> int:
    """`audio_duration` (integer seconds, at least 1) of an upload of `size` bytes."""
    return max(1, size // BYTES_PER_SECOND)


def audio_ms_of(prefix: bytes, size: int) -> int:
    """Length in ms of an upload: from its MP3 header when ``prefix`` (its first bytes) has
    one, else by the 16 kB/s rule."""
    from_header = mp3_duration_ms(prefix, size)
    return audio_ms_for(size) if from_header is None else from_header


@dataclass(frozen=True, slots=True)
class FakeResult:
    """The content of a completed transcript."""

    text: str
    words: tuple[dict[str, Any], ...]
    confidence: float
    audio_duration: int


def transcribe(data_sha256: str, size: int, audio_ms: int | None = None) -> FakeResult:
    """The deterministic result for content of this sha256 and size, `audio_ms` long (by
    default as the 16 kB/s rule says)."""
    digest = bytes.fromhex(data_sha256)
    tokens = fake_text_for(data_sha256).split(" ")
    length_ms = audio_ms_for(size) if audio_ms is None else audio_ms
    slot_ms = max(length_ms, MIN_AUDIO_MS) // len(tokens)
    words: tuple[dict[str, Any], ...] = tuple(
        {
            "text": token,
            "start": i * slot_ms,
            "end": i * slot_ms + max(1, slot_ms * 4 // 5),
            "confidence": round(0.8 + (digest[16 + i] % 20) / 100, 4),
            "speaker": None,
            "channel": None,
        }
        for i, token in enumerate(tokens)
    )
    confidence = round(sum(w["confidence"] for w in words) / len(words), 4)
    return FakeResult(" ".join(tokens), words, confidence, max(1, length_ms // 1000))


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of some bytes (a convenience for tests)."""
    return hashlib.sha256(data).hexdigest()


def _block(words: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "text": " ".join(w["text"] for w in words),
        "start": words[0]["start"],
        "end": words[-1]["end"],
        "confidence": round(sum(w["confidence"] for w in words) / len(words), 4),
        "words": words,
        **extra,
    }


def sentences_of(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Words cut into sentences of a few words each (TranscriptSentence shape)."""
    return [
        _block(words[i : i + _SENTENCE_WORDS], speaker=None, channel=None)
        for i in range(0, len(words), _SENTENCE_WORDS)
    ]


def paragraphs_of(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All words as one paragraph (TranscriptParagraph shape)."""
    return [_block(words)] if words else []


def utterances_of(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All words as one utterance of speaker "A" (TranscriptUtterance shape)."""
    spoken = [{**w, "speaker": "A"} for w in words]
    return [_block(spoken, speaker="A", channel=None)] if words else []
