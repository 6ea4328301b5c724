"""The code that runs inside one local-engine worker process.

:class:`~transcribed.backends.local.LocalBackend` starts :func:`main` in a process of its own
(the ``spawn`` start method) and talks to it over a duplex pipe. The worker loads the model once,
says ``("ready", info)``, then handles one :class:`Request` at a time:

- ``("duration", seconds | None)`` as soon as the container is open, so the parent can set the
  time limit for this file, and again once the audio is decoded (then exact);
- then ``("ok", payload)`` with the transcript pieces, or ``("failed", reason)`` when the file
  cannot be decoded.

``None`` instead of a request, or the parent going away, ends the worker. Only this module imports
faster-whisper, PyAV and NumPy, and only inside the worker, so installs without the ``local``
extra never load them.
"""

from __future__ import annotations

import gc
import os
import signal
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


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker loads its model (fixed for the life of the process)."""

    model_path: str
    compute_type: str
    cpu_threads: int


@dataclass(frozen=True)
class Request:
    """One file to transcribe."""

    path: str
    beam_size: int
    language: str | None
    formats: tuple[str, ...]


class AudioError(Exception):
    """The file is not audio we can decode; the message says why."""


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
    import faster_whisper

    model = faster_whisper.WhisperModel(
        options.model_path,
        device="cpu",
        compute_type=options.compute_type,
        cpu_threads=options.cpu_threads,
        num_workers=1,
    )
    info = {
        "pid": os.getpid(),
        "load_s": time.perf_counter() - began,
        "faster_whisper": getattr(faster_whisper, "__version__", "unknown"),
    }
    return model, info


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
        vad_filter=False,
    )
    words: list[dict[str, Any]] = []
    cue_segments: list[list[subtitles.Word]] = []
    texts: list[str] = []
    spaced = info.language not in UNSPACED_LANGUAGES
    for segment in segments:
        texts.append(segment.text.strip())
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
    }


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
