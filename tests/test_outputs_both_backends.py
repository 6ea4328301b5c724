"""The same outputs from both backends: srt/vtt parse back, a corrupt MP3 fails only itself."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import srt
import webvtt

from conftest import Folders, Services, make_audio, settings_for
from fakeapi import FakeAssemblyAI

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _check_captions(folder: Path, stem: str, duration_s: float) -> None:
    subs = list(srt.parse((folder / f"{stem}.srt").read_text()))
    assert subs, "no srt cues"
    vtt = webvtt.from_buffer(io.StringIO((folder / f"{stem}.vtt").read_text()))
    assert len(vtt.captions) >= 1
    limit = duration_s + 0.001
    previous = 0.0
    for cue in subs:
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert previous <= start < end <= limit, (cue, duration_s)
        previous = end
    previous = 0.0
    for caption in vtt.captions:
        assert previous <= caption.start_in_seconds < caption.end_in_seconds <= limit
        previous = caption.end_in_seconds


async def test_assemblyai_captions_come_from_the_api_and_parse_back(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    make_audio(folders.inbox / "talk.mp3", seed="captions", size=200_000)
    settings = settings_for(
        folders,
        fake,
        **{"output.formats": ["txt", "json", "srt", "vtt"], "assemblyai.chars_per_caption": 20},
    )
    assert await services.run(settings, once=True) == 0
    transcript = json.loads((folders.outbox / "talk.json").read_text())
    # audio_duration is whole seconds in the API's transcript shape, so allow the fraction.
    _check_captions(folders.outbox, "talk", transcript["audio_duration"] + 1)
    assert fake.counters.requests_to("GET /v2/transcript/{transcript_id}/srt") == 1
    assert fake.counters.requests_to("GET /v2/transcript/{transcript_id}/vtt") == 1
    for cue in srt.parse((folders.outbox / "talk.srt").read_text()):
        assert len(cue.content.replace("\n", " ")) <= 20 + 12  # one word may overrun the limit


@pytest.mark.local
async def test_local_engine_writes_the_same_formats_and_a_corrupt_mp3_fails_alone(
    folders: Folders, services: Services
) -> None:
    pytest.importorskip("faster_whisper")
    for sample in ("kitchen.mp3", "train.mp3"):
        shutil.copy(SAMPLES / sample, folders.inbox / sample)
    good = (SAMPLES / "meeting.mp3").read_bytes()
    (folders.inbox / "broken.mp3").write_bytes(good[:1500] + bytes(range(256)) * 200)
    settings = settings_for(
        folders, None, backend="local", **{"output.formats": ["txt", "json", "srt", "vtt"]}
    )
    assert await services.run(settings, once=True) == 1

    for stem in ("kitchen", "train"):
        transcript = json.loads((folders.outbox / f"{stem}.json").read_text())
        assert transcript["status"] == "completed"
        assert transcript["engine"]["name"] == "faster-whisper"
        assert {"id", "text", "words", "audio_duration", "language_code"} <= set(transcript)
        assert (folders.outbox / f"{stem}.txt").read_text().strip() == transcript["text"]
        _check_captions(folders.outbox, stem, transcript["audio_duration"] + 0.5)
    report = json.loads((folders.failed / "broken.mp3.error.json").read_text())
    assert report["backend"] == "local"
    assert report["reason"]
    assert not (folders.outbox / "broken.txt").exists()
    assert sorted(p.name for p in folders.done.iterdir()) == ["kitchen.mp3", "train.mp3"]
