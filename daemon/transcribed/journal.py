"""The journal: one SQLite row per source file, the daemon's only shared state.

Every remote step is committed here before the next one starts (WAL), so a restart, even
after ``kill -9``, resumes a job where it stood instead of repeating a paid step. A commit
survives the process dying at once. The few that guard against paying twice (a submit about to
be sent) must also survive a power cut: :meth:`Journal.durable` fsyncs the WAL for them in a
thread, one fsync for every job that asked meanwhile (group commit), so neither the event loop
nor the other jobs wait for the disk. Calls are short synchronous statements on the event
loop's thread: they cannot be interrupted half-way by task cancellation.

Names are bytes: a path that is not UTF-8 (held in Python as ``str`` with surrogates, as
``os`` gives it) is stored as a BLOB of its bytes, and read back as the same ``str``; every
other path stays TEXT, so the two never meet in the unique index.

States (:class:`State`): ``discovered`` -> ``uploading`` -> ``submitted`` -> ``completed``
(outputs written) -> ``archived`` (source moved to done/), or ``failed``; :data:`TRANSITIONS`
lists every allowed step, and :meth:`Journal.set_state`, the only way to change a state, refuses
any other. ``source_moved`` is 0 while the source is still in the inbox; at most one such row
exists per inbox path.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from transcribed.errors import ConfigError, LocalIOError
from transcribed.groupsync import GroupSync, fsync_path
from transcribed.logs import redact


class State(StrEnum):
    """A job's state. A ``StrEnum``: the journal's column and ``status`` hold the plain names."""

    DISCOVERED = "discovered"
    """Settled in the inbox, not yet taken (or taken again: it changed)."""
    UPLOADING = "uploading"
    """Hashed and taken: its bytes go to the backend."""
    SUBMITTED = "submitted"
    """The service holds a transcript id for it (or one is reused)."""
    COMPLETED = "completed"
    """Outputs written; the source is still to be moved to done/."""
    ARCHIVED = "archived"
    """Done: outputs written, source in done/."""
    FAILED = "failed"
    """Failed: the source goes (or went) to failed/ with a report."""


#: Every allowed step from a state to the next. Anything else is a bug, refused by set_state.
#: Back to ``discovered``: the source changed after it was hashed (it is a new version, taken
#: again once it is quiet, and keeps nothing of the old one but its output name).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.DISCOVERED: frozenset({State.UPLOADING, State.SUBMITTED, State.FAILED}),
    State.UPLOADING: frozenset({State.SUBMITTED, State.COMPLETED, State.FAILED, State.DISCOVERED}),
    State.SUBMITTED: frozenset(
        # submitted -> submitted: a stuck job resubmitted; -> uploading: a reused transcript
        # that was deleted meanwhile, so this job pays for its own after all.
        {State.SUBMITTED, State.UPLOADING, State.COMPLETED, State.FAILED, State.DISCOVERED}
    ),
    State.COMPLETED: frozenset({State.ARCHIVED, State.FAILED, State.DISCOVERED}),
    State.ARCHIVED: frozenset(),
    # failed -> failed: a failure recorded again (a new reason) before its report is written.
    State.FAILED: frozenset({State.FAILED}),
}
STATES = tuple(State)
SCHEMA_VERSION = 1
MAX_NAME_TRIES = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,
    backend TEXT,
    upload_url TEXT,
    transcript_id TEXT,
    output_base TEXT,
    output_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    error_status INTEGER,
    source_moved INTEGER NOT NULL DEFAULT 0,
    final_path TEXT,
    audio_duration_s REAL,
    reused_from INTEGER,
    discovered_at REAL NOT NULL,
    upload_started_at REAL,
    uploaded_at REAL,
    submit_started_at REAL,
    submitted_at REAL,
    completed_at REAL,
    finished_at REAL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_live_path ON jobs(path) WHERE source_moved = 0;
-- The pool asks for live jobs in order after every job; archived rows pile up for months.
CREATE INDEX IF NOT EXISTS jobs_live ON jobs(id) WHERE source_moved = 0;
-- ...and when the next deferred one is due, which must not scan a large backlog.
CREATE INDEX IF NOT EXISTS jobs_live_due ON jobs(next_attempt_at) WHERE source_moved = 0;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_sha256 ON jobs(sha256);
CREATE INDEX IF NOT EXISTS jobs_output_key ON jobs(output_key);
CREATE INDEX IF NOT EXISTS jobs_transcript_id ON jobs(transcript_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class JobRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    state: State
    backend: str | None
    upload_url: str | None
    transcript_id: str | None
    output_base: str | None
    output_key: str | None
    attempts: int
    last_error: str | None
    error_status: int | None
    source_moved: int
    final_path: str | None
    audio_duration_s: float | None
    reused_from: int | None
    discovered_at: float
    upload_started_at: float | None
    uploaded_at: float | None
    submit_started_at: float | None
    submitted_at: float | None
    completed_at: float | None
    finished_at: float | None
    next_attempt_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = ", ".join(f.name for f in fields(JobRow))
_DAMAGED_HINT = (
    "restore it from a backup, or move it aside to start afresh (if the output folders "
    "already hold results, that first start needs --set daemon.accept_empty_journal=true)"
)
_SUBMIT_MARK = re.compile(r"^submit=(?P<job>\d+)@(?P<at>[0-9.e+-]+)", re.M)


_STATE_AT = [f.name for f in fields(JobRow)].index("state")


#: Columns that hold names on disk: kept byte for byte (see :func:`_stored`).
_NAME_COLUMNS = frozenset({"path", "output_base", "output_key", "final_path"})
_NAME_AT = [i for i, f in enumerate(fields(JobRow)) if f.name in _NAME_COLUMNS]


def _row(values: Sequence[Any]) -> JobRow:
    """A row as read (columns in ``_COLUMNS`` order) as a :class:`JobRow`."""
    fixed = list(values)
    fixed[_STATE_AT] = State(fixed[_STATE_AT])
    for at in _NAME_AT:
        if isinstance(fixed[at], bytes):
            fixed[at] = os.fsdecode(fixed[at])
    return JobRow(*fixed)


def _stored(column: str, value: Any) -> Any:
    """``value`` as SQLite can hold it: a name that is not UTF-8 as the BLOB of its bytes
    (lossless); other text with such bytes (a message naming that file) escaped."""
    if not isinstance(value, str):
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        if column in _NAME_COLUMNS:
            return os.fsencode(value)
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _name(value: str) -> str | bytes:
    """A path or output name as stored (see :func:`_stored`)."""
    stored: str | bytes = _stored("path", value)
    return stored


class IllegalTransitionError(ValueError):
    """A state change that :data:`TRANSITIONS` does not allow: a bug, never a file's fault."""

    def __init__(self, job_id: int, current: str, wanted: str) -> None:
        super().__init__(f"job {job_id}: no transition from {current!r} to {wanted!r}")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted


