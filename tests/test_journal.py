"""The journal: one live row per inbox path, exclusive use, and clear errors."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from conftest import API_KEY, Folders, Services, discover, make_audio, settings_for
from fakeapi import FakeAssemblyAI, FakeConfig
from transcribed import service as service_module
from transcribed.errors import LocalIOError
from transcribed.journal import Journal, JournalError


def test_discover_is_idempotent_per_live_path(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        first = discover(journal, "a.mp3", 10, 1)
        assert first is not None
        assert discover(journal, "a.mp3", 10, 1) is None
        for state in ("uploading", "completed"):
            journal.set_state(first, state)
        journal.set_state(first, "archived", source_moved=1)
        again = discover(journal, "a.mp3", 12, 2)
        assert again is not None and again != first
        assert journal.counts()["archived"] == 1
        assert journal.counts()["discovered"] == 1


def test_claimable_skips_running_and_deferred_jobs_and_next_wakeup_sees_only_deferrals(
    tmp_path: Path,
) -> None:
    with Journal(tmp_path) as journal:
        ids = [discover(journal, f"{n}.mp3", 10, 1) for n in range(5)]
        assert None not in ids
        a, b, c, d, e = (int(job_id) for job_id in ids if job_id is not None)
        now = time.time()
        journal.update(c, next_attempt_at=now + 30)
        journal.update(e, next_attempt_at=now + 10)
        for state in ("uploading", "completed"):
            journal.set_state(d, state)
        journal.set_state(d, "archived", source_moved=1, next_attempt_at=now + 5)
        # a is running; c and e are deferred; d has left the inbox.
        assert [row.id for row in journal.claimable(5, {a}, now)] == [b]
        assert [row.id for row in journal.claimable(1, set(), now)] == [a]
        # Due jobs (running or waiting for a slot) are no timer's business; e's deferral is.
        assert journal.next_wakeup(now) == pytest.approx(now + 10)
        journal.update(e, next_attempt_at=0)
        journal.update(c, next_attempt_at=0)
        assert journal.next_wakeup(now) is None


def test_state_survives_reopening(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        job = discover(journal, "a.mp3", 10, 1)
        assert job is not None
        journal.set_state(job, "submitted", transcript_id="t-1", upload_url="u")
    with Journal(tmp_path) as journal:
        row = journal.get(job)
        assert (row.state, row.transcript_id, row.upload_url) == ("submitted", "t-1", "u")


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    with Journal(tmp_path), pytest.raises(JournalError, match="another transcribed"):
        Journal(tmp_path).open()


def test_readonly_readers_do_not_need_the_lock(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        discover(journal, "a.mp3", 1, 1)
        with Journal(tmp_path, readonly=True) as reader:
            assert reader.counts()["discovered"] == 1


def test_a_corrupt_journal_gives_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=r"journal\.sqlite3"):
        Journal(tmp_path).open()


def test_journal_uses_wal(tmp_path: Path) -> None:
    with Journal(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claimable_reads_a_large_backlog_in_order_with_whole_rows(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        # More than one statement's worth of ids (rows are read a few hundred at a time).
        new = journal.discover_many([(f"{n:04d}.mp3", n + 1, 7) for n in range(1203)])
        journal.update(new["0005.mp3"], sha256="ab" * 32)
        rows = journal.claimable(1201, {new["0000.mp3"]})
        assert [row.path for row in rows] == [f"{n:04d}.mp3" for n in range(1, 1202)]
        assert rows[4].sha256 == "ab" * 32 and rows[4].size == 6 and rows[4].mtime_ns == 7
        assert rows[0] == journal.get(new["0001.mp3"])


def test_output_names_are_reserved_once(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        a = discover(journal, "x/a.mp3", 1, 1)
        b = discover(journal, "x/a.wav", 1, 1)
        assert a is not None and b is not None
        candidates = ["x/a", "x/a.ext", "x/a (2)"]
        assert journal.reserve_output_base(a, candidates, lambda _b: False) == "x/a"
        assert journal.reserve_output_base(a, candidates, lambda _b: False) == "x/a"
        assert journal.reserve_output_base(b, candidates, lambda _b: False) == "x/a.ext"
        # A name free on disk but recorded for another job (compared case-folded) is skipped;
        # one taken on disk is skipped too. Looking does not reserve anything.
        c = discover(journal, "x/A.ogg", 1, 1)
        assert c is not None
        assert (
            journal.free_output_base(
                c, ["X/A", "x/a (2)", "x/a (3)"], lambda base: base == "x/a (2)"
            )
            == "x/a (3)"
        )
        assert journal.get(c).output_base is None


def test_a_transaction_commits_everything_inside_once_or_nothing(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        job = discover(journal, "a.mp3", 10, 1)
        assert job is not None
        with pytest.raises(RuntimeError), journal.transaction():
            journal.set_state(job, "uploading")
            journal.update(job, upload_url="u")
            raise RuntimeError("changed my mind")
        assert (journal.get(job).state, journal.get(job).upload_url) == ("discovered", None)

        reader = sqlite3.connect(journal.path)
        with journal.transaction():
            journal.set_state(job, "uploading")
            journal.update(job, upload_url="u")
            # Nothing is visible to another connection until the outermost block ends.
            assert reader.execute("SELECT state FROM jobs").fetchone() == ("discovered",)
        assert reader.execute("SELECT state, upload_url FROM jobs").fetchone() == ("uploading", "u")
        reader.close()


class _HeldSync(Journal):
    """A journal whose first fsync waits until the test lets it go."""

    def __init__(self, state_dir: Path, error: OSError | None = None) -> None:
        super().__init__(state_dir)
        self.syncs = 0
        self.running = threading.Event()
        self.release = threading.Event()
        self.error = error

    def sync(self) -> None:
        self.syncs += 1
        self.running.set()
        self.release.wait(10)
        if self.error is not None:
            raise self.error
        super().sync()


async def test_callers_of_durable_share_the_next_fsync(tmp_path: Path) -> None:
    with _HeldSync(tmp_path) as journal:
        job = discover(journal, "a.mp3", 10, 1)
        assert job is not None
        first = asyncio.create_task(journal.durable())
        await asyncio.to_thread(journal.running.wait, 10)
        # These commit while the first fsync runs, so they need the next one, and share it.
        journal.update(job, submit_started_at=1.0)
        rest = [asyncio.create_task(journal.durable()) for _ in range(10)]
        await asyncio.sleep(0)  # one turn of the loop: every task registers its wait
        assert not any(task.done() for task in [first, *rest])
        journal.release.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        assert journal.syncs == 2


async def test_durable_does_not_wait_behind_the_shared_thread_pool(tmp_path: Path) -> None:
    # Every thread of the loop's pool busy with long file work (here: one thread, blocked).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
    release = threading.Event()
    busy = asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
    try:
        with Journal(tmp_path) as journal:
            job = discover(journal, "a.mp3", 10, 1)
            assert job is not None
            journal.update(job, submit_started_at=1.0)
            await asyncio.wait_for(journal.durable(), 10)  # a submit must not wait for it
    finally:
        release.set()
        await busy


async def test_durable_needs_a_journal_open_for_writing(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with journal:
        await journal.durable()
    with pytest.raises(RuntimeError, match="open for writing"):
        await journal.durable()
    with Journal(tmp_path, readonly=True) as readonly, pytest.raises(RuntimeError):
        await readonly.durable()


async def test_a_failing_fsync_is_a_local_io_error_for_every_waiter(tmp_path: Path) -> None:
    error = OSError(errno.EIO, "Input/output error")
    with _HeldSync(tmp_path, error) as journal:
        journal.release.set()
        results = await asyncio.gather(journal.durable(), journal.durable(), return_exceptions=True)
    assert all(isinstance(r, LocalIOError) and "Input/output" in str(r) for r in results)


class _Recording(Journal):
    """A journal that notes when submit marks are committed and when fsyncs run."""

    marks: ClassVar[list[float]] = []
    syncs: ClassVar[list[tuple[float, float]]] = []

    def update(self, job_id: int, **values: Any) -> None:
        super().update(job_id, **values)
        if values.get("submit_started_at") is not None:
            self.marks.append(time.perf_counter())

    def sync(self) -> None:
        started = time.perf_counter()
        super().sync()
        self.syncs.append((started, time.perf_counter()))


class _ArrivalsFake(FakeAssemblyAI):
    """The fake, noting when each submit arrives."""

    arrivals: ClassVar[list[float]] = []

    async def create_transcript(self, request: web.Request, account: str) -> web.Response:
        self.arrivals.append(time.perf_counter())
        return await super().create_transcript(request, account)


async def test_every_submit_arrives_after_an_fsync_of_its_mark(
    folders: Folders, monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    monkeypatch.setattr(service_module, "Journal", _Recording)
    for noted in (_Recording.marks, _Recording.syncs, _ArrivalsFake.arrivals):
        noted.clear()
    async with _ArrivalsFake(FakeConfig(api_keys=(API_KEY,), latency_s=0.2)) as fake:
        for i in range(30):
            make_audio(folders.inbox / f"{i}.mp3", seed=f"mark{i}")
        assert await services.run(settings_for(folders, fake), once=True) == 0
    marks, syncs, arrivals = _Recording.marks, _Recording.syncs, sorted(_ArrivalsFake.arrivals)
    assert len(marks) == len(arrivals) == 30
    # By the time the k-th submit arrives, at least k marks must have been fsynced: each by an
    # fsync that started after the mark was committed and ended before that arrival.
    for k, arrival in enumerate(arrivals, start=1):
        synced = sum(
            any(mark <= start and end <= arrival for start, end in syncs) for mark in marks
        )
        assert synced >= k, f"submit {k} arrived with only {synced} marks on disk"
    assert len(syncs) < len(marks)  # and they shared fsyncs
