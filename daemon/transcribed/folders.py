"""The daemon's folders: checked and created at start-up, before anything reads or writes them.

The five folders are five separate trees. The check runs on the resolved paths (``..``,
symlinks, bind mounts seen through a link), because a layout in which the daemon writes where
it reads, or moves back what it wrote, loops and pays for the same file again and again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import socket
import stat
import typing
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from transcribed.config import OUTPUT_FORMAT, Settings
from transcribed.errors import ConfigError
from transcribed.journal import Journal
from transcribed.logs import get_logger
from transcribed.paths import TEMP_PREFIX

log = get_logger("transcribed.folders")

FOLDER_KEYS = ("inbox", "outbox", "done", "failed", "state_dir")
#: Held (flock) in the inbox for the daemon's life. A dotfile: never taken as input.
INBOX_LOCK_NAME = ".transcribed.lock"


def prepare_folders(settings: Settings) -> dict[str, Path]:
    """Check the inbox and create the other folders; ``ConfigError`` names the bad one.

    Nothing is created before the layout is known to be sound: a folder that would be made
    inside the inbox is refused before it exists."""
    folders = {name: Path(getattr(settings, name)).expanduser().absolute() for name in FOLDER_KEYS}
    inbox = folders["inbox"]
    if not inbox.is_dir():
        raise ConfigError(f"inbox {inbox} does not exist or is not a folder")
    if not os.access(inbox, os.R_OK | os.X_OK | os.W_OK):
        raise ConfigError(f"inbox {inbox} is not readable and writable by this user")
    check_layout(folders)
    for name in ("outbox", "done", "failed", "state_dir"):
        folder = folders[name]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{name} {folder} cannot be created: {exc.strerror}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{name} {folder} is not writable by this user")
    check_layout(folders)  # again: a folder just made may be reached through a link made meanwhile
    return folders


def resolve(path: Path) -> Path:
    """``path`` with every symlink and ``..`` resolved, also when its tail does not exist yet."""
    return Path(os.path.realpath(path))


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_layout(folders: dict[str, Path]) -> None:
    """Refuse any two folders where one is, or is inside, the other, after resolving both.

    The daemon reads the inbox and, for ``retry``, failed/; it writes the outbox, done/,
    failed/ and state_dir. Any nesting among them lets one of its writes become one of its
    inputs (done/ inside the inbox takes every archived file again; failed/ inside the outbox
    sends transcripts back through ``retry``), so none is allowed."""
    real = {name: resolve(folders[name]) for name in FOLDER_KEYS}
    for first, second in itertools.combinations(FOLDER_KEYS, 2):
        a, b = real[first], real[second]
        if _contains(a, b) or _contains(b, a):
            how = "is the same folder as" if a == b else "is inside"
            inner, outer = (second, first) if _contains(a, b) else (first, second)
            raise ConfigError(
                f"{inner} {folders[inner]} (resolved: {real[inner]}) {how} "
                f"{outer} {folders[outer]} (resolved: {real[outer]}); "
                "the inbox, outbox, done, failed and state_dir must be separate folders"
            )


class InboxLock:
    """One inbox, one daemon: an exclusive ``flock`` on a file in the inbox, naming the journal.

    The state_dir's own lock stops two daemons on one journal; this one stops two daemons with
    different journals from taking (and paying for) the same files. ``with InboxLock(...)``
    takes it or raises ``ConfigError`` naming the journal of the daemon that holds it."""

    def __init__(self, inbox: Path, journal_path: Path) -> None:
        self.path = inbox / INBOX_LOCK_NAME
        self.journal_path = journal_path
        self._fd: int | None = None

    def acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open the inbox lock {self.path}: {exc.strerror}") from exc
        try:
            self._lock(fd)
            note = f"journal={self.journal_path} pid={os.getpid()} host={socket.gethostname()}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _lock(self, fd: int) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"the inbox lock {self.path} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"another transcribed already owns the inbox {self.path.parent} ({holder}); "
                "one inbox is served by one daemon and one journal"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise ConfigError(f"cannot lock the inbox {self.path}: {exc.strerror}") from exc
            # A file system without locks (NFSv3 without lockd, some FUSE file systems): run,
            # but say that a second daemon on this inbox would not be stopped.
            log.warning("inbox_lock_unsupported", path=str(self.path), error=exc.strerror)

    def release(self) -> None:
        # The file stays: removing it would let a daemon that opened it a moment before lock
        # the removed file while a third one creates and locks a new one.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InboxLock:
        self.acquire()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


#: What a transcript in the outbox can be named (any ``output.formats``).
RESULT_SUFFIXES = tuple(f".{fmt}" for fmt in typing.get_args(OUTPUT_FORMAT))


def _holds_results(folder: Path, suffixes: tuple[str, ...] = ("",)) -> bool:
    """True when ``folder`` holds a file that is not hidden and ends in one of ``suffixes``
    (stops at the first)."""
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not name.startswith(".") and name.endswith(suffixes) for name in filenames):
            return True
    return False


def check_history(
    journal: Journal, folders: dict[str, Path], *, accept_empty: bool = False
) -> None:
    """Refuse an empty journal beside folders that already hold results: any source in done/
    or failed/, a transcript in the outbox.

    A journal with no jobs next to a full done/ or outbox/ is a lost or replaced journal (a
    zero-length file, a new state_dir, a damaged one moved aside): every file it had recorded
    would be taken again, and paid for again, once it is back in the inbox."""
    if accept_empty or journal.has_history():
        return
    busy = [
        name
        for name, suffixes in (("outbox", RESULT_SUFFIXES), ("done", ("",)), ("failed", ("",)))
        if _holds_results(folders[name], suffixes)
    ]
    if not busy:
        return
    named = ", ".join(f"{name} ({folders[name]})" for name in busy)
    raise ConfigError(
        f"the journal {journal.path} holds no jobs, but {named} already hold results: the "
        "journal that recorded them is lost or was replaced, and files it knew would be "
        "transcribed and paid for again. Restore that journal (or point state_dir at it); to "
        f"start afresh on purpose, move the contents of {named} aside, or start once with "
        "--set daemon.accept_empty_journal=true",
        part="journal",
    )


@contextlib.contextmanager
def own_folders(
    folders: dict[str, Path], journal: Journal, *, accept_empty_journal: bool = False
) -> Iterator[Journal]:
    """Take the inbox lock, open ``journal`` (its state_dir lock), check it against the
    output folders, then clear stale temp files: all of it only once both locks are held, so a
    refused second daemon touches nothing of the first one's."""
    with InboxLock(folders["inbox"], journal.path), journal:
        check_history(journal, folders, accept_empty=accept_empty_journal)
        remove_stale_temp_files(folders["outbox"], folders["failed"], folders["done"])
        yield journal


def remove_stale_temp_files(*roots: Path) -> None:
    """Temp files left by a crash mid-write are never visible results; clear them."""
    for root in roots:
        # By descriptor: a tree deeper than PATH_MAX allows by name is still walked, and no
        # link is followed out of the folder.
        for _dirpath, _dirnames, filenames, dir_fd in os.fwalk(root):
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dir_fd)
