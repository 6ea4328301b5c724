"""The request side of the API spec: which submit fields exist and what JSON types they take.

Transcribed from `TranscriptParams` in AssemblyAI's OpenAPI spec (v1.3.4), which has
`additionalProperties: false`, so any other field is a 400.
"""

from __future__ import annotations

from typing import Any

_BOOL = frozenset({"boolean"})
_INT = frozenset({"integer"})
_NUMBER = frozenset({"number", "integer"})
_STR = frozenset({"string"})
_LIST = frozenset({"array"})
_OBJECT = frozenset({"object"})
_ANY = frozenset({"boolean", "integer", "number", "string", "array", "object", "null"})

PARAM_TYPES: dict[str, frozenset[str]] = {
    "audio_url": _STR,
    "audio_end_at": _INT,
    "audio_start_from": _INT,
    "auto_chapters": _BOOL,
    "auto_highlights": _BOOL,
    "content_safety": _BOOL,
    "content_safety_confidence": _INT,
    "custom_spelling": _LIST,
    "disfluencies": _BOOL,
    "entity_detection": _BOOL,
    "filter_profanity": _BOOL,
    "format_text": _BOOL,
    "iab_categories": _BOOL,
    "keyterms_prompt": _LIST,
    "language_code": _STR | {"null"},
    "language_codes": _LIST | {"null"},
    "language_confidence_threshold": _NUMBER,
    "language_detection": _BOOL,
    "language_detection_options": _OBJECT,
    "multichannel": _BOOL,
    "prompt": _STR,
    "punctuate": _BOOL,
    "redact_pii": _BOOL,
    "redact_pii_audio": _BOOL,
    "redact_pii_audio_options": _OBJECT,
    "redact_pii_audio_quality": _STR,
    "redact_pii_policies": _LIST,
    "redact_pii_sub": _STR | {"null"},
    "sentiment_analysis": _BOOL,
    "speaker_labels": _BOOL,
    "speaker_options": _OBJECT,
    "speakers_expected": _INT | {"null"},
    "speech_models": _LIST,
    "speech_threshold": _NUMBER | {"null"},
    "speech_understanding": _OBJECT,
    "summarization": _BOOL,
    "summary_model": _STR,
    "summary_type": _STR,
    "remove_audio_tags": _STR | {"null"},
    "temperature": _NUMBER,
    "webhook_auth_header_name": _STR | {"null"},
    "webhook_auth_header_value": _STR | {"null"},
    "webhook_url": _STR,
    "custom_topics": _BOOL,
    "speech_model": _ANY,
    "topics": _LIST,
}

BOOLEAN_DEFAULTS: dict[str, bool] = {
    "auto_chapters": False,
    "auto_highlights": False,
    "content_safety": False,
    "custom_topics": False,
    "disfluencies": False,
    "entity_detection": False,
    "filter_profanity": False,
    "format_text": True,
    "iab_categories": False,
    "language_detection": False,
    "multichannel": False,
    "punctuate": True,
    "redact_pii": False,
    "redact_pii_audio": False,
    "sentiment_analysis": False,
    "speaker_labels": False,
    "summarization": False,
}
"""Spec defaults of the boolean options, echoed on every transcript."""

NOT_ECHOED = frozenset(
    {"webhook_auth_header_value", "content_safety_confidence", "speaker_options"}
)
"""Submit fields that the Transcript object does not carry back."""


class ParamsError(ValueError):
    """A submit body the service answers with 400; the message is the `error` text."""


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    names = {float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), "unknown")


def validate_params(body: object) -> dict[str, Any]:
    """Check a submit body the way the service does; return it, or raise ParamsError."""
    if not isinstance(body, dict):
        raise ParamsError("Request body must be a JSON object")
    unknown = sorted(set(body) - set(PARAM_TYPES))
    if unknown:
        raise ParamsError(f"Invalid request: unknown parameter(s): {', '.join(unknown)}")
    if "speech_model" in body:
        raise ParamsError("speech_model is deprecated: use speech_models, a list in priority order")
    for name, value in body.items():
        if _json_type(value) not in PARAM_TYPES[name]:
            raise ParamsError(f"Invalid type for parameter {name}: {_json_type(value)}")
    audio_url = body.get("audio_url")
    if not isinstance(audio_url, str) or not audio_url.startswith(("http://", "https://")):
        raise ParamsError("audio_url is required and must be an http(s) URL")
    models = body.get("speech_models")
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ParamsError("speech_models is required: a non-empty list of speech model names")
    return body
