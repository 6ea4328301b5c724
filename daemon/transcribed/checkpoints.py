"""What a job records as it goes, and its place among the jobs being taken.

:class:`JournalCheckpoints` is the journal-backed :class:`~transcribed.backends.Checkpoints` a
backend reports each remote step to; :class:`Admission` is a job's place among those between
taking a file and submitting it (the pool decides how many such places there are).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from transcribed.journal import Journal, State
from transcribed.paths import SourceFile


class Admission:
    """A place among the jobs between taking a file and submitting it; left at most once."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def enter(self) -> None:
        await self._semaphore.acquire()
        self._held = True

    def leave(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


class JournalCheckpoints:
    """Journal-backed :class:`~transcribed.backends.Checkpoints` for one job."""

    def __init__(
        self,
        journal: Journal,
        job_id: int,
        phases: dict[int, str],
        release: Callable[[], None] = lambda: None,
        source: SourceFile | None = None,
    ) -> None:
        self._journal = journal
        self._id = job_id
        self._phases = phases
        self._release = release
        self._source = source
        self._upload: dict[str, Any] = {}

    def uploaded(self, upload_url: str) -> None:
        # Recorded with the submit mark that follows at once, in one commit: should the
        # process die in between, the upload is only done again, which costs nothing.
        self._upload = {"upload_url": upload_url, "uploaded_at": time.time()}

    async def submitting(self) -> None:
        # Durable: after a power cut this is what sends a restart to look the submit up
        # instead of paying again.
        self._journal.update(self._id, **self._upload, submit_started_at=time.time())
        self._upload = {}
        await self._journal.durable()
        self._release()

    def submitted(self, transcript_id: str) -> None:
        # Not fsynced: should a power cut lose it, the durable submit_started_at sends the
        # restart to find this transcript in the list instead of submitting again.
        self._journal.set_state(
            self._id, State.SUBMITTED, transcript_id=transcript_id, submitted_at=time.time()
        )
        self._release()
        if self._source is not None:
            # Sent: while it waits for its transcript, the job holds no descriptor (thousands
            # may wait); what reads it later walks to it again and checks it is the same.
            self._source.release()

    def upload_lost(self) -> None:
        self._upload = {}
        self._journal.update(self._id, upload_url=None, uploaded_at=None, submit_started_at=None)

    def phase(self, name: str) -> None:
        self._phases[self._id] = name
        if name == "uploading":  # when the bytes start to flow, not when the job queued for it
            self._journal.update(self._id, upload_started_at=time.time())
