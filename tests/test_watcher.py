"""The watcher: what it takes from the inbox, when, and what it never touches."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from conftest import eventually
from transcribed import watcher as watcher_module
from transcribed.config import WatchSettings
from transcribed.journal import Journal
from transcribed.paths import is_candidate_name
from transcribed.watcher import Watcher


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    with Journal(tmp_path) as j:
        yield j


def _watcher(inbox: Path, journal: Journal, settle_s: float = 0.2) -> Watcher:
    return Watcher(inbox, WatchSettings(settle_s=settle_s), journal, lambda: None)


def _old(path: Path, data: bytes = b"ID3 audio") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = time.time() - 3600
    os.utime(path, (past, past))
    return path


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("a.mp3", True),
        ("A.MP3", True),
        ("talk.Wav", True),
        ("x/y/z.m4a", True),
        ("notes.txt", False),
        (".hidden.mp3", False),
        (".cache/a.mp3", False),
        ("a.mp3.part", False),
        ("a.mp3.partial", False),
        ("a.mp3.tmp", False),
        ("a.mp3.crdownload", False),
        ("a.mp3.download", False),
        ("~lock.mp3", False),
    ],
)
def test_candidate_names(name: str, taken: bool) -> None:
    assert is_candidate_name(name, WatchSettings().patterns) is taken


async def test_scan_takes_settled_regular_files_and_nothing_else(
    tmp_path: Path, journal: Journal
) -> None:
    inbox = tmp_path / "inbox"
    _old(inbox / "a.mp3")
    _old(inbox / "Deep" / "Er" / "b.FLAC")
    _old(inbox / ".hidden" / "c.mp3")
    _old(inbox / "d.mp3.part")
    _old(inbox / "readme.txt")
    outside = _old(tmp_path / "outside" / "secret.mp3")
    (inbox / "link.mp3").symlink_to(outside)
    (inbox / "linked").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(inbox / "pipe.mp3")

    watcher = _watcher(inbox, journal)
    await watcher.scan()
    assert await watcher.settle() == 2
    assert journal.live_paths() == {"a.mp3", "Deep/Er/b.FLAC"}


class _Clock:
    """Stands in for the watcher's ``time``: it moves only when the test says so."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = time.time()

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def stamp(self, path: Path) -> None:
        """Date the last write to ``path`` at this clock's "now"."""
        os.utime(path, (self.wall, self.wall))


async def test_a_file_still_being_written_is_not_taken_until_it_settles(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()  # so a slow machine cannot settle the file between two looks
    monkeypatch.setattr(watcher_module, "time", clock)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    growing = inbox / "rec.mp3"
    growing.write_bytes(b"ID3 first")
    clock.stamp(growing)
    watcher = _watcher(inbox, journal, settle_s=10)
    await watcher.scan()
    assert await watcher.settle() == 0
    clock.advance(9)
    assert await watcher.settle() == 0  # quiet for 9 s of the 10
    with growing.open("ab") as handle:
        handle.write(b" more")
    clock.stamp(growing)
    assert await watcher.settle() == 0  # changed since last look: the clock starts again
    clock.advance(9)
    assert await watcher.settle() == 0  # 18 s since it appeared, but only 9 since it changed
    clock.advance(2)
    assert await watcher.settle() == 1
    (row,) = journal.claimable(10, set())
    assert row.size == len(b"ID3 first more")


async def test_known_files_are_handed_over_only_once(tmp_path: Path, journal: Journal) -> None:
    inbox = tmp_path / "inbox"
    _old(inbox / "a.mp3")
    watcher = _watcher(inbox, journal)
    await watcher.scan()
    assert await watcher.settle() == 1
    await watcher.scan()
    assert await watcher.settle() == 0
    assert watcher.unsettled == 0


async def test_watch_sees_new_files_and_folders_moved_in(tmp_path: Path, journal: Journal) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    new = asyncio.Event()
    watcher = Watcher(inbox, WatchSettings(settle_s=0.2), journal, lambda: new.set())
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watcher.watch(stop, ready))
    await asyncio.wait_for(ready.wait(), 10)

    (inbox / "one.mp3").write_bytes(b"ID3 one")
    staging = tmp_path / "staging" / "album"
    _old(staging / "two.ogg")
    _old(staging / "sub" / "three.opus")
    os.rename(staging, inbox / "album")

    await eventually(lambda: len(journal.live_paths()) == 3, 10, "three files")
    assert journal.live_paths() == {"one.mp3", "album/two.ogg", "album/sub/three.opus"}
    assert new.is_set()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not watcher.running


async def test_polling_mode_works_without_inotify(tmp_path: Path, journal: Journal) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = WatchSettings(settle_s=0.2, force_polling=True, poll_delay_ms=100)
    watcher = Watcher(inbox, settings, journal, lambda: None)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watcher.watch(stop, ready))
    await asyncio.wait_for(ready.wait(), 10)
    (inbox / "share.mp3").write_bytes(b"ID3 from a network share")
    await eventually(lambda: journal.live_paths() == {"share.mp3"}, 10, "polled file")
    stop.set()
    await asyncio.wait_for(task, 10)
