"""The code that runs inside one local-engine worker process.

:class:`~transcribed.backends.local.LocalBackend` starts :func:`main` in a process of its own
(the ``spawn`` start method) and talks to it over a duplex pipe. The worker loads the model once,
says ``("ready", info)`` (or ``("config", reason)`` when the settings do not fit the model),
then handles one :class:`Request` at a time:

- ``("duration", seconds | None)`` as soon as the container is open, so the parent can set the
  time limit for this file, and again once the audio is decoded (then exact);
- ``("progress", seconds)`` as each segment comes out: the audio decoded so far;
- then ``("ok", payload)`` with the transcript pieces, or ``("failed", reason)`` when the file
  cannot be decoded.

``None`` instead of a request, or the parent going away, ends the worker. Only this module imports
faster-whisper, PyAV and NumPy, and only inside the worker, so installs without the ``local``
extra never load them.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from transcribed import subtitles

SAMPLE_RATE = 16_000
#: The file is called corrupt when decoding hit errors and yielded less than this share of it.
MIN_DECODED_SHARE = 0.5
#: Languages Whisper writes without spaces; elsewhere a piece without one continues a word.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
#: The same segment text this many times in a row is a decoding loop (``repetition``).
REPEAT_LIMIT = 4


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker loads its model (fixed for the life of the process).

    ``cpu_threads`` is per process, so the backend may start workers with different thread
    counts (all of the engine's threads for one long file, one each for many short ones)."""

    model_path: str
    compute_type: str = "auto"
    cpu_threads: int = 1
    device: str = "auto"
    #: Checked against the model at load: a language an English-only model cannot do.
    language: str = "auto"
    #: Checked at load (faster-whisper's ``VadOptions``), so a typo stops the start-up.
    vad_parameters: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Request:
    """One file to transcribe."""

    path: str
    beam_size: int
    language: str | None
    formats: tuple[str, ...]
    vad: bool = False
    vad_parameters: tuple[tuple[str, Any], ...] = ()
    condition_on_previous_text: bool = True


class AudioError(Exception):
    """The file is not audio we can decode; the message says why."""


class SetupError(Exception):
    """The settings do not fit this model or engine (a configuration error in the parent)."""


def choose_device(device: str, compute_type: str, cuda_devices: int) -> tuple[str, str, str]:
    """``(device, compute_type, reason)`` for the requested ones, given the GPUs CTranslate2
    sees: ``auto`` is CUDA when there is a GPU; ``auto`` compute is float16 there, int8 on a
    CPU."""
    if device == "auto":
        if cuda_devices > 0:
            device, reason = "cuda", f"CTranslate2 sees {cuda_devices} CUDA device(s)"
        else:
            device, reason = "cpu", "CTranslate2 sees no CUDA device"
    else:
        reason = "configured"
    if device == "cuda" and cuda_devices == 0:
        raise SetupError("local.device = 'cuda', but CTranslate2 sees no CUDA device")
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type, reason


