"""Detection latency: from a file's last write to the start of its upload.

The daemon runs in daemon mode (inotify) with ``watch.settle_s`` at its default. Once it reports
``watcher_started``, the benchmark writes files into the inbox one after another (each opened,
written, closed; the close time is recorded) with a short gap. The fake server process records
when each upload request arrived, keyed by the content's sha256, so every file's latency is
``upload start - close``. The settle interval is a deliberate floor: a file is taken only once
it has been quiet for ``settle_s``.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    FakeServer,
    Folders,
    LogFollower,
    Table,
    audio_bytes,
    fmt,
    log_problems,
    percentile,
    start_daemon,
    verdict,
    write_daemon_config,
)

NAME = "detection"
SETTLE_S = 2.0  # the daemon's default watch.settle_s
MARGIN_S = 1.0


@dataclass(frozen=True)
class Size:
    files: int
    gap_s: float


FULL = Size(files=50, gap_s=0.1)
QUICK = Size(files=15, gap_s=0.1)


def write_files(inbox: Path, size: Size) -> dict[str, float]:
    """Write the files one after another; returns sha256 -> close time."""
    rng = random.Random(50)
    closed: dict[str, float] = {}
    for index in range(size.files):
        data = audio_bytes(rng, rng.randint(4_000, 16_000))
        with (inbox / f"drop{index:03d}.mp3").open("wb") as handle:
            handle.write(data)
        closed[hashlib.sha256(data).hexdigest()] = time.time()
        time.sleep(size.gap_s)
    return closed


def run(quick: bool) -> list[Table]:
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        folders = Folders.make(Path(tmp))
        with FakeServer(latency_s=1.0, concurrency=200, log_path=folders.root / "fake.log") as fake:
            config = write_daemon_config(folders, fake.base_url, {"watch.settle_s": SETTLE_S})
            daemon = start_daemon(folders, config, once=False)
            try:
                LogFollower(folders.log).wait_for("watcher_started", daemon, timeout_s=60)
                time.sleep(0.5)  # let the start-up scan finish on an empty inbox
                closed = write_files(folders.inbox, size)
                deadline = time.monotonic() + SETTLE_S + 60
                starts: dict[str, float] = {}
                while time.monotonic() < deadline and len(starts) < len(closed):
                    starts = {u.sha256: u.start for u in fake.uploads() if u.sha256 in closed}
                    time.sleep(0.2)
            finally:
                daemon.stop()
        latencies = sorted(starts[sha] - closed[sha] for sha in starts)
        table = _table(size, latencies)
        if len(latencies) < size.files:
            table.notes += log_problems(folders.log)
    return [table]


def _table(size: Size, latencies: list[float]) -> Table:
    table = Table(
        f"detection: {size.files} files written {size.gap_s:g} s apart, "
        f"watch.settle_s = {SETTLE_S:g} (default), inotify",
        ["metric", "seconds", "target", "result"],
    )
    if not latencies:
        table.add("uploads seen", "0", f"{size.files}", "MISS")
        return table
    p95 = percentile(latencies, 95)
    table.add("settle interval (floor)", fmt(SETTLE_S), "", "")
    table.add("min", fmt(min(latencies)), "", "")
    table.add("p50", fmt(percentile(latencies, 50)), "", "")
    table.add(
        "p95",
        fmt(p95),
        f"<= settle + {MARGIN_S:g} = {SETTLE_S + MARGIN_S:g}",
        verdict(p95 <= SETTLE_S + MARGIN_S),
    )
    table.add("max", fmt(max(latencies)), "", "")
    table.add("mean", fmt(statistics.fmean(latencies)), "", "")
    table.add(
        "files uploaded",
        f"{len(latencies)}/{size.files}",
        f"{size.files}/{size.files}",
        verdict(len(latencies) == size.files),
    )
    table.notes.append(
        "latency: upload request arriving at the fake minus the moment the benchmark closed "
        "the file (wall clock, same machine); the daemon was started and watching beforehand."
    )
    return table
