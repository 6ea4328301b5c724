"""Faults on our own side: a full or read-only outbox, an unreadable source, a corrupt journal.

Each test shows the source is kept and the daemon keeps running. The disk tests use a real
tmpfs and a real read-only bind mount, so they need root (as CI has); without it they skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest
import structlog

from conftest import (
    Folders,
    Mounts,
    Services,
    clean_env,
    daemon_command,
    eventually,
    expected_text,
    make_audio,
    run_cli,
    settings_for,
    write_config,
)
from fakeapi import FakeAssemblyAI


@pytest.fixture
def small_outbox(folders: Folders, mounts: Mounts) -> Path:
    folders.outbox.mkdir()
    mounts.tmpfs(folders.outbox, size="64k")
    return folders.outbox


async def test_a_full_outbox_keeps_the_source_and_retries_until_there_is_room(
    folders: Folders, fake: FakeAssemblyAI, small_outbox: Path, services: Services
) -> None:
    filler = small_outbox / "filler.bin"
    with contextlib.suppress(OSError), filler.open("wb") as handle:
        handle.write(b"\0" * 128 * 1024)  # fails part-way: the tmpfs is full, as intended
    sha = make_audio(folders.inbox / "a.mp3", seed="full")
    settings = settings_for(folders, fake, **{"output.formats": ["txt", "json"]})
    with structlog.testing.capture_logs() as logs:
        service, task = services.start(settings)
        await eventually(lambda: any(e["event"] == "job_deferred" for e in logs), 20, "deferral")
        assert (folders.inbox / "a.mp3").is_file()
        assert not (small_outbox / "a.txt").exists()
        assert not (small_outbox / "a.json").exists()
        assert [p.name for p in small_outbox.iterdir()] == ["filler.bin"]  # no temp leftovers
        assert not task.done()
        filler.unlink()
        await eventually(lambda: (folders.done / "a.mp3").is_file(), 30, "archived")
        service.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    assert (small_outbox / "a.txt").read_text() == expected_text(sha) + "\n"
    assert fake.counters.uploads_by_sha256[sha] == 1
    assert fake.counters.submits_by_sha256[sha] == 1
    deferred = [e for e in logs if e["event"] == "job_deferred"]
    assert "No space left" in deferred[0]["reason"]


async def test_an_outbox_that_turns_read_only_keeps_the_source_and_the_daemon_running(
    folders: Folders, fake: FakeAssemblyAI, mounts: Mounts, services: Services
) -> None:
    # A folder that is unusable at start-up is a start-up error (exit 2); this one goes
    # read-only while the daemon runs.
    readonly_outbox = folders.outbox
    with structlog.testing.capture_logs() as logs:
        service, task = services.start(settings_for(folders, fake))
        await asyncio.wait_for(service.watcher_ready.wait(), 20)
        mounts.read_only(readonly_outbox)
        sha = make_audio(folders.inbox / "a.mp3", seed="ro")
        await eventually(lambda: any(e["event"] == "job_deferred" for e in logs), 20, "deferral")
        assert (folders.inbox / "a.mp3").is_file()
        assert not task.done()
        mounts.unmount(readonly_outbox)
        await eventually(lambda: (folders.done / "a.mp3").is_file(), 30, "archived")
        service.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    assert "Read-only" in next(e for e in logs if e["event"] == "job_deferred")["reason"]
    assert (readonly_outbox / "a.txt").read_text() == expected_text(sha) + "\n"


async def test_an_unreadable_source_is_reported_and_skipped_while_others_complete(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    # The daemon runs without the capabilities that let root read any file, so a mode-000
    # file is as unreadable to it as to an ordinary user.
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to drop file-access capabilities")
    good = make_audio(folders.inbox / "good.mp3", seed="good")
    make_audio(folders.inbox / "locked.mp3", seed="locked")
    (folders.inbox / "locked.mp3").chmod(0o000)
    drop = "-dac_override,-dac_read_search"
    command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]
    command += daemon_command(write_config(folders, fake), "--once")
    proc = await run_cli(command, clean_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert any(e["event"] == "daemon_stopped" for e in proc.events())
    assert (folders.outbox / "good.txt").read_text() == expected_text(good) + "\n"
    assert (folders.failed / "locked.mp3").is_file()
    report = (folders.failed / "locked.mp3.error.json").read_text()
    assert "Permission denied" in report
    assert "locked" not in "".join(fake.counters.uploads_by_sha256)


async def test_a_corrupt_journal_stops_start_up_with_a_clear_message(folders: Folders) -> None:
    folders.state.mkdir()
    (folders.state / "journal.sqlite3").write_bytes(b"garbage, not sqlite " * 500)
    make_audio(folders.inbox / "a.mp3", seed=1)
    proc = await run_cli(daemon_command(write_config(folders, None), "--once"), clean_env())
    assert proc.returncode == 2
    failure = next(e for e in proc.events() if e["event"] == "startup_failed")
    assert "journal.sqlite3" in failure["error"]
    assert (folders.inbox / "a.mp3").is_file()