def main(conn: Connection, options: WorkerOptions) -> None:
    """Worker entry point: load the model, then serve requests until told to stop."""
    # The parent owns the lifecycle: a Ctrl-C or SIGTERM sent to the whole process group must not
    # kill a decode half-way and make its file look broken. Workers end when the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub from a worker
    try:
        model, info = _load(options)
    except ImportError as exc:
        conn.send(("missing", f"{exc.name or exc}"))
        return
    except SetupError as exc:
        conn.send(("config", str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - any load failure is reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            conn.send(("ok", _transcribe(model, request, conn)))
        except AudioError as exc:
            conn.send(("failed", str(exc)))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the worker
            conn.send(("failed", f"the local engine failed: {type(exc).__name__}: {exc}"))
        finally:
            gc.collect()  # PyAV's resampler frees its buffers only on collection


def _load(options: WorkerOptions) -> tuple[Any, dict[str, Any]]:
    began = time.perf_counter()
    import ctranslate2
    import faster_whisper
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from faster_whisper.vad import VadOptions

    try:
        VadOptions(**dict(options.vad_parameters))
    except TypeError as exc:
        raise SetupError(f"local.vad_parameters: {exc}") from None
    if options.language != "auto" and options.language not in _LANGUAGE_CODES:
        raise SetupError(f"local.language: {options.language!r} is not a language Whisper knows")
    device, compute_type, reason = choose_device(
        options.device, options.compute_type, ctranslate2.get_cuda_device_count()
    )
    model = faster_whisper.WhisperModel(
        options.model_path,
        device=device,
        compute_type=compute_type,
        cpu_threads=options.cpu_threads,
        num_workers=1,
    )
    multilingual = bool(model.model.is_multilingual)
    if not multilingual and options.language not in ("auto", "en"):
        raise SetupError(
            f"local.language: {options.language!r} needs a multilingual model, and the model "
            f"in {options.model_path} knows only English"
        )
    info = {
        "pid": os.getpid(),
        "load_s": time.perf_counter() - began,
        "faster_whisper": getattr(faster_whisper, "__version__", "unknown"),
        "device": device,
        "compute_type": compute_type,
        "device_reason": reason,
        "multilingual": multilingual,
    }
    return model, info


def rss_mb() -> float:
    """This process's resident memory now, in megabytes (Linux; peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory, in megabytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


def _transcribe(model: Any, request: Request, conn: Connection) -> dict[str, Any]:
    began = time.perf_counter()
    audio = decode_audio(request.path, lambda seconds: conn.send(("duration", seconds)))
    decoded_s = time.perf_counter() - began
    conn.send(("duration", len(audio) / SAMPLE_RATE))  # exact now, when the container had none
    segments, info = model.transcribe(
        audio,
        language=request.language,
        beam_size=request.beam_size,
        word_timestamps=True,
        vad_filter=request.vad,
        vad_parameters=dict(request.vad_parameters) if request.vad else None,
        condition_on_previous_text=request.condition_on_previous_text,
    )
    words: list[dict[str, Any]] = []
    cue_segments: list[list[subtitles.Word]] = []
    texts: list[str] = []
    spaced = info.language not in UNSPACED_LANGUAGES
    repeats = Repeats()
    for segment in segments:
        conn.send(("progress", float(segment.end)))
        texts.append(segment.text.strip())
        repeats.add(texts[-1], float(segment.start))
        seg_words, probabilities = _words(segment.words or (), spaced)
        if not seg_words:
            start_ms, end_ms = round(segment.start * 1000), round(segment.end * 1000)
            seg_words = subtitles.spread_words(segment.text, start_ms, end_ms)
            probabilities = [0.0] * len(seg_words)
        cue_segments.append(seg_words)
        words.extend(
            {
                "text": word.text,
                "start": word.start_ms,
                "end": word.end_ms,
                "confidence": round(min(max(p, 0.0), 1.0), 4),
                "speaker": None,
            }
            for word, p in zip(seg_words, probabilities, strict=True)
            if word.text
        )
    duration_ms = round(len(audio) * 1000 / SAMPLE_RATE)
    rendered = {
        kind: subtitles.render(kind, cue_segments, duration_ms=duration_ms)
        for kind in ("srt", "vtt")
        if kind in request.formats
    }
    return {
        "text": " ".join(text for text in texts if text),
        "words": words,
        "duration_s": len(audio) / SAMPLE_RATE,
        "language": info.language,
        "language_probability": info.language_probability,
        "subtitles": rendered,
        "decode_s": decoded_s,
        "total_s": time.perf_counter() - began,
        "repetition": repeats.worst(),
        "rss_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }


class Repeats:
    """The longest run of one segment text in a row: Whisper's loop on silence or noise."""

    def __init__(self) -> None:
        self._text = ""
        self._run = 0
        self._start_s = 0.0
        self._first = ""
        self._worst: dict[str, Any] | None = None

    def add(self, text: str, start_s: float) -> None:
        key = " ".join(text.lower().split())
        if key and key == self._text:
            self._run += 1
        else:
            self._text, self._run, self._start_s = key, 1, start_s
            self._first = text.strip()[:200]
        if self._run >= REPEAT_LIMIT and (self._worst is None or self._run > self._worst["times"]):
            self._worst = {"text": self._first, "times": self._run, "start_s": self._start_s}

    def worst(self) -> dict[str, Any] | None:
        """The longest run of at least ``REPEAT_LIMIT``, or None."""
        return self._worst


def _words(pieces: Any, spaced: bool) -> tuple[list[subtitles.Word], list[float]]:
    """Whisper's word pieces as words: ``" o"`` + ``"'clock"`` is ``"o'clock"``."""
    words: list[subtitles.Word] = []
    probabilities: list[list[float]] = []
    for piece in pieces:
        text = piece.word.strip()
        start, end = round(piece.start * 1000), round(piece.end * 1000)
        if not text:
            continue
        if spaced and words and not piece.word[:1].isspace():
            last = words[-1]
            words[-1] = subtitles.Word(last.text + text, last.start_ms, max(end, last.end_ms))
            probabilities[-1].append(float(piece.probability))
        else:
            words.append(subtitles.Word(text, start, end))
            probabilities.append([float(piece.probability)])
    return words, [sum(p) / len(p) for p in probabilities]


def decode_audio(path: str, on_duration: Any = None) -> Any:
    """The first audio stream as 16 kHz mono float32 samples.

    Unlike faster-whisper's own loader, a damaged packet is skipped rather than ending the
    decode, and a file that is mostly damage raises :class:`AudioError` instead of quietly
    becoming a short transcript. ``on_duration`` hears the container's stated duration first.
    """
    import av
    import numpy as np

    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise AudioError(f"not a readable audio file: {_reason(exc)}") from None
    with container:
        stated = container.duration / 1_000_000 if container.duration else None
        if on_duration is not None:
            on_duration(stated)
        if not container.streams.audio:
            raise AudioError("the file has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks: list[Any] = []
        good = bad = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    bad += 1
                    continue
                good += 1
                for frame in frames:
                    frame.pts = None
                    chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
        except av.FFmpegError:
            bad += 1  # the container itself is cut short or damaged: keep what was read
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))
        del resampler
    samples = np.concatenate([c.reshape(-1) for c in chunks]) if chunks else np.zeros(0)
    decoded = len(samples) / SAMPLE_RATE
    if decoded == 0:
        raise AudioError("no audio could be decoded from the file")
    if bad and (bad > good or (stated and decoded < MIN_DECODED_SHARE * stated)):
        raise AudioError(
            f"the audio is corrupt: {bad} damaged packet(s), only {decoded:.1f}s of "
            f"{stated or 0:.1f}s could be decoded"
        )
    return samples.astype(np.float32) / 32768.0


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the errno and file name it repeats."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text)
