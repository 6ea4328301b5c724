"""A realistic backlog: real MP3 recordings of 1 to 120 minutes over one shared uplink.

The work: 40 recordings (voice memos, meetings, lectures; about 17 h of audio, 124 MB at
16 kbps mono), made once by espeak-ng and ffmpeg and cached (``bench/recordings.py``). The
service: one fake server with 8 MB/s of upload bandwidth shared by all uploads, processing
time 3 s + 20 s per audio hour (read from each MP3's header), and a cap of 200 jobs.

The reference is the best schedule for this work (``bench/reference.py``): Jackson's rule,
longest processing first, each upload at full bandwidth. Contenders, each against a fresh
fake: the daemon (``run --once``, default settings) with polling and with webhooks, and the
SDK's ``transcribe_group``. A last daemon run (polling, the long-running daemon) gets one more
recording dropped into its inbox while the backlog is uploading, and reports how long that
file waited until its upload started.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mutagen

from bench.backlog import (
    During,
    Outcome,
    best_of,
    run_client,
    run_daemon,
    webhook_problem,
    webhook_settings,
    webhooks_available,
)
from bench.common import Child, FakeServer, Folders, Table, fmt, verdict
from bench.recordings import log_spread, recordings
from bench.reference import jackson_makespan, service_work

NAME = "mixed"
TARGET = 1.05


@dataclass(frozen=True)
class MixedSize:
    files: int
    shortest_s: float
    longest_s: float
    bandwidth_bps: float
    latency_s: float
    latency_per_audio_s: float
    cap: int
    dropped_s: int
    """Length of the recording dropped in while the backlog uploads."""
    rounds: int

    @property
    def service(self) -> dict[str, Any]:
        return {
            "latency_s": self.latency_s,
            "latency_per_audio_s": self.latency_per_audio_s,
            "concurrency": self.cap,
            "upload_bandwidth_bps": self.bandwidth_bps,
        }


FULL = MixedSize(40, 60, 7200, 8e6, 3.0, 20 / 3600, 200, dropped_s=180, rounds=2)
#: A smoke run: 8 recordings of 30 s to 10 min over a 1 MB/s link.
QUICK = MixedSize(8, 30, 600, 1e6, 3.0, 20 / 3600, 200, dropped_s=60, rounds=1)


def duration_s(path: Path) -> float:
    info = mutagen.File(path)
    if info is None or not info.info.length:
        raise RuntimeError(f"{path} has no readable audio length")
    return float(info.info.length)


@dataclass
class Dropped:
    """The file dropped in mid-backlog: when it appeared, when its upload started."""

    dropped_at: float = 0.0
    upload_wait_s: float | None = None
    uploaded_before: int = 0
    """Backlog uploads that had finished before it appeared."""


def _dropper(file: Path, total_bytes: int, dropped: Dropped) -> During:
    """Drops ``file`` into the inbox once a quarter of the backlog's bytes are uploaded."""

    def during(fake: FakeServer, folders: Folders, child: Child) -> None:
        while child.running and fake.counters().upload_bytes < total_bytes // 4:
            time.sleep(0.05)
        hidden = folders.inbox / f".{file.name}.part"
        shutil.copyfile(file, hidden)
        hidden.rename(folders.inbox / file.name)  # appears whole, with a fresh mtime
        dropped.dropped_at = time.time()
        dropped.uploaded_before = len(fake.uploads())

    return during


