"""The fake service's state: uploads, transcripts, and their JSON shapes from the spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fakeapi.content import FakeResult, utterances_of
from fakeapi.schema import BOOLEAN_DEFAULTS, NOT_ECHOED

CDN_UPLOAD_PREFIX = "https://cdn.assemblyai.com/upload/"
DELETED_AUDIO_URL = "http://deleted_by_user"
DELETED_TEXT = "Deleted by user."

_NULLABLE_FIELDS = (
    "audio_duration", "audio_end_at", "audio_start_from", "auto_highlights_result", "chapters",
    "confidence", "content_safety_labels", "custom_spelling", "entities",
    "iab_categories_result", "language_codes", "language_confidence",
    "language_confidence_threshold", "redact_pii_audio_quality", "redact_pii_policies",
    "sentiment_analysis_results", "speakers_expected", "speech_model", "speech_models",
    "speech_threshold", "summary", "summary_model", "summary_type", "remove_audio_tags",
    "temperature", "text", "throttled", "utterances", "webhook_auth_header_name",
    "webhook_status_code", "webhook_url", "words", "speed_boost",
)  # fmt: skip


def utc_now() -> datetime:
    """The fake's clock for `created`/`completed` (UTC, printed without an offset like the API)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(slots=True)
class UploadRecord:
    """One finished upload: only its size, hash, first bytes and length are kept."""

    upload_url: str
    account: str
    size: int
    sha256: str
    head: bytes
    audio_ms: int = 0
    """The audio's length, from its MP3 header or the 16 kB/s rule (see `audio_ms_of`)."""
    created: datetime = field(default_factory=utc_now)


@dataclass(slots=True)
class TranscriptRecord:
    """One transcript job as the fake tracks it."""

    id: str
    account: str
    seq: int
    audio_url: str
    params: dict[str, Any]
    upload: UploadRecord | None
    created: datetime = field(default_factory=utc_now)
    status: str = "queued"
    throttled: bool = False
    completed: datetime | None = None
    error: str | None = None
    result: FakeResult | None = None
    deleted: bool = False
    webhook_status_code: int | None = None

    @property
    def finished(self) -> bool:
        """Whether the job has reached `completed` or `error`."""
        return self.status in ("completed", "error")

    @property
    def sha256(self) -> str | None:
        """The sha256 of the uploaded content, when the audio came from an upload."""
        return self.upload.sha256 if self.upload else None

    def words(self) -> list[dict[str, Any]]:
        """The words of a completed transcript (speaker "A" when diarization was asked for)."""
        if self.result is None or self.deleted:
            return []
        speaker = "A" if self.params.get("speaker_labels") else None
        return [{**w, "speaker": speaker} for w in self.result.words]

    def to_json(self) -> dict[str, Any]:
        """The `Transcript` object of the spec."""
        body: dict[str, Any] = dict.fromkeys(_NULLABLE_FIELDS)
        body.update(BOOLEAN_DEFAULTS)
        body.update({k: v for k, v in self.params.items() if k not in NOT_ECHOED})
        body.update(
            id=self.id,
            status=self.status,
            audio_url=DELETED_AUDIO_URL if self.deleted else self.audio_url,
            language_code=self.params.get("language_code") or "en_us",
            language_model="assemblyai_default",
            acoustic_model="assemblyai_default",
            webhook_auth=bool(self.params.get("webhook_auth_header_name")),
            webhook_status_code=self.webhook_status_code,
            throttled=True if self.throttled else None,
        )
        if self.error is not None:
            body["error"] = self.error
        if self.result is not None:
            body.update(self._result_json(self.result))
        return body

    def _result_json(self, result: FakeResult) -> dict[str, Any]:
        words = self.words()
        models = self.params.get("speech_models") or []
        body: dict[str, Any] = {
            "text": DELETED_TEXT if self.deleted else result.text,
            "words": None if self.deleted else words,
            "confidence": result.confidence,
            "audio_duration": result.audio_duration,
            "audio_channels": 1,
            "speech_model_used": models[0] if models else "universal-3-pro",
        }
        if self.params.get("speaker_labels") and not self.deleted:
            body["utterances"] = utterances_of(words)
        if self.params.get("language_detection"):
            body["language_confidence"] = 0.99
        return body

    def list_item(self, base_url: str) -> dict[str, Any]:
        """The `TranscriptListItem` object of the spec."""
        return {
            "id": self.id,
            "resource_url": f"{base_url}/v2/transcript/{self.id}",
            "status": self.status,
            "created": self.created.isoformat(),
            "completed": self.completed.isoformat() if self.completed else None,
            "audio_url": DELETED_AUDIO_URL if self.deleted else self.audio_url,
            "error": self.error,
        }
