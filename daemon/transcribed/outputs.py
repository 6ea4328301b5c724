"""Results on disk: atomic transcript writes, and moving sources to done/ or failed/.

Every file appears complete or not at all (temp file, fsync, rename, fsync of the folder).
Jobs that finish together share their folders' fsyncs (:mod:`transcribed.groupsync`).
A name that is already taken is never overwritten: the caller reserves a free output name
through the journal, and a source moved onto an existing name gets a numbered one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from transcribed.backends import Result
from transcribed.errors import LocalIOError
from transcribed.groupsync import GroupSync, fsync_path
from transcribed.paths import TEMP_PREFIX, numbered, report_path

_TEMP_IDS = itertools.count()


def _temp_name(folder: Path) -> str:
    # Without a random read (every syscall in a worker thread is a chance to take the
    # interpreter lock from the event loop); O_EXCL makes up for what pid + counter cannot
    # tell apart (another pid namespace on a shared folder, a stale temp).
    return f"{folder}/{TEMP_PREFIX}{os.getpid()}-{next(_TEMP_IDS)}"


def _open_temp(folder: Path) -> tuple[str, int]:
    """Create a new temp file in ``folder`` (and ``folder`` if missing): its path and an fd."""
    made = False
    while True:
        tmp = _temp_name(folder)
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue  # left behind by an earlier process with the same pid
        except FileNotFoundError:
            if made:
                raise
            folder.mkdir(parents=True, exist_ok=True)
            made = True


def write_files_atomic(
    files: Sequence[tuple[Path, bytes]], *, sync_folders: bool = True
) -> set[Path]:
    """Write each file so that readers see the old file or all of the new one (blocking).

    Temp file in the same folder, fsync, rename; then one fsync per folder for the renames,
    unless the caller syncs the folders it is given back. Plain ``os`` calls: this runs in a
    worker thread for every finished job, beside the event loop.
    """
    folders: set[Path] = set()
    for path, data in files:
        tmp, fd = _open_temp(path.parent)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # noqa: PTH105 - str paths: see the docstring
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # noqa: PTH108
            raise
        folders.add(path.parent)
    if sync_folders:
        for folder in folders:
            fsync_path(folder)
    return folders


async def write_atomic(path: Path, data: bytes) -> None:
    """:func:`write_files_atomic` for one file, off the event loop."""
    await asyncio.to_thread(write_files_atomic, [(path, data)])


def render(result: Result, fmt: str) -> bytes:
    if fmt == "txt":
        return (result.text.rstrip("\n") + "\n").encode()
    if fmt == "json":
        # Compact, as the API sends it: only the compact encoder is C code, and an hour of
        # words through the indenting one would hold the event loop for a good while.
        return json.dumps(result.transcript, ensure_ascii=False).encode() + b"\n"
    return result.subtitles[fmt].encode()


def _rename(src: Path, dst: Path) -> None:
    """``src.rename(dst)``, creating ``dst``'s folder only when the rename finds it missing
    (this runs for every finished job)."""
    try:
        src.rename(dst)
    except FileNotFoundError:
        if not src.exists():
            raise
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)


def move_file(src: Path, dst: Path, *, sync_folder: bool = True) -> None:
    """Move ``src`` to ``dst`` durably, copying across file systems (blocking); the caller
    syncs ``dst``'s folder when ``sync_folder`` is false."""
    try:
        _rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        name, fd = _open_temp(dst.parent)
        tmp = Path(name)
        try:
            with open(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            tmp.rename(dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        src.unlink()
    if sync_folder:
        fsync_path(dst.parent)


def _move_to_free_name(source: Path, root: Path, rel_path: str) -> tuple[str, Path]:
    """Move ``source`` to ``root/rel_path``, or to a numbered name if that (or its error
    report's name) is taken (blocking); returns the name used and the folder to sync."""
    final = rel_path
    n = 1
    while (root / final).exists() or (root / report_path(final)).exists():
        n += 1
        final = numbered(rel_path, n)
    target = root / PurePosixPath(final)
    move_file(source, target, sync_folder=False)
    return final, target.parent


class Outputs:
    """Knows the outbox, done and failed folders and the formats to write."""

    def __init__(self, outbox: Path, done: Path, failed: Path, formats: Sequence[str]) -> None:
        self.outbox = outbox
        self.done = done
        self.failed = failed
        self.formats = tuple(formats)
        self._folder_syncs: dict[Path, GroupSync] = {}

    def paths_for(self, base: str) -> list[Path]:
        return [self.outbox / f"{base}.{fmt}" for fmt in self.formats]

    def base_in_use(self, base: str) -> bool:
        """True when any output file for ``base`` already exists (from an earlier source)."""
        return any(path.exists() for path in self.paths_for(base))

    async def write(self, base: str, result: Result) -> list[Path]:
        paths = self.paths_for(base)
        files = [(path, render(result, fmt)) for fmt, path in zip(self.formats, paths, strict=True)]
        try:
            # One trip to a worker thread for all of a job's files: with a large backlog the
            # hops, not the bytes, are what cost.
            folders = await asyncio.to_thread(write_files_atomic, files, sync_folders=False)
            for folder in folders:
                await self._sync_folder(folder)
        except OSError as exc:
            raise LocalIOError(
                f"cannot write {exc.filename or self.outbox}: {exc.strerror}"
            ) from exc
        return paths

    async def archive(self, source: Path, rel_path: str) -> str:
        """Move a transcribed source to done/; returns its path relative to done/."""
        return await self._move(source, self.done, rel_path)

    async def fail(self, source: Path | None, rel_path: str, report: dict[str, Any]) -> str:
        """Move a failed source to failed/ with ``<name>.error.json`` beside it."""
        final = rel_path
        if source is not None:
            final = await self._move(source, self.failed, rel_path)
        body = json.dumps(report, ensure_ascii=False, indent=2).encode() + b"\n"
        try:
            await write_atomic(self.failed / report_path(final), body)
        except OSError as exc:
            raise LocalIOError(f"cannot write an error report in {self.failed}: {exc}") from exc
        return final

    async def _move(self, source: Path, root: Path, rel_path: str) -> str:
        try:
            final, folder = await asyncio.to_thread(_move_to_free_name, source, root, rel_path)
            await self._sync_folder(folder)
        except OSError as exc:
            raise LocalIOError(f"cannot move {source} to {root}: {exc.strerror}") from exc
        return final

    async def _sync_folder(self, folder: Path) -> None:
        """fsync ``folder``, sharing the fsync with other jobs that wait on the same folder."""
        group = self._folder_syncs.get(folder)
        if group is None:
            group = self._folder_syncs[folder] = GroupSync(functools.partial(fsync_path, folder))
        try:
            await group.wait()
        finally:
            if group.idle and self._folder_syncs.get(folder) is group:
                del self._folder_syncs[folder]
