"""Error types, named by what the code does about them.

- ``ConfigError``: the daemon cannot start (exit code 2).
- ``AuthError``: the API refused the key; stop everything, move nothing (exit code 2).
- ``TransientError``: retry with backoff; never fails a file.
- ``PermanentError``: this one file fails and goes to ``failed/``.
- ``LocalIOError``: our own disk (outbox full, not writable); keep the source, retry later.
"""

from __future__ import annotations


class TranscribedError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(TranscribedError):
    """Invalid configuration or unusable folders: exit code 2."""


class AuthError(TranscribedError):
    """The service rejected the API key: stop everything."""


class TransientError(TranscribedError):
    """A failure that goes away by itself: timeouts, resets, 429, 5xx."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class PermanentError(TranscribedError):
    """This file cannot be transcribed; it goes to ``failed/`` with a report."""

    def __init__(
        self, message: str, *, status: int | None = None, transcript_id: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.transcript_id = transcript_id


class UploadExpiredError(TranscribedError):
    """The service no longer accepts a stored ``upload_url``: upload the file again."""


class LocalIOError(TranscribedError):
    """Writing results or moving the source failed on our side: keep the source, retry later."""
