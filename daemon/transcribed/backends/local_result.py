"""A local-engine worker's answer as a transcript in AssemblyAI's shape, and what it tells the log.

The worker sends plain data (text, words, language and its probability, the longest run of a
repeated segment); this module turns it into the :class:`~transcribed.backends.Result` the
outputs write, logs ``language_detected`` when the language was detected and
``repetition_detected`` when Whisper looped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import structlog

from transcribed.backends import Result
from transcribed.config import LocalSettings

log = structlog.get_logger("transcribed.backends.local")


def to_result(
    payload: Mapping[str, Any], settings: LocalSettings, engine: Mapping[str, Any], path: str
) -> Result:
    """``payload`` from the worker; ``engine``: what the worker reported when it loaded
    (device, compute type); ``path``: the file's relative path, for the log."""
    words: list[dict[str, Any]] = list(payload["words"])
    confidences = [float(w["confidence"]) for w in words]
    language = str(payload.get("language") or "en")
    probability = payload.get("language_probability")
    language_confidence = round(float(probability), 4) if probability is not None else None
    if settings.language == "auto":
        log.info("language_detected", path=path, language=language, probability=language_confidence)
    if repetition := payload.get("repetition"):
        log.warning("repetition_detected", path=path, **dict(repetition))
    transcript: dict[str, Any] = {
        "id": f"local-{uuid.uuid4().hex}",
        "status": "completed",
        "text": payload["text"],
        "words": words,
        "audio_duration": round(float(payload["duration_s"])),
        "language_code": language,
        "language_confidence": language_confidence,
        "confidence": (round(sum(confidences) / len(confidences), 4) if confidences else None),
        "engine": {
            "name": "faster-whisper",
            "model": settings.model,
            "device": engine.get("device"),
            "compute_type": engine.get("compute_type", settings.compute_type),
            "beam_size": settings.beam_size,
            "vad": settings.vad,
        },
    }
    return Result(transcript=transcript, subtitles=dict(payload.get("subtitles") or {}))
