"""The watcher: finds inbox files and hands each one to the journal once it has settled.

A start-up scan, then watchfiles events (inotify, or polling for network shares), plus a
periodic rescan for anything the events missed. A file is taken only when its size and mtime
have stayed the same for ``settle_s``; hidden files, temp/partial downloads, symlinks and
anything that is not a regular file are ignored, and symlinked folders are never entered.

The intake never stops quietly. An inbox that disappears or cannot be read is logged once as
``inbox_unavailable`` (and reported by :meth:`Watcher.health`); the watcher waits for it, watches
it again as soon as it is back and logs ``inbox_available``. When the system's limit on inotify
watches is reached it falls back to polling, with a warning naming the sysctl that raises the
limit. Anything else ends :meth:`Watcher.watch` with the error, for the service to act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transcribed.config import WatchSettings
from transcribed.errors import LocalIOError
from transcribed.journal import Journal
from transcribed.logs import get_logger
from transcribed.paths import is_candidate_name, is_hidden_dir, safe_lstat

log = get_logger("transcribed.watcher")

#: How often a missing inbox is looked for, and an existing one checked between events.
INBOX_CHECK_S = 0.5
#: What watchfiles (the notify crate) says when inotify's watch limit is reached.
WATCH_LIMIT_TEXT = "watch limit"
WATCH_LIMIT_HINT = (
    "raise the limit with: sysctl fs.inotify.max_user_watches=524288 "
    "(or set watch.force_polling = true)"
)


def _is_watch_limit(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and WATCH_LIMIT_TEXT in str(exc).lower()


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    since: float  # monotonic time at which this (size, mtime) was first seen


class Watcher:
    """Feeds settled inbox files into the journal; ``on_new`` is called after each batch."""

    def __init__(
        self,
        inbox: Path,
        settings: WatchSettings,
        journal: Journal,
        on_new: Callable[[], None],
    ) -> None:
        self.inbox = inbox
        self.settings = settings
        self._journal = journal
        self._on_new = on_new
        self._candidates: dict[str, _Candidate] = {}
        self._changed = asyncio.Event()
        self._scans: set[asyncio.Task[None]] = set()
        self.running = False
        #: Why the inbox cannot be used now (None while it can); /readyz reports it.
        self.inbox_problem: str | None = None
        #: Why settled files cannot be recorded now (None while they can).
        self.journal_problem: str | None = None
        self._polling = settings.force_polling
        self._unreadable: set[str] = set()

    def health(self) -> str:
        """``"ok"``, or what keeps new files from being taken."""
        if self.inbox_problem is not None:
            return f"inbox unavailable: {self.inbox_problem}"
        if self.journal_problem is not None:
            return f"cannot record new files: {self.journal_problem}"
        return "ok" if self.running else "not running"

    @property
    def unsettled(self) -> int:
        """Files seen but not yet handed over (still being written, or waiting to settle)."""
        return len(self._candidates)

    # -- discovery -------------------------------------------------------------------------
    def _walk(self, top: Path, known: set[str]) -> dict[str, os.stat_result]:
        """Every candidate regular file below ``top`` (runs in a thread)."""
        found: dict[str, os.stat_result] = {}
        unreadable: set[str] = set()

        def note_error(exc: OSError) -> None:
            unreadable.add(str(exc.filename))

        for dirpath, dirnames, filenames in os.walk(top, onerror=note_error, followlinks=False):
            dirnames[:] = [d for d in dirnames if not is_hidden_dir(d)]
            base = Path(dirpath)
            for name in filenames:
                path = base / name
                rel = path.relative_to(self.inbox).as_posix()
                if rel in known or not is_candidate_name(rel, self.settings.patterns):
                    continue
                info = safe_lstat(path)
                if info is not None:
                    found[rel] = info
        unreadable.discard(str(self.inbox))  # the inbox itself: _inbox_state reports it
        for folder in unreadable - self._unreadable:
            log.warning("folder_unreadable", folder=folder)
        self._unreadable = unreadable
        return found

    async def scan(self, top: Path | None = None) -> None:
        known = self._journal.live_paths()
        found = await asyncio.to_thread(self._walk, top or self.inbox, known)
        now = time.monotonic()
        for rel, info in found.items():
            self._note(rel, info, now)
        self._changed.set()

    def _note(self, rel: str, info: os.stat_result, now: float) -> None:
        current = self._candidates.get(rel)
        if current is None or (current.size, current.mtime_ns) != (info.st_size, info.st_mtime_ns):
            self._candidates[rel] = _Candidate(info.st_size, info.st_mtime_ns, now)

    def _relative(self, raw_path: str) -> str | None:
        try:
            return Path(raw_path).relative_to(self.inbox).as_posix()
        except ValueError:
            return None

    async def _look_at(self, rels: list[str]) -> None:
        """What changed, in one batch of ``lstat`` calls off the event loop: files become
        candidates, and a folder moved in is scanned (its files get no events of their own)."""

        def kinds() -> list[tuple[str, os.stat_result | None, bool]]:
            out = []
            for rel in rels:
                path = self.inbox / rel
                info = safe_lstat(path)
                out.append((rel, info, info is None and path.is_dir() and not path.is_symlink()))
            return out

        now = time.monotonic()
        for rel, info, is_folder in await asyncio.to_thread(kinds):
            if is_folder:
                if not any(is_hidden_dir(part) for part in PurePosixPath(rel).parts):
                    task = asyncio.get_running_loop().create_task(self.scan(self.inbox / rel))
                    self._scans.add(task)
                    task.add_done_callback(self._scans.discard)
            elif info is not None and is_candidate_name(rel, self.settings.patterns):
                self._note(rel, info, now)
                self._changed.set()

    async def settle(self) -> int:
        """Hand every settled candidate to the journal in one transaction; returns how many.

        The candidates are looked at again in one batch off the event loop: on a network share
        a ``stat`` can hang, and the loop must not hang with it."""
        if not self._candidates:
            return 0
        rels = list(self._candidates)
        infos = await asyncio.to_thread(lambda: [safe_lstat(self.inbox / rel) for rel in rels])
        now_mono, now_wall = time.monotonic(), time.time()
        settle_s = self.settings.settle_s
        ready: list[tuple[str, int, int]] = []
        for rel, info in zip(rels, infos, strict=True):
            cand = self._candidates.get(rel)
            if cand is None:  # deleted meanwhile (an event)
                continue
            if info is None:
                del self._candidates[rel]
                continue
            if (info.st_size, info.st_mtime_ns) != (cand.size, cand.mtime_ns):
                self._candidates[rel] = _Candidate(info.st_size, info.st_mtime_ns, now_mono)
                continue
            quiet_s = now_mono - cand.since
            if not self._polling:
                # mtime is when the last write landed; a network share's clock may differ.
                quiet_s = max(quiet_s, now_wall - info.st_mtime_ns / 1e9)
            if quiet_s >= settle_s:
                ready.append((rel, info.st_size, info.st_mtime_ns))
        if not ready:
            return 0
        try:
            new_ids = self._journal.discover_many(ready)
        except LocalIOError as exc:
            # The state_dir is full or failing: keep the files as candidates and try again at
            # the next tick; /readyz says why meanwhile.
            if self.journal_problem is None:
                log.error("journal_write_failed", error=str(exc), files=len(ready))
            self.journal_problem = str(exc)
            return 0
        if self.journal_problem is not None:
            log.info("journal_write_recovered")
            self.journal_problem = None
        for rel, _, _ in ready:
            self._candidates.pop(rel, None)
        for rel, size, _ in ready:
            if rel in new_ids:  # a file already being worked on is not news
                log.info("file_detected", path=rel, size=size, job_id=new_ids[rel])
        if new_ids:
            self._on_new()
        return len(new_ids)

    # -- loops -----------------------------------------------------------------------------
    async def settle_loop(self, stop: asyncio.Event) -> None:
        tick_s = min(0.5, max(0.05, self.settings.settle_s / 4))
        while not stop.is_set():
            if not self._candidates:
                self._changed.clear()
                await _wait_any(stop, self._changed)
                continue
            await self.settle()
            await _wait_any(stop, timeout=tick_s)

    async def rescan_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait_any(stop, timeout=self.settings.rescan_interval_s)
            if not stop.is_set() and self.inbox_problem is None:
                await self.scan()

    async def watch(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set: events, a scan each time the watch (re)starts, rescans
        and settling. Raises what it cannot recover from."""
        self.running = True
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.settle_loop(stop))
                group.create_task(self.rescan_loop(stop))
                await self._follow(stop, ready)
        except* Exception as failed:  # noqa: BLE001 - re-raised at once, unwrapped from the group
            # One loop failed and the others were cancelled: report that one error.
            raise failed.exceptions[0] from None
        finally:
            self.running = False

    async def _follow(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        """Watch the inbox while it exists; wait for it while it does not."""
        while not stop.is_set():
            await self._until_available(stop)
            if stop.is_set():
                return
            events = asyncio.create_task(self._events(stop, ready))
            try:
                # At once, without waiting for the watch to be in place; _events scans again
                # once it is. A file seen by both is noted twice, which is harmless.
                await self.scan()
                await events
            except (RuntimeError, ExceptionGroup) as exc:
                # watchfiles gives up on a batch that names a path that is not UTF-8
                # (WatchfilesRustInternalError, "Unable to decode path"): watch again, and
                # walk the inbox for what that batch named (a walk keeps such names).
                if not _undecodable_path(exc):
                    raise
                log.warning("watch_events_lost", reason="a path that is not UTF-8")
                continue
            except OSError as exc:
                if not self._polling and _is_watch_limit(exc):
                    self._polling = True
                    log.warning(
                        "watch_limit_reached",
                        error=str(exc),
                        fallback="polling",
                        hint=WATCH_LIMIT_HINT,
                    )
                    continue
                if await self._inbox_state() is None:
                    raise  # the inbox is fine: this is a real failure
                # The inbox went away under the watch: wait for it to come back.
            finally:
                if not events.done():
                    events.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await events
                elif not events.cancelled():
                    events.exception()  # handled above, or lost to the error that ended us

    async def _inbox_state(self) -> str | None:
        """What is wrong with the inbox now, or None when it can be watched."""

        def check() -> str | None:
            try:
                info = self.inbox.stat()
            except OSError as exc:
                return exc.strerror or str(exc)
            if not stat.S_ISDIR(info.st_mode):
                return "not a folder"
            if not os.access(self.inbox, os.R_OK | os.X_OK):
                return "not readable by this user"
            return None

        return await asyncio.to_thread(check)

    async def _until_available(self, stop: asyncio.Event) -> None:
        """Return once the inbox can be watched (at once when it can), logging the change."""
        while not stop.is_set():
            problem = await self._inbox_state()
            if problem is None:
                if self.inbox_problem is not None:
                    log.info("inbox_available", inbox=str(self.inbox))
                    self.inbox_problem = None
                return
            if self.inbox_problem is None:
                log.error("inbox_unavailable", inbox=str(self.inbox), reason=problem)
                self._candidates.clear()
            self.inbox_problem = problem
            await _wait_any(stop, timeout=INBOX_CHECK_S)

    async def _events(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        """Follow watchfiles' events until ``stop``, or until the inbox is gone (returns)."""
        # Here, not at the top: `run --once` only scans, and need not load it.
        from watchfiles import Change, awatch

        inbox = str(self.inbox)
        started = False
        last_check = time.monotonic()
        async for changes in awatch(
            self.inbox,
            stop_event=stop,
            force_polling=self._polling,
            poll_delay_ms=self.settings.poll_delay_ms,
            debounce=200,
            step=50,
            rust_timeout=1000,
            yield_on_timeout=True,
            recursive=True,
        ):
            if not started:
                started = True
                # The watch is certainly in place by its first answer; a file written between
                # the first scan and then got no event: look once more.
                await self.scan()
                log.info("watcher_started", force_polling=self._polling)
                if ready is not None:
                    ready.set()
            lost = False
            touched: list[str] = []
            for change, raw_path in changes:
                if raw_path == inbox and change == Change.deleted:
                    lost = True
                elif (rel := self._relative(raw_path)) is None:
                    continue
                elif change == Change.deleted:
                    self._candidates.pop(rel, None)
                else:
                    touched.append(rel)
            if touched:
                await self._look_at(touched)
            # An inbox removed (or re-mounted) under the watch may send no event at all.
            now = time.monotonic()
            if lost or now - last_check >= INBOX_CHECK_S:
                last_check = now
                if await self._inbox_state() is not None:
                    return

    async def drain_once(self, stop: asyncio.Event) -> None:
        """For ``--once``: scan, then settle until every file seen has been handed over."""
        self.running = True
        try:
            problem = await self._inbox_state()
            if problem is not None:
                log.error("inbox_unavailable", inbox=str(self.inbox), reason=problem)
                raise OSError(f"inbox {self.inbox} is unavailable: {problem}")
            await self.scan()
            tick_s = min(0.5, max(0.05, self.settings.settle_s / 4))
            while self._candidates and not stop.is_set():
                await self.settle()
                if self._candidates:
                    await _wait_any(stop, timeout=tick_s)
        finally:
            self.running = False


def _undecodable_path(exc: Exception) -> bool:
    """True when ``exc`` is (only) watchfiles failing to name a path that is not UTF-8."""

    def undecodable(error: BaseException) -> bool:
        return isinstance(error, RuntimeError) and "decode path" in str(error)

    if isinstance(exc, ExceptionGroup):
        found, rest = exc.split(undecodable)
        return found is not None and rest is None
    return undecodable(exc)


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:  # noqa: ASYNC109 - waits on several events, which asyncio.timeout cannot express
    """Wait until any event is set, or the timeout passes."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
