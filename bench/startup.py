"""Backlog start-up: the daemon started on an inbox that already holds 10,000 files.

The files (small, MP3-looking, an hour old so they count as settled) are created first; then the
daemon starts in daemon mode against a fake server process (latency 5 s, cap 200). Measured:
launch to the first upload request reaching the fake, launch to the last ``file_detected``
event (every file in the journal), the daemon's RSS (VmRSS every 50 ms, VmHWM) over the first
~20 s (longer if discovery takes longer), and the journal's size on disk once discovery is done.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    MB,
    Child,
    FakeServer,
    Folders,
    LogFollower,
    RssSampler,
    Table,
    event_time,
    fmt,
    folder_bytes,
    make_audio_files,
    start_daemon,
    verdict,
    write_daemon_config,
)

NAME = "startup"
FIRST_UPLOAD_S = 5.0
RSS_LIMIT_MB = 200.0


@dataclass(frozen=True)
class Size:
    files: int
    window_s: float


FULL = Size(files=10_000, window_s=20.0)
QUICK = Size(files=2_000, window_s=8.0)


@dataclass
class Observed:
    first_upload_s: float | None = None
    discovered_s: float | None = None
    discovered: int = 0
    journal_bytes: int | None = None
    journal_bytes_end: int = 0
    uploads_in_window: int = 0
    peak_rss_mb: float = 0.0
    hwm_mb: float = 0.0
    observed_s: float = 0.0
    create_s: float = 0.0


def journal_size(state: Path) -> int:
    """journal.sqlite3 plus its write-ahead log (journal.sqlite3-wal)."""
    base = state / "journal.sqlite3"
    return folder_bytes(base, Path(f"{base}-wal"))


def run(quick: bool) -> list[Table]:
    size = QUICK if quick else FULL
    seen = Observed()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folders = Folders.make(Path(tmp))
        began = time.monotonic()
        make_audio_files(folders.inbox, size.files, seed=10_000, min_size=3_000, max_size=5_000)
        seen.create_s = time.monotonic() - began
        with FakeServer(latency_s=5.0, concurrency=200, log_path=folders.root / "fake.log") as fake:
            config = write_daemon_config(folders, fake.base_url)
            daemon = start_daemon(folders, config, once=False)
            sampler = RssSampler(daemon.pid)
            follower = LogFollower(folders.log)
            try:
                _observe(daemon, follower, fake, folders, size, seen)
            finally:
                sampler.stop()
                daemon.stop()
            seen.peak_rss_mb, seen.hwm_mb = sampler.peak_mb, sampler.hwm_mb
            seen.journal_bytes_end = journal_size(folders.state)
    return [_table(size, seen)]


def _observe(
    daemon: Child,
    follower: LogFollower,
    fake: FakeServer,
    folders: Folders,
    size: Size,
    seen: Observed,
) -> None:
    """Watch the log and the fake until the window has passed and discovery is complete."""
    launched = daemon.started_at
    hard_stop = launched + max(60.0, 3 * size.window_s)
    while time.time() < hard_stop:
        if not daemon.running:
            raise RuntimeError(f"the daemon exited early: see {folders.log}")
        follower.poll()
        detected = [e for e in follower.events if e.get("event") == "file_detected"]
        seen.discovered = len(detected)
        if seen.discovered >= size.files and seen.discovered_s is None:
            seen.discovered_s = event_time(detected[-1]) - launched
            seen.journal_bytes = journal_size(folders.state)
        if seen.first_upload_s is None:
            uploads = fake.uploads()
            if uploads:
                seen.first_upload_s = min(u.start for u in uploads) - launched
        done = seen.discovered_s is not None and seen.first_upload_s is not None
        if done and time.time() - launched >= size.window_s:
            break
        time.sleep(0.1)
    seen.observed_s = time.time() - launched
    seen.uploads_in_window = fake.counters().uploads_completed


def _table(size: Size, seen: Observed) -> Table:
    table = Table(
        f"startup: {size.files:,} files already in the inbox, daemon mode, defaults",
        ["metric", "value", "target", "result"],
    )
    table.add(
        "launch -> first upload starts (s)",
        fmt(seen.first_upload_s),
        f"<= {FIRST_UPLOAD_S:g} s",
        verdict(seen.first_upload_s is not None and seen.first_upload_s <= FIRST_UPLOAD_S),
    )
    table.add(
        "launch -> every file in the journal (s)",
        fmt(seen.discovered_s)
        if seen.discovered_s is not None
        else f"not in {seen.observed_s:.0f} s",
        "",
        "",
    )
    table.add(
        f"peak RSS over the first {seen.observed_s:.0f} s, VmRSS sampled / VmHWM (MB)",
        f"{seen.peak_rss_mb:.0f} / {seen.hwm_mb:.0f}",
        f"< {RSS_LIMIT_MB:g} MB",
        verdict(max(seen.peak_rss_mb, seen.hwm_mb) < RSS_LIMIT_MB),
    )
    after = "n/a" if seen.journal_bytes is None else f"{seen.journal_bytes / MB:.2f}"
    table.add("journal + WAL after discovery (MB)", after, "", "")
    table.add(
        f"journal + WAL after {seen.observed_s:.0f} s (MB)",
        f"{seen.journal_bytes_end / MB:.2f}",
        "",
        "",
    )
    table.add(
        f"uploads finished in the first {seen.observed_s:.0f} s",
        str(seen.uploads_in_window),
        "",
        "",
    )
    table.notes += [
        f"files: 3-5 kB each, mtimes an hour old (created in {seen.create_s:.1f} s before the "
        "launch); fake latency 5 s, cap 200; daemon settings are the defaults (200 jobs, 4 "
        "uploads at once, a burst of 1000 requests then 40/s, settle 2 s) apart from folders and "
        "logging.",
        "launch: just before the daemon process is created; first upload: the fake's clock "
        "when the request arrived; discovery: timestamp of the last file_detected log event.",
    ]
    return table