class JournalError(ConfigError):
    """The journal cannot be opened: corrupt, locked by another daemon, or not writable."""


class Journal:
    """Owns the SQLite connection. Open with ``with Journal(path) as journal``."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.path = state_dir / "journal.sqlite3"
        self._lock_path = state_dir / "transcribed.lock"
        self._readonly = readonly
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._depth = 0
        # Both set while the journal is open for writing: durable() needs them.
        self._sync_thread: ThreadPoolExecutor | None = None
        self._syncs: GroupSync | None = None
        self._wal_named = False
        # The last submit mark set, and the one last written to the lock file (see sync()).
        self._submit_mark: tuple[int, float] | None = None
        self._written_mark: tuple[int, float] | None = None
        self._note_len = 0

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> Journal:
        if self._readonly:
            if not self.path.exists():
                raise JournalError(f"no journal at {self.path}")
            uri = f"{self.path.as_uri()}?mode=ro"
            self._db = self._connect(uri, uri=True)
            return self
        self._take_lock()
        assert self._lock_fd is not None
        last_run = os.pread(self._lock_fd, 4096, 0).decode(errors="replace")
        self._wal_named = False  # a new WAL file each time: its name must be made durable again
        # The fsync every submit waits for gets a thread of its own: in the shared pool it could
        # queue behind a few long calls (hashing a large file, copying a source to another
        # filesystem, walking a big inbox), and every submit with it.
        self._sync_thread = ThreadPoolExecutor(1, thread_name_prefix="transcribed-journal")
        self._syncs = GroupSync(self.sync, self._sync_thread)
        try:
            self._db = self._connect(str(self.path))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_integrity(self._db)
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            self._check_last_submit(last_run)
            self._mark_running()
        except sqlite3.DatabaseError as exc:
            self.close()
            # OperationalError: locked, unreadable... not damaged; the others are damage.
            hint = "" if isinstance(exc, sqlite3.OperationalError) else f"; {_DAMAGED_HINT}"
            raise JournalError(f"cannot open journal {self.path}: {exc}{hint}") from exc
        except JournalError:
            self.close()
            raise
        return self

    def _check_integrity(self, db: sqlite3.Connection) -> None:
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise JournalError(
                f"journal {self.path} is corrupt ({check[0] if check else 'no answer'}); "
                f"{_DAMAGED_HINT}"
            )

    def _check_last_submit(self, last_run: str) -> None:
        """Refuse a journal that lost the last submit its previous run made durable.

        While the journal is open for writing, its lock file names the last job whose submit
        mark was fsynced (:meth:`sync`), and a clean close empties the file. After a crash,
        the commits since the last checkpoint live only in the WAL: a WAL deleted
        (``rm journal.sqlite3-*``), damaged, or left behind by a copy of the database file
        alone takes them away, and SQLite opens what is left without a word. The jobs
        submitted (paid for) among them would be submitted again. A WAL checkpointed and
        removed by a clean close, by any process, loses nothing, and passes."""
        match = _SUBMIT_MARK.search(last_run)
        if match is None:
            return
        job_id, marked_at = int(match["job"]), float(match["at"])
        row = self.db.execute(
            "SELECT updated_at, submit_started_at, transcript_id, state FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is not None and (
            row[0] >= marked_at
            or row[1] is not None
            or row[2] is not None
            or row[3] not in ("discovered", "uploading")
        ):
            return
        raise JournalError(
            f"journal {self.path} has lost commits: its last run stopped without closing it, "
            f"and job {job_id}'s submit, made durable then, is no longer in it (the "
            f"write-ahead log {self.path.name}-wal was removed, damaged, or not copied with "
            "the database). Jobs already paid for would be paid again. Put the -wal file "
            f"back; or, to accept the loss, delete {self._lock_path} and start again"
        )

    def _mark_running(self) -> None:
        """Record in the lock file that the journal is open (emptied again by a clean close)."""
        assert self._lock_fd is not None
        self._submit_mark = self._written_mark = None
        note = f"journal={self.path} pid={os.getpid()} open\n".encode()
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, note, 0)
        os.fsync(self._lock_fd)
        self._note_len = len(note)

    def _mark_closed(self) -> None:
        """Checkpoint every commit into the database, then clear the running mark."""
        if self._db is None or self._lock_fd is None or not self._note_len:
            return  # not marked in this run: what the last run left stays for the next start
        try:
            row = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return  # the mark stays: the next start checks the last submit is still there
        if row is not None and row[0] == 0:  # not busy: every frame is in the database
            os.ftruncate(self._lock_fd, 0)
        self._note_len = 0

    def has_history(self) -> bool:
        """True when the journal holds any job (or ever held one: ids are never reused)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        if row is not None and row[0]:
            return True
        return self.db.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None

    def _connect(self, target: str, *, uri: bool = False) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(target, uri=uri, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        db.row_factory = sqlite3.Row
        return db

    def _take_lock(self) -> None:
        try:
            fd = os.open(
                self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise JournalError(f"state_dir {self._lock_path.parent} is not usable: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"another transcribed is running with state_dir {self._lock_path.parent}"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._sync_thread is not None:
            self._sync_thread.shutdown()  # after the last durable(): no fsync is left running
            self._sync_thread = self._syncs = None
        self._mark_closed()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("journal is not open")
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One commit for every statement and write inside; nested uses join the outer one.

        Synchronous code only: a block held across an ``await`` would take in other jobs'
        writes."""
        db = self.db
        if self._depth:
            self._depth += 1
            try:
                yield db
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full, I/O)
                    db.execute("ROLLBACK")
                raise
            else:
                db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # The state_dir is full or failing: our own disk, not the file's fault.
            raise LocalIOError(f"cannot write the journal {self.path}: {exc}") from exc
        finally:
            self._depth = 0

    # -- durability ------------------------------------------------------------------------
    def sync(self) -> None:
        """fsync every commit made so far, so that it survives a power cut.

        A commit is in the WAL file when it returns, but with ``synchronous=NORMAL`` it only
        reaches the disk at the next checkpoint; fsyncing the WAL does for all of them what
        ``synchronous=FULL`` does for one. Without a WAL file every commit has already been
        checkpointed (and synced) into the database. Touches no connection: thread-safe.
        """
        mark = self._submit_mark  # taken before the fsync: its commit is covered by it
        try:
            fsync_path(self.path.with_name(self.path.name + "-wal"))
        except FileNotFoundError:
            return
        if mark is not None and mark != self._written_mark and self._lock_fd is not None:
            line = f"submit={mark[0]}@{mark[1]!r}\n".encode().ljust(64)
            os.pwrite(self._lock_fd, line, self._note_len)
            self._written_mark = mark
        if not self._wal_named:
            # The WAL is a new file each time the journal opens: make its name durable too.
            fsync_path(self.path.parent)
            self._wal_named = True

    async def durable(self) -> None:
        """Return once every commit made before this call is on disk (see :meth:`sync`).

        Callers that ask while an fsync runs share the next one; the fsync runs in a thread.
        Raises ``LocalIOError`` when the disk refuses.
        """
        if self._depth:
            raise RuntimeError("durable() inside a transaction: nothing of it is committed yet")
        if self._syncs is None:
            raise RuntimeError("durable() needs a journal open for writing")
        try:
            await self._syncs.wait()
        except OSError as exc:
            raise LocalIOError(f"cannot sync the journal: {exc.strerror or exc}") from exc

    # -- queries ---------------------------------------------------------------------------
    def get(self, job_id: int) -> JobRow:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608 - column list is ours
        if row is None:
            raise KeyError(job_id)
        return _row(row)

    def live_paths(self) -> set[str]:
        return {
            os.fsdecode(r[0]) if isinstance(r[0], bytes) else r[0]
            for r in self.db.execute("SELECT path FROM jobs WHERE source_moved = 0")
        }

    def claimable(self, limit: int, exclude: set[int], now: float | None = None) -> list[JobRow]:
        """Live jobs that still need work, oldest first, skipping those already running."""
        now = time.time() if now is None else now
        # Ids first: with hundreds of jobs running, whole rows for all of them would be read
        # (and thrown away) every time one finishes.
        ids = [
            job_id
            for (job_id,) in self.db.execute(
                "SELECT id FROM jobs WHERE source_moved = 0 AND next_attempt_at <= ? "
                "ORDER BY id LIMIT ?",
                (now, limit + len(exclude)),
            )
            if job_id not in exclude
        ][:limit]
        return self.rows(ids)

    def rows(self, ids: Iterable[int]) -> list[JobRow]:
        """These jobs' rows in id order (unknown ids are left out), a few hundred per
        statement: a backlog's start claims hundreds at once."""
        ids = sorted(ids)
        found: list[JobRow] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found += [
                _row(row)
                for row in self.db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY id",  # noqa: S608 - ours
                    chunk,
                )
            ]
        return found

    def next_wakeup(self, now: float | None = None) -> float | None:
        """When the next live job that is not due yet (a deferral, a settle wait) will be."""
        now = time.time() if now is None else now
        row = self.db.execute(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE source_moved = 0 AND next_attempt_at > ?",
            (now,),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def pending_count(self) -> int:
        return int(
            self.db.execute("SELECT COUNT(*) FROM jobs WHERE source_moved = 0").fetchone()[0]
        )

    def oldest_waiting_at(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(discovered_at) FROM jobs WHERE state = 'discovered' AND source_moved = 0"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in State}
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def recent(self, limit: int = 20) -> list[JobRow]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs ORDER BY updated_at DESC, id DESC LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        return [_row(r) for r in rows]

    def find_same_content(self, sha256: str, backend: str, job_id: int) -> JobRow | None:
        """Another job with these bytes: one whose transcript can be reused (preferred), or one
        still uploading them, which this job should wait for rather than pay again."""
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE sha256 = ? AND backend = ? AND id != ? AND ("  # noqa: S608
            "(transcript_id IS NOT NULL AND state IN ('submitted', 'completed', 'archived')) "
            "OR (state = 'uploading' AND source_moved = 0)) "
            "ORDER BY (transcript_id IS NOT NULL) DESC, (state = 'archived') DESC, id DESC LIMIT 1",
            (sha256, backend, job_id),
        ).fetchone()
        return _row(row) if row else None

    def has_transcript(self, transcript_id: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM jobs WHERE transcript_id = ? LIMIT 1", (transcript_id,)
        ).fetchone()
        return row is not None

    def secret(self, name: str) -> str:
        """A random secret kept in the journal, made on first use (e.g. for webhooks), so
        that notifications for jobs submitted before a restart are still accepted."""
        key = f"secret:{name}"
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
            value = secrets.token_urlsafe(32)
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, value))
            return value

    # -- writes ----------------------------------------------------------------------------
    def discover_many(self, files: list[tuple[str, int, int]]) -> dict[str, int]:
        """``discover`` for many ``(path, size, mtime_ns)`` at once, in one transaction.

        Returns the paths that became new jobs, with their ids."""
        now = time.time()
        new_ids: dict[str, int] = {}
        with self.transaction() as db:
            for path, size, mtime_ns in files:
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs(path, size, mtime_ns, state, discovered_at, "
                    "updated_at) VALUES (?, ?, ?, 'discovered', ?, ?)",
                    (_name(path), size, mtime_ns, now, now),
                )
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    new_ids[path] = cur.lastrowid
        return new_ids

    def update(self, job_id: int, **values: Any) -> float:
        """Set columns of one job, its state excepted (:meth:`set_state`); returns the
        ``updated_at`` it wrote."""
        if "state" in values:
            raise KeyError("state: use set_state, which checks the transition")
        return self._write(job_id, values, None)

    def set_state(self, job_id: int, state: State | str, **values: Any) -> float:
        """Move a job to ``state`` (setting ``values`` in the same statement), if
        :data:`TRANSITIONS` allows it from the state it is in; else
        :class:`IllegalTransitionError`, and nothing is written."""
        wanted = State(state)  # ValueError for a name that is no state
        return self._write(job_id, {"state": wanted.value, **values}, wanted)

    def _write(self, job_id: int, values: dict[str, Any], state: State | None) -> float:
        for key in values:
            if key not in JobRow.__dataclass_fields__ or key == "id":
                raise KeyError(key)
        if isinstance(values.get("last_error"), str):  # error texts may echo the API key
            values["last_error"] = redact(values["last_error"])
        values = {key: _stored(key, value) for key, value in values.items()}
        values["updated_at"] = now = time.time()
        columns = ", ".join(f"{key} = ?" for key in values)
        where = "id = ?"
        params: list[Any] = [job_id]
        if state is not None:
            # The check is part of the statement: no read before it, and no other write
            # between the check and the change.
            sources = _SOURCES[state]
            where += f" AND state IN ({', '.join('?' * len(sources))})"
            params += sources
        # One statement is its own transaction (autocommit), or joins the caller's: either way
        # one call into SQLite instead of three.
        cur = self.db.execute(
            f"UPDATE jobs SET {columns} WHERE {where}",  # noqa: S608 - names are JobRow's
            (*values.values(), *params),
        )
        if state is not None and cur.rowcount == 0:
            current = self.db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if current is None:
                raise KeyError(job_id)
            raise IllegalTransitionError(job_id, str(current[0]), state.value)
        if values.get("submit_started_at") is not None:
            self._submit_mark = (job_id, now)  # written to the lock file by the next sync()
        return now

    def free_output_base(
        self, job_id: int, candidates: Iterable[str], exists: Callable[[str], bool]
    ) -> str:
        """The first candidate that no other job owns and ``exists(base)`` says is free.

        Reads only: the caller records it (:func:`output_name`) in the statement that takes
        the job, so that nothing else can claim it in between (all writes are this thread's).
        """
        for base in itertools.islice(candidates, MAX_NAME_TRIES):
            taken = self.db.execute(
                "SELECT 1 FROM jobs WHERE output_key = ? AND id != ? LIMIT 1",
                (_name(output_name(base)["output_key"]), job_id),
            ).fetchone()
            if taken is None and not exists(base):
                return base
        raise RuntimeError(f"no free output name for job {job_id}")

    def reserve_output_base(
        self, job_id: int, candidates: Iterable[str], exists: Callable[[str], bool]
    ) -> str:
        """The job's output name: the one it has, or a free one, recorded now."""
        with self.transaction() as db:
            row = db.execute("SELECT output_base FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row[0]:
                return str(row[0])
            base = self.free_output_base(job_id, candidates, exists)
            self.update(job_id, **output_name(base))
            return base


#: For each state, the states a job may come to it from.
_SOURCES: dict[State, list[str]] = {
    wanted: [old.value for old, allowed in TRANSITIONS.items() if wanted in allowed]
    for wanted in State
}


def output_name(base: str) -> dict[str, str]:
    """The columns that record ``base`` as a job's output name. Names are compared
    case-folded: on a case-insensitive share "Talk" and "talk" are one."""
    return {"output_base": base, "output_key": base.casefold()}