def run(quick: bool) -> list[Table]:
    size = QUICK if quick else FULL
    files = recordings(log_spread(size.files, size.shortest_s, size.longest_s))
    (extra,) = recordings([size.dropped_s], prefix="dropped")
    durations = {p: duration_s(p) for p in files}
    sizes = {p: p.stat().st_size for p in files}
    work = service_work(
        [(sizes[p], durations[p]) for p in files],
        bandwidth_bps=size.bandwidth_bps,
        latency_s=size.latency_s,
        latency_per_audio_s=size.latency_per_audio_s,
    )
    reference = jackson_makespan(work)
    timeout_s = 20 * reference + 120
    rounds: dict[str, list[Outcome]] = {"polling": [], "webhooks": [], "sdk": []}
    dropped = Dropped()
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        root = Path(tmp)
        for index in range(size.rounds):
            rounds["polling"].append(
                run_daemon(
                    "daemon, polling", files, size.service, root / f"polling{index}", timeout_s
                )
            )
            if webhooks_available():
                rounds["webhooks"].append(
                    run_daemon(
                        "daemon, webhooks",
                        files,
                        size.service,
                        root / f"webhooks{index}",
                        timeout_s,
                        webhook_settings(),
                    )
                )
            rounds["sdk"].append(
                run_client(
                    "SDK transcribe_group",
                    "bench.sdk_client",
                    files,
                    size.service,
                    root / f"sdk{index}",
                    timeout_s,
                )
            )
        with_drop = run_daemon(
            "daemon, polling, + a file dropped in",
            files,
            size.service,
            root / "dropped",
            timeout_s,
            during=_dropper(extra, sum(sizes.values()), dropped),
            until_outputs=len(files) + 1,
        )
    dropped_sha = _sha256(extra)
    for upload in with_drop.uploads:
        if upload.sha256 == dropped_sha:
            dropped.upload_wait_s = upload.start - dropped.dropped_at
    polling, sdk = best_of(rounds["polling"]), best_of(rounds["sdk"])
    webhooks = best_of(rounds["webhooks"]) if rounds["webhooks"] else None
    longest = max(files, key=lambda p: durations[p])
    outcomes = [o for o in (polling, webhooks, sdk) if o is not None]
    return [
        _results(size, reference, outcomes, webhooks, _sha256(longest), sum(durations.values())),
        _dropped_table(size, extra, dropped, with_drop),
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _results(
    size: MixedSize,
    reference: float,
    outcomes: list[Outcome],
    webhooks: Outcome | None,
    longest_sha: str,
    audio_s: float,
) -> Table:
    table = Table(
        f"mixed: {size.files} MP3 recordings, {audio_s / 3600:.1f} h of audio, "
        f"{size.bandwidth_bps / 1e6:g} MB/s shared upload, processing "
        f"{size.latency_s:g} s + {size.latency_per_audio_s * 3600:g} s per audio hour",
        [
            "contender", "wall s", "all rounds s", "reference s", "wall/reference", "target",
            "result", "longest file's upload starts s", "uploads done s", "upload MB/s",
            "last completion s", "HTTP req/job", "transcripts",
        ],
    )  # fmt: skip
    problem = webhook_problem(webhooks)
    for outcome in outcomes:
        ratio = outcome.wall_s / reference
        judged = outcome.name.startswith("daemon")
        result = verdict(ratio <= TARGET) if judged else "-"
        if outcome is webhooks and problem:
            result = f"n/a ({problem})"
        start = next((u.start for u in outcome.uploads if u.sha256 == longest_sha), None)
        uploads = outcome.uploads
        first = min((u.start for u in uploads), default=None)
        done = max((u.end for u in uploads), default=None)
        rate = (
            sum(u.size for u in uploads) / (done - first) / 1e6
            if first is not None and done is not None and done > first
            else None
        )
        timeline = outcome.timeline
        last = timeline.completed[-1] if timeline and timeline.completed else None
        table.add(
            outcome.name,
            fmt(outcome.wall_s, 2),
            ", ".join(f"{w:.2f}" for w in outcome.walls) or "-",
            fmt(reference, 2),
            fmt(ratio, 3),
            f"<= {TARGET:g}x" if judged else "-",
            result,
            fmt(None if start is None else start - outcome.process_started_at, 2),
            fmt(None if done is None else done - outcome.process_started_at, 2),
            fmt(rate, 2),
            fmt(last, 2),
            fmt(outcome.requests_per_job),
            f"{outcome.done}/{outcome.ran_files}"
            + ("" if outcome.exit_code == 0 else f" (exit {outcome.exit_code})"),
        )
    table.notes += [
        f"reference: Jackson's rule (longest processing first, each upload alone at "
        f"{size.bandwidth_bps / 1e6:g} MB/s, cap {size.cap} never reached), from the files' "
        "sizes and their headers' durations.",
        f"wall: process start to exit, best of {size.rounds} round(s); the daemon runs "
        "run --once with the default settings (folders, API URL; webhooks: webhook_url and "
        "the http.listen its receiver needs); the recordings are an hour old, so settled.",
        "longest file's upload starts: when the fake's handler for the longest recording's "
        "upload was entered, seconds after the process started; uploads done: when the last "
        "upload's body was read; upload MB/s: all bytes over first upload start to last "
        f"upload end (the link gives {size.bandwidth_bps / 1e6:g}).",
    ]
    for outcome in outcomes:
        table.notes += [f"{outcome.name}: {line}" for line in outcome.problems]
    return table


def _dropped_table(size: MixedSize, extra: Path, dropped: Dropped, run: Outcome) -> Table:
    table = Table(
        "mixed: a file dropped into the inbox while the backlog uploads",
        ["file", "dropped at s", "backlog uploads done before", "wait until upload s",
         "last transcript s", "transcripts"],
    )  # fmt: skip
    table.add(
        f"{extra.name} ({size.dropped_s} s of audio)",
        fmt(dropped.dropped_at - run.process_started_at, 2),
        str(dropped.uploaded_before),
        fmt(dropped.upload_wait_s, 2),
        fmt(run.last_output_s, 2),
        f"{run.done}/{run.ran_files + 1}",
    )
    table.notes += [
        "the long-running daemon (not run --once, which takes only what is in the inbox at "
        "start), stopped once every transcript is written. The file is dropped once a quarter "
        "of the backlog's bytes were uploaded (seconds after the daemon's process started); "
        "its wait runs from its appearing in the inbox (whole, "
        "by a rename) to the fake entering its upload's handler, and includes "
        "watch.settle_s (2 s by default), since the file is new.",
    ]
    return table
