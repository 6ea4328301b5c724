"""Local engine throughput: the daemon's LocalBackend against faster-whisper called directly.

Uses ``bench/local_engine.py`` for the batch (clips joined from ``samples/``) and the
measurements: faster-whisper in one process with 1 and 2 threads, the direct ceiling of 2
processes x 1 thread, and LocalBackend with its default settings. Rounds interleave the
configurations and each keeps its best. Model loading and worker start-up are left out of these
figures; one more row runs the whole daemon (``run --once --backend local``) on the same clips,
start-up included, for information.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Folders,
    Table,
    age,
    copy_files,
    count_outputs,
    fmt,
    start_daemon,
    verdict,
)
from fakeapi.config_file import write_toml

NAME = "local"
SHARE = 0.90


@dataclass(frozen=True)
class Size:
    clips: int
    join: int
    rounds: int


FULL = Size(clips=12, join=3, rounds=3)
QUICK = Size(clips=4, join=2, rounds=1)


def _daemon_once(paths: Sequence[Path], root: Path) -> tuple[float, int]:
    """Wall seconds of ``run --once --backend local`` on copies of the clips, and outputs."""
    folders = Folders.make(root)
    age(copy_files(paths, folders.inbox))
    values = {**folders.settings(), "backend": "local", "http.listen": ""}
    config = write_toml(root / "transcribed.toml", {**values, "daemon.log_format": "json"})
    child = start_daemon(folders, config, once=True)
    usage = child.wait(timeout_s=900)
    return usage.ended_at - child.started_at, count_outputs(folders.outbox)


def run(quick: bool) -> list[Table]:
    size = QUICK if quick else FULL
    from bench import local_engine as engine
    from transcribed.config import LocalSettings
    from transcribed.logs import configure_logging

    configure_logging("warning", "console", sys.stderr)  # LocalBackend logs in this process
    defaults = LocalSettings()
    runs: dict[str, Callable[[Sequence[Path]], float]] = {
        engine.DIRECT_1: lambda p: engine.direct_one_process(p, defaults, 1)[0],
        engine.DIRECT_2: lambda p: engine.direct_one_process(p, defaults, 2)[0],
        engine.CEILING: lambda p: engine.direct_processes(p, defaults, 2),
        engine.BACKEND: lambda p: engine.through_backend(p, defaults)[0],
    }
    walls: dict[str, list[float]] = {label: [] for label in runs}
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        paths, audio_s = engine.make_batch(Path(tmp), size.clips, size.join)
        for _ in range(size.rounds):
            for label, measure in runs.items():
                walls[label].append(measure(paths))
        daemon_wall, daemon_done = _daemon_once(paths, Path(tmp) / "daemon")
    return [_table(size, defaults, audio_s, walls, daemon_wall, daemon_done)]


def _table(
    size: Size,
    defaults: object,
    audio_s: float,
    walls: dict[str, list[float]],
    daemon_wall: float,
    daemon_done: int,
) -> Table:
    from bench import local_engine as engine

    speed = {label: audio_s / min(runs) for label, runs in walls.items()}
    direct = {k: v for k, v in speed.items() if k != engine.BACKEND}
    best_label = max(direct, key=lambda k: direct[k])
    share = speed[engine.BACKEND] / direct[best_label]
    table = Table(
        f"local: {size.clips} clips of {size.join} samples joined ({audio_s:.0f} s of audio), "
        f"best of {size.rounds} round(s)",
        ["configuration", "best wall s", "audio s / wall s", "vs best direct", "target", "result"],
    )
    for label, runs in walls.items():
        is_backend = label == engine.BACKEND
        table.add(
            label + (" (the daemon's engine)" if is_backend else ""),
            fmt(min(runs)),
            fmt(speed[label], 1),
            fmt(speed[label] / direct[best_label]),
            f">= {SHARE:.2f}" if is_backend else "",
            verdict(share >= SHARE) if is_backend else "",
        )
    table.add(
        "daemon, run --once --backend local (start-up included)",
        fmt(daemon_wall),
        fmt(audio_s / daemon_wall, 1),
        fmt(audio_s / daemon_wall / direct[best_label]),
        "info",
        f"{daemon_done}/{size.clips} transcripts",
    )
    table.notes += [
        f"best direct: {best_label}. Settings: {defaults!r}.",
        "LocalBackend and direct rows exclude model loading and worker start-up (timed "
        "separately by bench/local_engine.py); the daemon row is process start to exit.",
        "these rows use both cores flat out: other load on the machine (see the load average "
        "below) moves them more than any other scenario; run on an idle machine to compare.",
    ]
    return table
