"""The local engine's settings at work: language, device, VAD, repetition, progress, recycling.

Real worker processes and the bundled ``tiny.en`` model, except where a test says otherwise.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from conftest import Folders, clean_env, run_cli, write_config
from test_local_backend import SAMPLES, NoCheckpoints, job, make_backend
from transcribed import models
from transcribed.backends import local
from transcribed.backends.local import LocalBackend
from transcribed.backends.local_result import to_result
from transcribed.backends.local_worker import (
    REPEAT_LIMIT,
    Repeats,
    Request,
    SetupError,
    WorkerOptions,
    choose_device,
)
from transcribed.config import LocalSettings, load_settings
from transcribed.errors import ConfigError
from transcribed.metrics import Metrics

# --- device --------------------------------------------------------------------------------


def test_auto_device_is_cuda_with_float16_when_ctranslate2_sees_a_gpu() -> None:
    assert choose_device("auto", "auto", 2) == (
        "cuda",
        "float16",
        "CTranslate2 sees 2 CUDA device(s)",
    )


def test_auto_device_is_the_cpu_with_int8_without_a_gpu() -> None:
    assert choose_device("auto", "auto", 0) == ("cpu", "int8", "CTranslate2 sees no CUDA device")


def test_a_configured_device_and_compute_type_are_kept() -> None:
    assert choose_device("cpu", "auto", 1) == ("cpu", "int8", "configured")
    assert choose_device("cuda", "int8_float16", 1) == ("cuda", "int8_float16", "configured")


def test_cuda_without_a_gpu_is_a_setup_error() -> None:
    with pytest.raises(SetupError, match="sees no CUDA device"):
        choose_device("cuda", "auto", 0)


@pytest.mark.local
async def test_the_engine_logs_the_device_it_chose_and_why() -> None:
    with structlog.testing.capture_logs() as logs:
        backend = await make_backend(workers=1)
        await backend.close()
    started = next(e for e in logs if e["event"] == "local_engine_started")
    # This machine has no GPU (a GPU host would see cuda and float16).
    assert (started["device"], started["compute_type"]) == ("cpu", "int8")
    assert started["device_reason"] == "CTranslate2 sees no CUDA device"


# --- language ------------------------------------------------------------------------------


def test_an_english_only_model_with_another_language_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"local\.language: 'de' needs a multilingual model"):
        load_settings(None, {"TRANSCRIBED_LOCAL__LANGUAGE": "de"})
    with pytest.raises(ConfigError, match=r"local\.language: 'fr' needs a multilingual model"):
        load_settings(None, {}, {"local.model": "small.en", "local.language": "fr"})
    assert (
        load_settings(None, {}, {"local.model": "small", "local.language": "DE"}).local.language
        == "de"
    )


async def test_the_daemon_exits_2_for_an_english_only_model_with_another_language(
    folders: Folders,
) -> None:
    config = write_config(folders, None, backend="local", **{"local.language": "de"})
    done = await run_cli(
        [sys.executable, "-m", "transcribed", "run", "--once", "--config", str(config)],
        clean_env(),
    )
    assert done.returncode == 2
    assert "local.language: 'de' needs a multilingual model" in done.stderr


def test_a_language_that_is_not_a_code_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"local\.language: must be `auto` or a language code"):
        load_settings(None, {}, {"local.language": "german"})


@pytest.mark.local
async def test_an_english_only_model_folder_with_another_language_fails_at_start(
    tmp_path: Path,
) -> None:
    """A folder's name says nothing: the worker asks the model itself."""
    bundled = models.bundled_path("tiny.en")
    assert bundled is not None
    folder = tmp_path / "my-model"
    shutil.copytree(bundled, folder)
    backend = LocalBackend(LocalSettings(model=str(folder), language="de", workers=1), ["txt"])
    with pytest.raises(ConfigError, match=r"'de' needs a multilingual model.*knows only English"):
        await backend.start()
    await backend.close()


