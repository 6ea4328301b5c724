"""The watcher: finds inbox files and hands each one to the journal once it has settled.

A start-up scan, then watchfiles events (inotify, or polling for network shares), plus a
periodic rescan for anything the events missed. A file is taken only when its size and mtime
have stayed the same for ``settle_s``; hidden files, temp/partial downloads, symlinks and
anything that is not a regular file are ignored, and symlinked folders are never entered.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transcribed.config import WatchSettings
from transcribed.journal import Journal
from transcribed.logs import get_logger
from transcribed.paths import is_candidate_name, is_hidden_dir, safe_lstat

log = get_logger("transcribed.watcher")


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
        on_new: Callable[[int], None],
    ) -> None:
        self.inbox = inbox
        self.settings = settings
        self._journal = journal
        self._on_new = on_new
        self._candidates: dict[str, _Candidate] = {}
        self._changed = asyncio.Event()
        self._scans: set[asyncio.Task[None]] = set()
        self.running = False

    @property
    def unsettled(self) -> int:
        """Files seen but not yet handed over (still being written, or waiting to settle)."""
        return len(self._candidates)

    # -- discovery -------------------------------------------------------------------------
    def _walk(self, top: Path, known: set[str]) -> dict[str, os.stat_result]:
        """Every candidate regular file below ``top`` (runs in a thread)."""
        found: dict[str, os.stat_result] = {}
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
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

    def _event(self, deleted: bool, raw_path: str) -> None:
        path = Path(raw_path)
        try:
            rel = path.relative_to(self.inbox).as_posix()
        except ValueError:
            return
        if deleted:
            self._candidates.pop(rel, None)
            return
        info = safe_lstat(path)
        if info is None:
            if (
                path.is_dir()
                and not path.is_symlink()
                and not any(part.startswith(".") for part in Path(rel).parts)
            ):
                # A folder moved in brings files that get no events of their own.
                task = asyncio.get_running_loop().create_task(self.scan(path))
                self._scans.add(task)
                task.add_done_callback(self._scans.discard)
            return
        if is_candidate_name(rel, self.settings.patterns):
            self._note(rel, info, time.monotonic())
            self._changed.set()

    def settle(self) -> int:
        """Hand every settled candidate to the journal in one transaction; returns how many."""
        now_mono, now_wall = time.monotonic(), time.time()
        settle_s = self.settings.settle_s
        ready: list[tuple[str, int, int]] = []
        for rel, cand in list(self._candidates.items()):
            info = safe_lstat(self.inbox / rel)
            if info is None:
                del self._candidates[rel]
                continue
            if (info.st_size, info.st_mtime_ns) != (cand.size, cand.mtime_ns):
                self._candidates[rel] = _Candidate(info.st_size, info.st_mtime_ns, now_mono)
                continue
            quiet_s = now_mono - cand.since
            if not self.settings.force_polling:
                # mtime is when the last write landed; a network share's clock may differ.
                quiet_s = max(quiet_s, now_wall - info.st_mtime_ns / 1e9)
            if quiet_s >= settle_s:
                ready.append((rel, info.st_size, info.st_mtime_ns))
                del self._candidates[rel]
        if not ready:
            return 0
        new_ids = self._journal.discover_many(ready)
        for rel, size, _ in ready:
            if rel in new_ids:  # a file already being worked on is not news
                log.info("file_detected", path=rel, size=size, job_id=new_ids[rel])
        if new_ids:
            self._on_new(len(new_ids))
        return len(new_ids)

    # -- loops -----------------------------------------------------------------------------
    async def settle_loop(self, stop: asyncio.Event) -> None:
        tick_s = min(0.5, max(0.05, self.settings.settle_s / 4))
        while not stop.is_set():
            if not self._candidates:
                self._changed.clear()
                await _wait_any(stop, self._changed)
                continue
            self.settle()
            await _wait_any(stop, timeout=tick_s)

    async def rescan_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait_any(stop, timeout=self.settings.rescan_interval_s)
            if not stop.is_set():
                await self.scan()

    async def watch(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set: start-up scan, then events, rescans and settling."""
        self.running = True
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._events(stop, ready))
                await self.scan()
                group.create_task(self.settle_loop(stop))
                group.create_task(self.rescan_loop(stop))
        finally:
            self.running = False

    async def _events(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        # Here, not at the top: `run --once` only scans, and need not load it.
        from watchfiles import Change, awatch

        started = False
        while not stop.is_set():
            try:
                async for changes in awatch(
                    self.inbox,
                    stop_event=stop,
                    force_polling=self.settings.force_polling,
                    poll_delay_ms=self.settings.poll_delay_ms,
                    debounce=200,
                    step=50,
                    rust_timeout=1000,
                    yield_on_timeout=True,
                    recursive=True,
                ):
                    if not started:
                        started = True
                        log.info("watcher_started", force_polling=self.settings.force_polling)
                        if ready is not None:
                            ready.set()
                    for change, raw_path in changes:
                        self._event(change == Change.deleted, raw_path)
            except (RuntimeError, ExceptionGroup) as exc:
                # watchfiles gives up on a batch that names a path that is not UTF-8
                # (WatchfilesRustInternalError, "Unable to decode path"): watch again, and
                # walk the inbox for what that batch named (a walk keeps such names).
                if not _undecodable_path(exc):
                    raise
                log.warning("watch_events_lost", reason="a path that is not UTF-8")
                await self.scan()

    async def drain_once(self, stop: asyncio.Event) -> None:
        """For ``--once``: scan, then settle until every file seen has been handed over."""
        self.running = True
        try:
            await self.scan()
            tick_s = min(0.5, max(0.05, self.settings.settle_s / 4))
            while self._candidates and not stop.is_set():
                self.settle()
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
