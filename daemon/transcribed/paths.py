"""Which inbox files are taken, where each one's results and source go, and how a source is
opened.

The mapping is pure functions over paths and names, so it can be property-tested; the I/O is
:func:`safe_lstat` and the open-by-handle helpers at the end
(:func:`open_beneath`, :class:`SourceFile`). Names are bytes: one that is not UTF-8 is held as a
``str`` with surrogates (``os.fsdecode``), which every ``os`` call turns back into the same
bytes, and :func:`printable` shows it in messages.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import itertools
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from transcribed.errors import SourceChangedError

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".temp", ".swp")
#: Prefix of the temp files this daemon writes; always a dotfile, so it is never taken as input.
TEMP_PREFIX = ".transcribed-tmp-"
#: Longest file name (bytes) on the file systems we write to.
NAME_MAX = 255
#: The longest suffix added to an output base (".json").
OUTPUT_SUFFIX_BYTES = 5
REPORT_SUFFIX = ".error.json"


def fit_name(name: str, extra_bytes: int) -> str:
    """``name``, shortened if ``name`` + ``extra_bytes`` would pass NAME_MAX.

    A shortened name keeps its start and ends with a hash of the whole name, so two long
    names that share a prefix still map to different names.
    """
    raw = os.fsencode(name)  # its bytes on disk, also when it is not UTF-8
    if len(raw) + extra_bytes <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    room = NAME_MAX - extra_bytes - len(digest) - 1
    return f"{raw[:room].decode('utf-8', errors='ignore')}~{digest}"


def _fit_last(rel: PurePosixPath, extra_bytes: int) -> str:
    return rel.with_name(fit_name(rel.name, extra_bytes)).as_posix()


def report_path(rel_path: str) -> str:
    """Where the error report of a source at ``rel_path`` in failed/ goes."""
    rel = PurePosixPath(rel_path)
    return _fit_last(rel, len(REPORT_SUFFIX)) + REPORT_SUFFIX


def is_candidate_name(rel_path: str, patterns: Sequence[str]) -> bool:
    """True when an inbox-relative path looks like input: matches a pattern, case-insensitively,
    and neither it nor any parent folder is hidden or a temp/partial download."""
    parts = PurePosixPath(rel_path).parts
    if not parts or any(part.startswith(".") for part in parts):
        return False
    name = parts[-1].lower()
    if name.endswith(TEMP_SUFFIXES) or name.startswith("~"):
        return False
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)


def is_hidden_dir(name: str) -> bool:
    return name.startswith(".")


def safe_lstat(path: Path) -> os.stat_result | None:
    """``lstat`` that answers None for anything but a regular file (symlinks included)."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def output_base_candidates(rel_path: str) -> Iterator[str]:
    """Output names (without format extension) to try for a source, best first.

    ``talks/a.mp3`` -> ``talks/a``, then ``talks/a.mp3`` (so ``a.wav`` beside ``a.mp3`` gets
    ``a.wav.txt``), then numbered ``talks/a (2)``, ``talks/a (3)``, ... Lazy: the caller
    usually needs only the first.
    """
    rel = PurePosixPath(rel_path)
    stem = rel.stem if rel.suffix and rel.stem not in ("", ".", "..") else rel.name
    seen: set[str] = set()
    for name in itertools.chain((stem, rel.name), (f"{stem} ({n})" for n in itertools.count(2))):
        base = rel.with_name(fit_name(name, OUTPUT_SUFFIX_BYTES)).as_posix()
        if base not in seen:
            seen.add(base)
            yield base


def numbered(rel_path: str, n: int) -> str:
    """``a/b.mp3`` -> ``a/b (n).mp3``: a free name for a source moved into done/ or failed/."""
    rel = PurePosixPath(rel_path)
    stem = fit_name(rel.stem, len(f" ({n})") + len(os.fsencode(rel.suffix)))
    return rel.with_name(f"{stem} ({n}){rel.suffix}").as_posix()