class Pipe:
    """The worker's end of the pipe, recording what it sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, message: tuple[str, Any]) -> None:
        self.sent.append(message)


class MultilingualScores:
    """CTranslate2's model as faster-whisper sees it, claiming to be multilingual and giving
    fixed language scores: tiny.en has no language head (CTranslate2 refuses
    ``detect_language`` on it), and no multilingual model can be fetched here. Everything else
    (the encoder, the decoder, faster-whisper's detection code) is the real one."""

    def __init__(self, inner: Any, scores: list[tuple[str, float]]) -> None:
        self._inner = inner
        self._scores = scores
        self.asked = 0

    is_multilingual = True

    def detect_language(self, encoder_output: Any) -> list[list[tuple[str, float]]]:
        self.asked += 1
        return [self._scores]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.local
def test_auto_language_goes_through_detection_into_the_transcript() -> None:
    pytest.importorskip("faster_whisper")
    from transcribed.backends.local_worker import _load, _transcribe

    bundled = models.bundled_path("tiny.en")
    assert bundled is not None
    model, _info = _load(WorkerOptions(str(bundled), compute_type="int8", language="auto"))
    scores = MultilingualScores(model.model, [("<|en|>", 0.8125), ("<|de|>", 0.125)])
    model.model = scores
    path = SAMPLES / "kitchen.mp3"
    settings = LocalSettings(language="auto")
    request = Request(str(path), beam_size=1, language=None, formats=())

    payload = _transcribe(model, request, Pipe())  # type: ignore[arg-type]

    assert scores.asked >= 1
    assert (payload["language"], payload["language_probability"]) == ("en", 0.8125)
    with structlog.testing.capture_logs() as logs:
        transcript = to_result(payload, settings, {}, "kitchen.mp3").transcript
    assert (transcript["language_code"], transcript["language_confidence"]) == ("en", 0.8125)
    detected = [e for e in logs if e["event"] == "language_detected"]
    assert detected == [
        {
            "event": "language_detected",
            "log_level": "info",
            "path": "kitchen.mp3",
            "language": "en",
            "probability": 0.8125,
        }
    ]


# --- VAD and repetition --------------------------------------------------------------------


@pytest.mark.local
async def test_vad_and_its_parameters_reach_the_engine() -> None:
    # Speech shorter than a minute is dropped: with the VAD on, nothing is left to transcribe.
    backend = await make_backend(
        workers=1, vad=True, vad_parameters={"min_speech_duration_ms": 60_000}
    )
    try:
        result = await backend.transcribe(job(SAMPLES / "kitchen.mp3"), NoCheckpoints())
    finally:
        await backend.close()
    assert result.text == ""
    assert result.transcript["engine"]["vad"] is True


@pytest.mark.local
async def test_an_unknown_vad_parameter_is_a_config_error_at_start() -> None:
    backend = LocalBackend(LocalSettings(vad=True, vad_parameters={"treshold": 0.6}), ["txt"])
    with pytest.raises(ConfigError, match=r"local\.vad_parameters: .*treshold"):
        await backend.start()
    await backend.close()


def test_vad_parameters_from_the_environment_are_read_as_numbers() -> None:
    settings = load_settings(
        None,
        {
            "TRANSCRIBED_LOCAL__VAD_PARAMETERS__THRESHOLD": "0.6",
            "TRANSCRIBED_LOCAL__VAD_PARAMETERS__SPEECH_PAD_MS": "200",
        },
    )
    assert settings.local.vad_parameters == {"threshold": 0.6, "speech_pad_ms": 200}


def test_a_segment_repeated_many_times_in_a_row_is_flagged() -> None:
    repeats = Repeats()
    repeats.add("Hello there.", 0.0)
    for n in range(REPEAT_LIMIT + 2):
        repeats.add(" Thank you. " if n % 2 else "thank you.", 5.0 + n)
    repeats.add("Goodbye.", 20.0)
    assert repeats.worst() == {"text": "thank you.", "times": REPEAT_LIMIT + 2, "start_s": 5.0}


def test_text_repeated_with_other_segments_between_is_not_flagged() -> None:
    repeats = Repeats()
    for n in range(3 * REPEAT_LIMIT):
        repeats.add("Yes." if n % 2 else "No.", float(n))
    assert repeats.worst() is None


def test_the_backend_logs_a_repetition_the_worker_found() -> None:
    payload = {
        "text": "x",
        "words": [],
        "duration_s": 30.0,
        "language": "en",
        "language_probability": 1.0,
        "repetition": {"text": "Thank you.", "times": 9, "start_s": 12.0},
    }
    with structlog.testing.capture_logs() as logs:
        to_result(payload, LocalSettings(), {}, "kitchen.mp3")
    flagged = [e for e in logs if e["event"] == "repetition_detected"]
    assert flagged and flagged[0]["times"] == 9 and flagged[0]["path"] == "kitchen.mp3"


# --- progress and recycling ----------------------------------------------------------------


def test_progress_is_a_metric_read_at_scrape_time() -> None:
    metrics = Metrics()
    backend = LocalBackend(LocalSettings(), ["txt"], metrics=metrics)
    backend._progress[0] = ("a.mp3", 12.5, 60.0)
    backend._progress[1] = ("b.mp3", 3.0, None)
    text = metrics.render().decode()
    assert "transcribed_local_decoded_seconds 15.5" in text
    assert "transcribed_local_decoding_audio_seconds 60.0" in text
    assert backend.progress() == [
        {"path": "a.mp3", "decoded_s": 12.5, "duration_s": 60.0},
        {"path": "b.mp3", "decoded_s": 3.0, "duration_s": None},
    ]


@pytest.mark.local
async def test_a_running_file_reports_its_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "PROGRESS_LOG_S", 0.0)
    backend = await make_backend(workers=1)
    try:
        with structlog.testing.capture_logs() as logs:
            await backend.transcribe(job(SAMPLES / "meeting.mp3"), NoCheckpoints())
    finally:
        await backend.close()
    progress = [e for e in logs if e["event"] == "local_progress"]
    assert progress, logs
    assert all(0 < e["decoded_s"] <= e["duration_s"] + 1 for e in progress)
    assert backend.progress() == []  # nothing is running any more


