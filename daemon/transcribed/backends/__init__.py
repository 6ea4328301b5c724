"""Transcription engines behind one small protocol.

The pool hands a backend a :class:`Job` and a :class:`Checkpoints` sink; the backend returns a
:class:`Result` or raises one of :mod:`transcribed.errors`. A remote backend reports each remote
step through ``Checkpoints`` before starting the next, so a restart resumes instead of repeating
it. A backend never touches the journal or the folders itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from transcribed.paths import SourceFile


class Content:
    """A small file's bytes, read while hashing it, handed to its upload once: the first
    :meth:`take` gets them and frees them, so a job waiting hours for its transcript does not
    keep them."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def take(self) -> bytes | None:
        data, self._data = self._data, None
        return data


@dataclass(frozen=True)
class Job:
    """What a backend needs to know about one source file (a snapshot of its journal row)."""

    id: int
    path: Path
    rel_path: str
    size: int
    sha256: str | None = None
    upload_url: str | None = None
    transcript_id: str | None = None
    submit_started_at: float | None = None
    submitted_at: float | None = None
    attempts: int = 0
    #: The bytes that were hashed, when the file is small (saves reading it again to upload).
    content: Content | None = field(default=None, repr=False, compare=False)
    #: The file that was hashed, reached by handle: read it through this, not through
    #: ``path`` (which a swapped folder or a rename may point elsewhere). None: use ``path``.
    source: SourceFile | None = field(default=None, repr=False, compare=False)


class Checkpoints(Protocol):
    """Where a backend records remote progress before its next step.

    Each record survives the process dying once the call returns, except ``uploaded``, which
    may wait for the ``submitting`` that follows it (losing it costs only a new upload);
    ``submitting`` also survives a power cut, since what it guards (a submit about to be sent)
    is paid for."""

    def uploaded(self, upload_url: str) -> None: ...

    async def submitting(self) -> None: ...

    def submitted(self, transcript_id: str) -> None: ...

    def upload_lost(self) -> None: ...

    def phase(self, name: str) -> None:
        """Say what the job is doing now (``uploading``, ``polling``, ...), for shutdown and
        progress; not durable."""


@dataclass
class Result:
    """A finished transcript in AssemblyAI's transcript shape, plus rendered subtitles."""

    transcript: dict[str, Any]
    subtitles: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.transcript.get("text") or "")

    @property
    def transcript_id(self) -> str | None:
        value = self.transcript.get("id")
        return str(value) if value is not None else None

    @property
    def audio_duration_s(self) -> float | None:
        value = self.transcript.get("audio_duration")
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the service and the pool act on these, never on its name."""

    #: Transcripts can be fetched again by id, so a file with the same bytes may reuse one
    #: (and small files' bytes are worth keeping from hashing to upload).
    dedupe: bool = False
    #: Progress lives at a remote service, which is asked for it (status sweeps, webhooks).
    remote_status: bool = False
    #: The backend serves HTTP routes of its own (a webhook receiver) on the daemon's server.
    webhooks: bool = False


class Backend(Protocol):
    """One transcription engine."""

    #: A label for logs and the journal's ``backend`` column; never branched on.
    name: str
    capabilities: Capabilities
    #: How many jobs the pool may run at once with this backend.
    max_concurrency: int

    async def start(self) -> None:
        """Acquire resources and check usability (key accepted, model loaded).

        Raises ``AuthError`` or ``ConfigError`` when the backend cannot be used at all.
        """

    async def close(self) -> None:
        """Release resources; safe to call after a failed ``start``."""

    def health(self) -> str:
        """``"ok"``, or what is wrong (for ``/readyz``): the API failing for a while, say."""

    def parts(self) -> Mapping[str, asyncio.Task[None]]:
        """Long-running tasks the backend started, by name, for the daemon to supervise: one
        that ends while the daemon runs stops the daemon (loudly) instead of dying alone."""

    def routes(self, known: Callable[[str], bool]) -> Sequence[web.RouteDef]:
        """HTTP routes to serve on the daemon's endpoint (a webhook receiver), or none.
        ``known(transcript_id)``: the journal holds that transcript id."""

    async def transcribe(self, job: Job, checkpoints: Checkpoints) -> Result:
        """Turn one file into a transcript, resuming from the job's recorded progress."""
