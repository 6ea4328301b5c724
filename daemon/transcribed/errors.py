"""Error types, named by what the code does about them, and the process's exit codes.

- ``StartupError``: a part of the daemon could not start; ``part`` names it. Exit code 1, which
  a restart (systemd, Docker) may fix: a port still held by the previous process, a database
  not up yet.
- ``ConfigError``: the configuration or the folders are wrong; a restart cannot fix it (exit 2).
- ``AuthError``: the API refused the key; stop everything, move nothing (exit code 2).
- ``TransientError``: retry with backoff; never fails a file.
- ``PermanentError``: this one file fails and goes to ``failed/`` with a report.
- ``LocalIOError``: our own disk (outbox full, not writable); keep the source, retry later.
- ``SourceChangedError``: the source is no longer the file that was hashed; take it again as a
  new version.
- ``ComponentFailedError``: a long-running part died while the daemon ran (exit code 1).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The one list of the process's exit codes (documented in the README)."""

    OK = 0
    #: Some files failed (``run --once``), or a part of the daemon failed: a restart may help.
    FAILED = 1
    #: Bad configuration, unusable folders, a refused key: fix it before starting again.
    CONFIG = 2


class TranscribedError(Exception):
    """Root of every error this package raises on purpose."""


class StartupError(TranscribedError):
    """A part of the daemon could not start. ``part`` names it (``http``, ``journal``, ...);
    when the code that raises does not know, the start-up step it happened in fills it in."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part


class ConfigError(StartupError):
    """Invalid configuration or unusable folders: exit code 2."""

    exit_code = ExitCode.CONFIG


class AuthError(TranscribedError):
    """The service rejected the API key: stop everything."""


class ComponentFailedError(TranscribedError):
    """A long-running part of the daemon ended while it should have kept running."""

    def __init__(self, part: str, error: BaseException | None) -> None:
        what = "ended unexpectedly" if error is None else f"failed: {error!r}"
        super().__init__(f"{part} {what}")
        self.part = part
        self.error = error


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


class SourceChangedError(TranscribedError):
    """The source is no longer the file that was hashed (it shrank, grew, was rewritten or
    replaced): nothing more of it is sent, and it is taken again as a new version."""