@pytest.mark.local
@pytest.mark.parametrize(
    ("limits", "reason"),
    [({"max_files_per_worker": 2}, "2 files"), ({"max_worker_rss_mb": 1}, "MB resident")],
)
async def test_a_worn_out_worker_is_replaced_and_no_file_is_lost(
    limits: dict[str, int], reason: str
) -> None:
    backend = await make_backend(workers=1, **limits)
    paths = [SAMPLES / name for name in ("kitchen.mp3", "library.mp3", "train.mp3", "weather.mp3")]
    first_pid = backend.worker_pids[0]
    try:
        with structlog.testing.capture_logs() as logs:
            # All four wait for the one slot; recycling happens between them.
            results = await asyncio.gather(
                *(backend.transcribe(job(p, i), NoCheckpoints()) for i, p in enumerate(paths))
            )
            await asyncio.wait_for(_until_idle(backend), 60)
    finally:
        await backend.close()
    assert all(r.text for r in results)
    assert "library" in results[1].text.lower()
    recycled = [e for e in logs if e["event"] == "local_worker_recycled"]
    expected = 2 if "max_files_per_worker" in limits else 4
    assert len(recycled) == expected, [e["event"] for e in logs]
    assert all(reason in e["reason"] for e in recycled)
    assert recycled[0]["pid"] == first_pid
    assert len({e["pid"] for e in recycled}) == expected  # a fresh process each time


async def _until_idle(backend: LocalBackend) -> None:
    """Wait until no replacement is being started."""
    while backend._recycling:
        await asyncio.gather(*backend._recycling, return_exceptions=True)


@pytest.mark.local
async def test_closing_while_a_worker_is_being_replaced_leaves_no_process_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing

    backend = await make_backend(workers=1, max_files_per_worker=1)
    old_pid = backend.worker_pids[0]
    stopping, release = asyncio.Event(), asyncio.Event()
    real_stop = backend._stop

    async def held_stop(worker: Any, *, polite: bool) -> None:
        if worker.pid == old_pid:  # the replacement has begun: hold it there
            stopping.set()
            await release.wait()
        await real_stop(worker, polite=polite)

    monkeypatch.setattr(backend, "_stop", held_stop)
    try:
        await backend.transcribe(job(SAMPLES / "kitchen.mp3"), NoCheckpoints())
        await asyncio.wait_for(stopping.wait(), 30)
        closing = asyncio.create_task(backend.close())
        await asyncio.sleep(0)  # close() cancels the replacement now
        release.set()
        await asyncio.wait_for(closing, 30)
    finally:
        release.set()
        await backend.close()
    left = [p.pid for p in multiprocessing.active_children() if p.name.startswith("transcribed")]
    assert left == []
