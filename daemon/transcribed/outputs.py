"""Results on disk: atomic transcript writes, and moving sources to done/ or failed/.

Every file appears complete or not at all (temp file, fsync, rename, fsync of the folder).
Jobs that finish together share their folders' fsyncs (:mod:`transcribed.groupsync`).
A name that is already taken is never overwritten: the caller reserves a free output name
through the journal, and a source moved onto an existing name gets a numbered one.

Below the outbox, done/ and failed/, nothing is reached through a symlink: each folder is
opened from its parent's descriptor with ``O_NOFOLLOW``, so a link planted there is never
followed out. A folder name taken by a file or a link (``done/x.mp3`` is a file, and a
source ``x.mp3/talk.mp3`` arrives) is replaced by the first free numbered one
(``x (2).mp3/``) instead of failing with "Not a directory" on every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from transcribed.backends import Result
from transcribed.errors import LocalIOError
from transcribed.groupsync import GroupSync, fsync_path
from transcribed.logs import redact_value
from transcribed.paths import TEMP_PREFIX, numbered, report_path

_TEMP_IDS = itertools.count()
#: How many numbered names are tried for one folder or file before giving up.
MAX_NAME_TRIES = 1000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Characters that a terminal would act on or that reorder text: written as \uXXXX in reports.
_UNSAFE_IN_JSON = re.compile(
    "[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _temp_name() -> str:
    # Without a random read (every syscall in a worker thread is a chance to take the
    # interpreter lock from the event loop); O_EXCL makes up for what pid + counter cannot
    # tell apart (another pid namespace on a shared folder, a stale temp).
    return f"{TEMP_PREFIX}{os.getpid()}-{next(_TEMP_IDS)}"


def _candidates(name: str) -> Iterator[str]:
    """``name``, then ``name (2)``, ``name (3)``, ... (the one free-name sequence)."""
    yield name
    for n in range(2, MAX_NAME_TRIES + 1):
        yield numbered(name, n)


def _subfolder(parent_fd: int, name: str, *, create: bool) -> int | None:
    """The real folder ``name`` in ``parent_fd``, opened without following a link; made when
    missing and ``create``. -1 when missing (and not made); None when the name is taken by a
    file, a link or anything else that is not a folder."""
    for _ in range(3):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                return -1
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                return None
            raise
    raise FileNotFoundError(errno.ENOENT, "folder keeps vanishing", name)


def _step(fd: int, part: str, *, create: bool) -> tuple[int, str]:
    """Open the folder ``part`` (or its first numbered name that is a real folder or free) in
    ``fd``: its descriptor, or -1 when missing and not made, and the name used."""
    for name in _candidates(part):
        sub = _subfolder(fd, name, create=create)
        if sub is not None:
            return sub, name
    raise LocalIOError(f"no free folder name for {part!r} after {MAX_NAME_TRIES} tries")


def open_folder(root: Path, rel_folder: str, *, create: bool = True) -> tuple[int | None, str]:
    """Open ``root/rel_folder`` without following any link below ``root``.

    Returns the folder's descriptor (the caller closes it) and the relative folder actually
    used: a component taken by a file or a link is replaced by its first numbered name that is
    a real folder or free. Without ``create``, a missing folder gives ``None`` (and the path it
    would have). ``root`` itself is the configured folder and may be a link."""
    rel = PurePosixPath(rel_folder)
    parts = [p for p in rel.parts if p not in ("", ".")]
    if ".." in parts or rel.is_absolute():
        raise ValueError(f"not a relative path inside its folder: {rel_folder!r}")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            return None, "/".join(parts)
        root.mkdir(parents=True, exist_ok=True)  # removed while the daemon runs: made again
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    used: list[str] = []
    for index, part in enumerate(parts):
        try:
            sub, name = _step(fd, part, create=create)
        finally:
            os.close(fd)
        used.append(name)
        if sub == -1:
            return None, "/".join(used + parts[index + 1 :])
        fd = sub
    return fd, "/".join(used)


def fsync_folder(path: Path) -> None:
    """fsync a folder by its path, also one whose path is longer than PATH_MAX (opened a
    component at a time from its parent's descriptor)."""
    try:
        fsync_path(path)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    else:
        return
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.parts[1:]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def free_name(fd: int, name: str, *, with_report: bool = False) -> str:
    """The first of ``name``, ``name (2)``, ... that nothing in folder ``fd`` holds (nor, with
    ``with_report``, its error report's name)."""
    for candidate in _candidates(name):
        if _exists(fd, candidate):
            continue
        if with_report and _exists(fd, PurePosixPath(report_path(candidate)).name):
            continue
        return candidate
    raise LocalIOError(f"no free name for {name!r} after {MAX_NAME_TRIES} tries")


def _link_to_free_name(fd: int, tmp: str, name: str) -> str:
    """Give the written ``tmp`` the first free name after ``name``, never replacing anything
    (a hard link fails on a taken name); returns the name."""
    for candidate in itertools.islice(_candidates(name), 1, None):
        try:
            os.link(tmp, candidate, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            continue
        os.unlink(tmp, dir_fd=fd)
        return candidate
    raise LocalIOError(f"no free name for {name!r} after {MAX_NAME_TRIES} tries")


def _open_temp_at(fd: int) -> tuple[str, int]:
    """A new temp file in folder ``fd``: its name there, and a descriptor open for writing."""
    while True:
        tmp = _temp_name()
        try:
            return tmp, os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666,
                dir_fd=fd,
            )
        except FileExistsError:
            continue  # left behind by an earlier process with the same pid


def _write_into(fd: int, name: str, data: bytes) -> str:
    """Write ``data`` to ``name`` in folder ``fd`` by temp file, fsync and rename; returns the
    name written. A folder or other thing that cannot be replaced by a file at ``name`` (one
    made after the name was reserved) gets the file a numbered name beside it, instead of a
    failure on every attempt."""
    tmp, out = _open_temp_at(fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            os.fsync(out)
        finally:
            os.close(out)
        try:
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except (IsADirectoryError, NotADirectoryError):
            return _link_to_free_name(fd, tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise
    return name


def write_tree_atomic(root: Path, files: Sequence[tuple[str, bytes]]) -> list[Path]:
    """Write each ``(relative path, bytes)`` under ``root`` atomically, no link followed
    (blocking); returns where each one went (the caller fsyncs their folders)."""
    written: list[Path] = []
    for rel, data in files:
        rel_path = PurePosixPath(rel)
        fd, used = open_folder(root, rel_path.parent.as_posix())
        assert fd is not None
        try:
            name = _write_into(fd, rel_path.name, data)
        finally:
            os.close(fd)
        written.append((root / used if used else root) / name)
    return written


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
        folders.update(p.parent for p in write_tree_atomic(path.parent, [(path.name, data)]))
    if sync_folders:
        for folder in folders:
            fsync_folder(folder)
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


def render_report(report: dict[str, Any]) -> bytes:
    """An error report as JSON: secrets masked, and nothing a terminal would act on (control
    characters, text reordering, undecodable name bytes) left raw when it is printed."""
    text = json.dumps(redact_value(report), ensure_ascii=False, indent=2)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode() + b"\n"


def _move_into(source: Path, fd: int, name: str) -> None:
    """Move ``source`` to ``name`` in folder ``fd``, copying across file systems."""
    try:
        os.rename(source, name, dst_dir_fd=fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    else:
        return
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source))
        tmp, out = _open_temp_at(fd)
        try:
            with open(out, "wb") as dst_file, open(src, "rb", closefd=False) as src_file:
                while chunk := src_file.read(1 << 20):
                    dst_file.write(chunk)
                dst_file.flush()
                os.fsync(dst_file.fileno())
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(src)
    source.unlink()


def move_to_free_name(
    source: Path, root: Path, rel_path: str, *, with_report: bool = False
) -> tuple[str, Path]:
    """Move ``source`` to ``root/rel_path``, or to the nearest free name (blocking).

    No link below ``root`` is followed; a folder name taken by a file gets a numbered folder,
    a taken file name (or, ``with_report``, its error report's) a numbered name. Returns the
    path used, relative to ``root``, and the folder to fsync."""
    rel = PurePosixPath(rel_path)
    fd, used = open_folder(root, rel.parent.as_posix())
    assert fd is not None
    try:
        name = free_name(fd, rel.name, with_report=with_report)
        _move_into(source, fd, name)
    finally:
        os.close(fd)
    final = f"{used}/{name}" if used else name
    return final, (root / used if used else root)


def move_file(src: Path, dst: Path, *, sync_folder: bool = True) -> None:
    """Move ``src`` to ``dst`` durably, copying across file systems (blocking); the caller
    syncs ``dst``'s folder when ``sync_folder`` is false. ``dst``'s folder is created when
    missing; an existing ``dst`` is replaced."""
    if not dst.parent.is_dir():
        os.lstat(src)  # a vanished source is the error, not a folder made for nothing
        dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _move_into(src, fd, dst.name)
        if sync_folder:
            os.fsync(fd)
    finally:
        os.close(fd)


class Outputs:
    """Knows the outbox, done and failed folders and the formats to write."""

    def __init__(self, outbox: Path, done: Path, failed: Path, formats: Sequence[str]) -> None:
        self.outbox = outbox
        self.done = done
        self.failed = failed
        self.formats = tuple(formats)
        self._folder_syncs: dict[Path, GroupSync] = {}

    def _names(self, base: str) -> list[str]:
        return [f"{base}.{fmt}" for fmt in self.formats]

    def paths_for(self, base: str) -> list[Path]:
        """Where ``base``'s outputs go, a folder name taken by a file or a link replaced as
        :func:`open_folder` does (blocking)."""
        rel = PurePosixPath(base)
        fd, used = open_folder(self.outbox, rel.parent.as_posix(), create=False)
        if fd is not None:
            os.close(fd)
        folder = self.outbox / used if used else self.outbox
        return [folder / f"{rel.name}.{fmt}" for fmt in self.formats]

    def base_in_use(self, base: str) -> bool:
        """True when anything (a file, a folder, a link) holds one of ``base``'s output names."""
        rel = PurePosixPath(base)
        try:
            fd, _used = open_folder(self.outbox, rel.parent.as_posix(), create=False)
        except OSError:
            return True  # unreadable: not a name to write to
        if fd is None:
            return False
        try:
            return any(_exists(fd, f"{rel.name}.{fmt}") for fmt in self.formats)
        finally:
            os.close(fd)

    async def write(self, base: str, result: Result) -> list[Path]:
        files = [
            (name, render(result, fmt))
            for fmt, name in zip(self.formats, self._names(base), strict=True)
        ]
        try:
            # One trip to a worker thread for all of a job's files: with a large backlog the
            # hops, not the bytes, are what cost.
            written = await asyncio.to_thread(write_tree_atomic, self.outbox, files)
            for folder in {path.parent for path in written}:
                await self._sync_folder(folder)
        except OSError as exc:
            raise LocalIOError(
                f"cannot write {exc.filename or self.outbox}: {exc.strerror}"
            ) from exc
        return written

    async def archive(self, source: Path, rel_path: str) -> str:
        """Move a transcribed source to done/; returns its path relative to done/."""
        return await self._move(source, self.done, rel_path)

    async def fail(self, source: Path | None, rel_path: str, report: dict[str, Any]) -> str:
        """Move a failed source to failed/ with ``<name>.error.json`` beside it."""
        final = rel_path
        if source is not None:
            final = await self._move(source, self.failed, rel_path)
        try:
            written = await asyncio.to_thread(
                write_tree_atomic, self.failed, [(report_path(final), render_report(report))]
            )
            await self._sync_folder(written[0].parent)
        except OSError as exc:
            raise LocalIOError(f"cannot write an error report in {self.failed}: {exc}") from exc
        return final

    async def _move(self, source: Path, root: Path, rel_path: str) -> str:
        try:
            final, folder = await asyncio.to_thread(
                move_to_free_name, source, root, rel_path, with_report=True
            )
            await self._sync_folder(folder)
        except OSError as exc:
            raise LocalIOError(f"cannot move {source} to {root}: {exc.strerror}") from exc
        return final

    async def _sync_folder(self, folder: Path) -> None:
        """fsync ``folder``, sharing the fsync with other jobs that wait on the same folder."""
        group = self._folder_syncs.get(folder)
        if group is None:
            group = self._folder_syncs[folder] = GroupSync(functools.partial(fsync_folder, folder))
        try:
            await group.wait()
        finally:
            if group.idle and self._folder_syncs.get(folder) is group:
                del self._folder_syncs[folder]
