"""Files on disk: atomic writes, moves across file systems, and shared fsyncs that fail."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from transcribed.groupsync import GroupSync
from transcribed.outputs import move_file, write_files_atomic
from transcribed.paths import TEMP_PREFIX


def test_writes_create_missing_folders_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "talk.txt"
    (tmp_path / "talk.json").write_bytes(b"old")
    write_files_atomic([(target, b"hello\n"), (tmp_path / "talk.json", b"{}\n")])
    assert target.read_bytes() == b"hello\n"
    assert (tmp_path / "talk.json").read_bytes() == b"{}\n"
    assert not list(tmp_path.rglob(f"{TEMP_PREFIX}*"))


def test_a_move_creates_the_missing_folder_and_a_vanished_source_is_an_error(
    tmp_path: Path,
) -> None:
    source = tmp_path / "talk.mp3"
    source.write_bytes(b"ID3 audio")
    move_file(source, tmp_path / "done" / "a" / "talk.mp3")
    assert (tmp_path / "done" / "a" / "talk.mp3").read_bytes() == b"ID3 audio"
    with pytest.raises(FileNotFoundError):
        move_file(source, tmp_path / "done" / "b" / "talk.mp3")
    assert not (tmp_path / "done" / "b").exists()


def test_a_move_across_file_systems_copies_then_removes_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "inbox" / "talk.mp3"
    source.parent.mkdir()
    source.write_bytes(b"ID3" + bytes(range(256)) * 5000)
    data = source.read_bytes()
    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Any:
        if self == source:  # the direct move only: the copy's own rename must work
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    destination = tmp_path / "done" / "sub" / "talk.mp3"
    move_file(source, destination)
    assert destination.read_bytes() == data
    assert not source.exists()
    assert not list(tmp_path.rglob(f"{TEMP_PREFIX}*"))


async def test_a_flush_that_cannot_start_fails_its_waiters_and_the_next_one_still_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushed: list[int] = []
    group = GroupSync(lambda: flushed.append(1))
    loop = asyncio.get_running_loop()
    real = loop.run_in_executor

    def no_thread(*_args: Any) -> Any:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(loop, "run_in_executor", no_thread)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(group.wait(), 2)
    assert group.idle  # nothing left "running" for the next caller to wait on for ever
    monkeypatch.setattr(loop, "run_in_executor", real)
    await asyncio.wait_for(group.wait(), 2)
    assert flushed == [1]