# -- names in messages ---------------------------------------------------------------------
def printable(text: str) -> str:
    """``text`` with the bytes of a name that is not UTF-8 shown as ``\\xff`` escapes: fit for
    UTF-8 (reports, the journal's messages), and still telling the bytes apart."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- opening a source by handle ------------------------------------------------------------
#: What ``open`` says when there is no regular file to reach without following a link.
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_beneath(root: Path, rel_path: str) -> tuple[int, os.stat_result] | None:
    """Open the regular file at ``rel_path`` below ``root`` for reading (blocking).

    Walks from ``root``'s own descriptor one name at a time with ``O_NOFOLLOW`` on every one,
    so a folder swapped for a link (to anywhere) is not entered, and opens the file with
    ``O_NONBLOCK`` and checks it with ``fstat``, so a FIFO or a device never blocks the
    caller. Returns the descriptor (the caller closes it) and its ``fstat``, or None when no
    regular file is reachable there that way. Other errors (out of descriptors, no
    permission, ``root`` itself missing) are raised as ``OSError``.
    """
    walked = _folder_beneath(root, rel_path)
    if walked is None:
        return None
    folder, name = walked
    try:
        fd = _open_at(name, _FILE_FLAGS, folder)
    finally:
        os.close(folder)
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info


def stat_beneath(root: Path, rel_path: str) -> os.stat_result | None:
    """The ``lstat`` of the regular file at ``rel_path`` below ``root``, reached as
    :func:`open_beneath` reaches it but without opening it (blocking); None when there is
    none. Other errors are raised as ``OSError``."""
    walked = _folder_beneath(root, rel_path)
    if walked is None:
        return None
    folder, name = walked
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return None
        raise
    finally:
        os.close(folder)
    return info if stat.S_ISREG(info.st_mode) else None


def _folder_beneath(root: Path, rel_path: str) -> tuple[int, str] | None:
    """The descriptor of the folder that holds ``rel_path`` (the caller closes it), walked
    to from ``root`` without following a link, and the file's name in it; None when no
    such folder is there."""
    parts = PurePosixPath(rel_path).parts
    if not parts or parts[0] == "/" or any(part in (".", "..") for part in parts):
        return None
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = _open_at(part, _DIR_FLAGS, folder)
            if inner is None:
                os.close(folder)
                return None
            os.close(folder)
            folder = inner
    except BaseException:
        os.close(folder)
        raise
    return folder, parts[-1]


def _open_at(name: str, flags: int, folder: int) -> int | None:
    try:
        return os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return None
        raise


@dataclass(frozen=True)
class FileIdentity:
    """What tells one version of a file from another: size and mtime, and the inode when it
    is known (not across a restart: the journal keeps size and mtime only)."""

    size: int
    mtime_ns: int
    dev: int | None = None
    ino: int | None = None

    @classmethod
    def of(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino)

    def same_file(self, other: FileIdentity) -> bool:
        if (self.size, self.mtime_ns) != (other.size, other.mtime_ns):
            return False
        if None in (self.ino, other.ino):
            return True
        return (self.dev, self.ino) == (other.dev, other.ino)


class SourceFile:
    """A source as its job took it: what a backend reads (upload, audio header), by handle.

    While the job holds the descriptor it hashed, :meth:`open` hands out that same file;
    once it is released (after the submit: a job may wait hours for its transcript, and
    thousands may wait), :meth:`open` walks to the path again by handle and checks that it is
    still the file that was hashed.
    """

    def __init__(
        self, root: Path, rel_path: str, identity: FileIdentity, fd: int | None = None
    ) -> None:
        self.root = root
        self.rel_path = rel_path
        self.identity = identity
        self._fd = fd

    @property
    def held(self) -> bool:
        """True while the descriptor that was hashed is held."""
        return self._fd is not None

    def open(self) -> BinaryIO:
        """The source, open for reading from its start (blocking; the caller closes it).

        Raises :class:`~transcribed.errors.SourceChangedError` when the path no longer leads
        to the file that was hashed."""
        if self._fd is not None:
            fd = os.dup(self._fd)
            os.lseek(fd, 0, os.SEEK_SET)
            return open(fd, "rb")  # the caller closes it
        opened = open_beneath(self.root, self.rel_path)
        if opened is None:
            raise SourceChangedError("the source is no longer a regular file in the inbox")
        fd, info = opened
        if not self.identity.same_file(FileIdentity.of(info)):
            os.close(fd)
            raise SourceChangedError("the source is no longer the file that was hashed")
        return open(fd, "rb")  # the caller closes it

    def current(self) -> FileIdentity | None:
        """What is at the source's path now, reached by handle (blocking); None if nothing."""
        info = stat_beneath(self.root, self.rel_path)
        return FileIdentity.of(info) if info is not None else None

    def release(self) -> None:
        """Close the descriptor that was hashed, if still held; later opens walk again."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
