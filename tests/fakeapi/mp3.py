"""The length of an MP3 upload from its first bytes, as a real service would decode it.

Only what an MPEG audio header says is used: an ID3v2 tag is skipped, the first frame header
gives the bitrate and sample rate, and a Xing/Info frame (which LAME and ffmpeg write) gives
the exact frame count; without one the stream is taken as constant bitrate. Anything that
does not parse as two consecutive valid frames is "not an MP3" (None), so random bytes behind
an ID3 header keep the fake's size rule.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX_BYTES = 64 * 1024
"""How many leading bytes of an upload the fake keeps to read an MP3 header."""

_ID3_HEADER = 10
_BITRATES_KBPS = {  # (MPEG-1?, layer) -> table indexed by the header's bitrate index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True, slots=True)
class _Frame:
    mpeg1: bool
    layer: int
    bitrate_bps: int
    sample_rate: int
    mono: bool
    length: int

    @property
    def samples(self) -> int:
        if self.layer == 1:
            return 384
        return 1152 if self.mpeg1 or self.layer == 2 else 576

    @property
    def side_info(self) -> int:
        """Bytes of layer III side information after the 4-byte header (Xing tag offset)."""
        if self.mpeg1:
            return 17 if self.mono else 32
        return 9 if self.mono else 17


def _frame_at(data: bytes, offset: int) -> _Frame | None:
    header = data[offset : offset + 4]
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or "free format", which we do not size
    mpeg1, layer = version == 3, 4 - layer_bits
    bitrate_bps = _BITRATES_KBPS[(mpeg1, layer)][bitrate_index] * 1000
    sample_rate = _SAMPLE_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate_bps // sample_rate + padding) * 4
    else:
        per_frame = 144 if mpeg1 or layer == 2 else 72
        length = per_frame * bitrate_bps // sample_rate + padding
    return _Frame(mpeg1, layer, bitrate_bps, sample_rate, header[3] >> 6 == 3, length)


def _id3_end(data: bytes) -> int | None:
    """Where the audio starts after an ID3v2 tag (0 without one); None if the tag is bad."""
    if not data.startswith(b"ID3"):
        return 0
    if len(data) < _ID3_HEADER or any(b & 0x80 for b in data[6:10]):
        return None
    size = 0
    for byte in data[6:10]:
        size = size << 7 | byte
    footer = _ID3_HEADER if data[5] & 0x10 else 0
    return _ID3_HEADER + size + footer


def mp3_duration_ms(prefix: bytes, size: int) -> int | None:
    """Length in ms of an MP3 of ``size`` bytes whose first bytes are ``prefix``, or None."""
    start = _id3_end(prefix)
    if start is None:
        return None
    first = _frame_at(prefix, start)
    if first is None:
        return None
    second = _frame_at(prefix, start + first.length)
    if second is None or (second.mpeg1, second.layer, second.sample_rate) != (
        first.mpeg1,
        first.layer,
        first.sample_rate,
    ):
        return None
    tag_at = start + 4 + first.side_info
    if first.layer == 3 and prefix[tag_at : tag_at + 4] in (b"Xing", b"Info"):
        flags = int.from_bytes(prefix[tag_at + 4 : tag_at + 8], "big")
        if flags & 1 and len(prefix) >= tag_at + 12:
            frames = int.from_bytes(prefix[tag_at + 8 : tag_at + 12], "big")
            return frames * first.samples * 1000 // first.sample_rate
    return max(0, size - start) * 8 * 1000 // first.bitrate_bps
