"""The daemon as a real subprocess: files dropped while it runs, SIGTERM, and SIGKILL recovery."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import time
from pathlib import Path

from conftest import Daemon, Folders, eventually, expected_text, make_audio, write_config
from fakeapi import FakeAssemblyAI


def _finished(folders: Folders, n: int) -> bool:
    """``n`` transcripts written and ``n`` sources archived: every file went all the way."""
    return (
        folders.outbox.exists()
        and folders.done.exists()
        and len(list(folders.outbox.rglob("*.txt"))) >= n
        and len(list(folders.done.rglob("*.mp3"))) >= n
    )


async def _slow_write(path: Path, data: bytes, pieces: int, pause_s: float) -> None:
    step = len(data) // pieces + 1
    with path.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            await asyncio.sleep(pause_s)


async def test_files_dropped_while_running_are_uploaded_once_with_final_content(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    # The settle interval is ten times the slow writer's pauses, so a busy machine that
    # stretches a pause still does not make a half-written file look finished.
    config = write_config(folders, fake, **{"watch.settle_s": 2.0})
    daemon = await Daemon(config, folders.root / "daemon.log").start()
    await daemon.wait_for_event("watcher_started")

    quick = make_audio(folders.root / "staging" / "quick.mp3", seed="quick")
    os.rename(folders.root / "staging" / "quick.mp3", folders.inbox / "quick.mp3")
    # A download that arrives under a partial name and is renamed when complete.
    partial = folders.inbox / "podcast.mp3.part"
    renamed = make_audio(partial, seed="podcast")
    partial.rename(folders.inbox / "podcast.mp3")
    # A recorder writing slowly, pausing less than the settle interval between writes.
    (folders.inbox / "nested" / "deeper").mkdir(parents=True)
    slow_bytes = b"ID3\x04\x00" + os.urandom(60_000)
    await _slow_write(folders.inbox / "nested" / "deeper" / "slow.mp3", slow_bytes, 6, 0.2)
    slow = hashlib.sha256(slow_bytes).hexdigest()

    await eventually(lambda: _finished(folders, 3), 30, "three files transcribed and archived")

    for sha in (quick, renamed, slow):
        assert fake.counters.uploads_by_sha256[sha] == 1
        assert fake.counters.submits_by_sha256[sha] == 1
    assert set(fake.counters.uploads_by_sha256) == {quick, renamed, slow}
    assert (folders.outbox / "nested" / "deeper" / "slow.txt").read_text() == (
        expected_text(slow) + "\n"
    )
    assert (folders.done / "nested" / "deeper" / "slow.mp3").read_bytes() == slow_bytes

    started = time.monotonic()
    assert await daemon.signal(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert any(e["event"] == "daemon_stopped" for e in daemon.events())


async def test_sigterm_stops_within_grace_and_restart_resumes_without_reuploading(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    fake.hold_jobs()  # transcripts stay "processing" until released
    shas = [make_audio(folders.inbox / f"long-{i}.mp3", seed=f"long{i}") for i in range(5)]
    grace_s = 3.0
    config = write_config(folders, fake, **{"daemon.grace_s": grace_s})
    daemon = await Daemon(config, folders.root / "daemon.log").start()
    await fake.wait_until(lambda: fake.counters.submits == 5, timeout_s=30)

    started = time.monotonic()
    assert await daemon.signal(signal.SIGTERM) == 0
    # The held jobs never finish: only the grace period ends the drain (the margin is for a
    # busy machine; without the grace the daemon would wait out the 30 s signal timeout).
    assert time.monotonic() - started < grace_s + 7
    assert len(list(folders.inbox.glob("*.mp3"))) == 5

    fake.release_jobs()
    again = await Daemon(config, folders.root / "daemon.log").start()
    await eventually(lambda: _finished(folders, 5), 30, "five files transcribed and archived")
    assert await again.signal(signal.SIGTERM) == 0
    for sha in shas:
        assert fake.counters.uploads_by_sha256[sha] == 1
        assert fake.counters.submits_by_sha256[sha] == 1


def _journal_snapshot(folders: Folders) -> dict[str, str | None]:
    """sha256 -> transcript_id for every hashed job, read after the daemon was killed."""
    with sqlite3.connect(folders.state / "journal.sqlite3") as db:
        rows = db.execute("SELECT sha256, transcript_id FROM jobs WHERE sha256 IS NOT NULL")
        return dict(rows.fetchall())


async def test_sigkill_twice_mid_run_then_restart_transcribes_all_without_repaying(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    fake.config.latency_s = 1.0
    fake.config.concurrency = 10
    shas = [make_audio(folders.inbox / f"batch/{i:02d}.mp3", seed=f"k{i}") for i in range(60)]
    config = write_config(
        folders,
        fake,
        **{"assemblyai.max_concurrent_jobs": 20, "assemblyai.max_concurrent_uploads": 3},
    )
    log_path = folders.root / "daemon.log"
    protected: dict[str, int] = {}  # sha -> uploads seen when it was already submitted
    for threshold in (15, 35):
        daemon = await Daemon(config, log_path).start()
        await fake.wait_until(lambda t=threshold: fake.counters.submits >= t, timeout_s=60)
        assert await daemon.kill() == -signal.SIGKILL
        for sha, transcript_id in _journal_snapshot(folders).items():
            if transcript_id is not None:
                protected.setdefault(sha, fake.counters.uploads_by_sha256[sha])

    final = await Daemon(config, log_path).start()
    await eventually(lambda: _finished(folders, 60), 90, "sixty files transcribed and archived")
    assert await final.signal(signal.SIGTERM) == 0

    assert len(protected) >= 15
    for i, sha in enumerate(shas):
        assert (folders.outbox / f"batch/{i:02d}.txt").read_text() == expected_text(sha) + "\n"
        assert fake.counters.submits_by_sha256[sha] == 1, f"file {i} submitted twice"
    for sha, uploads_when_submitted in protected.items():
        assert fake.counters.uploads_by_sha256[sha] == uploads_when_submitted
    assert len(list(folders.done.rglob("*.mp3"))) == 60
    reuploads = sum(n - 1 for n in fake.counters.uploads_by_sha256.values() if n > 1)
    print(f"60 files, 2 kills: {len(protected)} submitted at a kill, {reuploads} re-uploads")
