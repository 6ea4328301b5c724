"""Shared pieces of the benchmark scenarios.

- :class:`Child`: a subprocess reaped with ``os.wait4``, so its own CPU seconds and peak RSS
  are known exactly (not mixed with other children of the benchmark);
- :class:`RssSampler`: polls ``/proc/<pid>/status`` (VmRSS, VmHWM) every 50 ms;
- :class:`FakeServer`: the fake AssemblyAI API in its own process (``bench.fake_server``),
  with its counters, per-upload timings and submit/completion timeline read over a control
  endpoint;
- :class:`Folders`, :func:`write_daemon_config`, :func:`start_daemon`, :class:`LogFollower`:
  the real daemon as a subprocess, pointed at the fake and temp folders;
- audio-looking test files, and :class:`Table` rendering.

Times that cross process boundaries are wall-clock (``time.time()``) on the same machine.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from fakeapi.config_file import write_toml
from fakeapi.counters import burst_beyond

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
API_KEY = "bench-key-0123456789"
MB = 1_000_000
ID3_HEADER = b"ID3\x04\x00\x00\x00\x00\x00\x00"


# -- subprocesses ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """How a finished child process went: exit code, CPU seconds, peak RSS, end time."""

    exit_code: int
    cpu_s: float
    maxrss_mb: float
    ended_at: float


class Child:
    """A subprocess reaped by a thread blocked in ``os.wait4``: exact end time and rusage.

    ``started_at`` is taken just before the process is created.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=stdout, stderr=stderr, cwd=cwd or REPO
        )
        self.usage: Usage | None = None
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self._reaper.is_alive()

    def _reap(self) -> None:
        _, status, ru = os.wait4(self.proc.pid, 0)
        ended = time.time()
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code  # Popen must not wait for it again
        self.usage = Usage(code, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024 / MB, ended)

    def _signal(self, sig: int) -> None:
        # Not Popen.send_signal: it polls (waitpid) first and could reap the process before
        # the wait4 thread gets its resource usage.
        if self.running:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> Usage:
        """Wait for the process to exit; kill it (and raise) after ``timeout_s``."""
        self._reaper.join(timeout_s)
        if self._reaper.is_alive():
            self._signal(signal.SIGKILL)
            self._reaper.join()
            raise TimeoutError(f"{' '.join(self.argv[:4])} did not finish within {timeout_s:.0f}s")
        assert self.usage is not None
        return self.usage

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> Usage:
        """Send ``sig`` (if it still runs) and wait; SIGKILL after ``timeout_s``."""
        self._signal(sig)
        self._reaper.join(timeout_s)
        if self._reaper.is_alive():
            self._signal(signal.SIGKILL)
            self._reaper.join()
        assert self.usage is not None
        return self.usage


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples VmRSS and VmHWM of one process every ``interval_s`` in a background thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (wall time, VmRSS kB)
        self.hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            hwm = proc_status_kb(self.pid, "VmHWM")
            if rss is None:
                return  # exited (or a zombie, whose memory is already gone)
            self.samples.append((time.time(), rss))
            self.hwm_kb = max(self.hwm_kb, hwm or 0)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        """The largest VmRSS sampled."""
        return max((kb for _, kb in self.samples), default=0) * 1024 / MB

    @property
    def hwm_mb(self) -> float:
        """VmHWM: the kernel's own peak RSS, as last read while the process lived."""
        return self.hwm_kb * 1024 / MB

    def peak_between(self, start: float, end: float) -> float:
        """The largest VmRSS sampled in [start, end] (wall time), in MB."""
        inside = [kb for t, kb in self.samples if start <= t <= end]
        return max(inside, default=0) * 1024 / MB


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without TRANSCRIBED_* / ASSEMBLYAI* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSCRIBED_", "ASSEMBLYAI"))}
    env.update(extra)
    return env


# -- the fake API in its own process -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadTiming:
    """One finished upload as the fake saw it."""

    start: float
    end: float
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """When the fake created (took the submit of) and completed each transcript: sorted lists
    of wall-clock seconds."""

    created: list[float]
    completed: list[float]

    def since(self, start: float) -> Timeline:
        """The same moments, as seconds after ``start``."""
        return Timeline([t - start for t in self.created], [t - start for t in self.completed])


@dataclass(frozen=True, slots=True)
class Counters:
    """The fake's counters, as read from its control endpoint."""

    total_requests: int
    peak_rps: int
    uploads_completed: int
    upload_bytes: int
    submits: int
    polls: int
    lists: int
    webhook_deliveries: int
    requests: list[tuple[str, str, int, int]]
    requests_per_second: dict[int, int]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        return cls(
            total_requests=data["total_requests"],
            peak_rps=data["peak_rps"],
            uploads_completed=data["uploads_completed"],
            upload_bytes=data["upload_bytes"],
            submits=data["submits"],
            polls=data["polls"],
            lists=data["lists"],
            webhook_deliveries=data["webhook_deliveries"],
            requests=[(m, r, s, n) for m, r, s, n in data["requests"]],
            requests_per_second={int(second): n for second, n in data["requests_per_second"]},
        )

    def burst_beyond(self, rate: float) -> float:
        """The most requests beyond ``rate`` per second over any run of whole seconds."""
        return burst_beyond(self.requests_per_second, rate)


class FakeServer:
    """``with FakeServer(latency_s=5, concurrency=200) as fake:`` runs a fresh fake process.

    ``latency_per_audio_s`` adds processing time per second of audio; ``upload_bandwidth_bps``
    caps all uploads together (see ``fakeapi.FakeConfig``)."""

    def __init__(
        self,
        *,
        latency_s: float,
        concurrency: int,
        log_path: Path | None = None,
        latency_per_audio_s: float = 0.0,
        upload_bandwidth_bps: float | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.concurrency = concurrency
        self.latency_per_audio_s = latency_per_audio_s
        self.upload_bandwidth_bps = upload_bandwidth_bps
        self.log_path = log_path
        self.base_url = ""
        self.control_url = ""
        self._child: Child | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> FakeServer:
        argv = [
            PYTHON, "-m", "bench.fake_server", "--api-key", API_KEY,
            "--latency-s", str(self.latency_s), "--concurrency", str(self.concurrency),
            "--latency-per-audio-s", str(self.latency_per_audio_s),
        ]  # fmt: skip
        if self.upload_bandwidth_bps:
            argv += ["--upload-bandwidth-bps", str(self.upload_bandwidth_bps)]
        self._log = self.log_path.open("ab") if self.log_path else None
        stderr = self._log if self._log is not None else subprocess.DEVNULL
        child = Child(argv, env=clean_env(), stdout=subprocess.PIPE, stderr=stderr)
        self._child = child
        assert child.proc.stdout is not None
        ready, _, _ = select.select([child.proc.stdout], [], [], 30.0)
        line = child.proc.stdout.readline() if ready else b""
        if not line:
            child.stop(signal.SIGKILL)
            raise RuntimeError("the fake server did not start")
        urls = json.loads(line)
        self.base_url, self.control_url = urls["base_url"], urls["control_url"]
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._child is not None:
            self._child.stop(signal.SIGTERM, timeout_s=10.0)
            if self._child.proc.stdout is not None:
                self._child.proc.stdout.close()
        if self._log is not None:
            self._log.close()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.control_url + path, timeout=30) as answer:
            return json.loads(answer.read())

    def counters(self) -> Counters:
        return Counters.from_json(self._get("/counters"))

    def uploads(self) -> list[UploadTiming]:
        return [UploadTiming(**item) for item in self._get("/uploads")]

    def timeline(self) -> Timeline:
        data = self._get("/timeline")
        return Timeline(created=data["created"], completed=data["completed"])

    def jobs(self) -> dict[str, int]:
        jobs: dict[str, int] = self._get("/jobs")
        return jobs

    def reset(self) -> None:
        request = urllib.request.Request(self.control_url + "/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30):
            pass


# -- the daemon ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Folders:
    """A daemon's folders under one root (the inbox is created)."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @classmethod
    def make(cls, root: Path) -> Folders:
        folders = cls(root)
        folders.inbox.mkdir(parents=True, exist_ok=True)
        return folders

    def settings(self) -> dict[str, Any]:
        return {
            "inbox": str(self.inbox),
            "outbox": str(self.outbox),
            "done": str(self.root / "done"),
            "failed": str(self.root / "failed"),
            "state_dir": str(self.state),
        }


def write_daemon_config(
    folders: Folders, base_url: str, extra: Mapping[str, Any] | None = None
) -> Path:
    """The daemon's config: these folders, the fake's URL, JSON logs, no HTTP endpoint.

    ``extra`` maps dotted keys (``"watch.settle_s"``) to values that override those set here.
    """
    values: dict[str, Any] = {
        **folders.settings(),
        "backend": "assemblyai",
        "assemblyai.base_url": base_url,
        "http.listen": "",
        "daemon.log_format": "json",
    }
    values.update(extra or {})
    return write_toml(folders.root / "transcribed.toml", values)


def start_daemon(folders: Folders, config: Path, *, once: bool) -> Child:
    """``python -m transcribed run --config FILE [--once]``, logging JSON lines to a file."""
    argv = [PYTHON, "-m", "transcribed", "run", "--config", str(config)]
    if once:
        argv.append("--once")
    log = folders.log.open("ab")
    try:
        return Child(argv, env=clean_env(ASSEMBLYAI_API_KEY=API_KEY), stdout=log, stderr=log)
    finally:
        log.close()  # the child holds its own descriptor


class LogFollower:
    """Reads new JSON lines of a daemon log as they are written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """Parse what was appended since the last call; returns the new events."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.startswith(b"{"):
                try:
                    new.append(json.loads(line))
                except ValueError:
                    continue
        self.events.extend(new)
        return new

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e.get("event") == name)

    def wait_for(self, name: str, child: Child, timeout_s: float) -> dict[str, Any]:
        """Follow the log until event ``name`` appears; raise if the daemon exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            for event in self.events:
                if event.get("event") == name:
                    return event
            if not child.running:
                raise RuntimeError(f"the daemon exited before {name}: see {self.path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} within {timeout_s:.0f}s: see {self.path}")
            time.sleep(0.05)


def log_problems(path: Path, limit: int = 3) -> list[str]:
    """The last few warning/error events of a daemon log, one line each, for a table's notes."""
    follower = LogFollower(path)
    follower.poll()
    bad = [e for e in follower.events if e.get("level") in ("warning", "error", "critical")]
    lines = []
    for event in bad[-limit:]:
        detail = {k: v for k, v in event.items() if k not in ("timestamp", "logger", "level")}
        lines.append(f"daemon log: {json.dumps(detail)[:300]}")
    if not lines and path.exists():
        tail = path.read_text(errors="replace").strip().splitlines()[-limit:]
        lines = [f"daemon output: {line[:300]}" for line in tail]
    return lines


def event_time(event: dict[str, Any]) -> float:
    """The wall-clock time of a structlog JSON event (its ISO ``timestamp``)."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def last_output_at(folder: Path, pattern: str = "*.txt") -> float | None:
    """The newest modification time of the transcripts in ``folder`` (recursively)."""
    times = [p.stat().st_mtime for p in folder.rglob(pattern)]
    return max(times) if times else None


def count_outputs(folder: Path, pattern: str = "*.txt") -> int:
    return sum(1 for _ in folder.rglob(pattern)) if folder.exists() else 0


# -- audio-looking files ---------------------------------------------------------------------


def audio_bytes(rng: random.Random, size: int) -> bytes:
    """An MP3-looking body: ID3 header, then random bytes (the fake hears 16 kB per second)."""
    return ID3_HEADER + rng.randbytes(size - len(ID3_HEADER))


def make_audio_files(
    folder: Path, count: int, *, seed: int, min_size: int = 3_000, max_size: int = 8_000
) -> list[Path]:
    """``count`` small distinct MP3-looking files with old modification times."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        path = folder / f"file{index:05d}.mp3"
        path.write_bytes(audio_bytes(rng, rng.randint(min_size, max_size)))
        paths.append(path)
    age(paths)
    return paths


def age(paths: Iterable[Path], seconds: float = 3600.0) -> None:
    """Set modification times ``seconds`` in the past, so the files count as settled."""
    old = time.time() - seconds
    for path in paths:
        os.utime(path, (old, old))


def copy_files(paths: Iterable[Path], folder: Path) -> list[Path]:
    """Copy files (keeping their old mtimes) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, folder / p.name)) for p in paths]


def folder_bytes(*paths: Path) -> int:
    """Total size of the files that exist among ``paths``."""
    return sum(p.stat().st_size for p in paths if p.exists())


# -- tables ----------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    """PASS, MISS, or n/a when there is nothing to judge."""
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (``statistics.quantiles`` with the inclusive method)."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(pct) - 1]


@dataclass
class Table:
    """One result table: a title, a header row, rows, and notes printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        """Markdown, padded so that it also reads well as plain text."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [f"### {self.title}", "", line(self.columns)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.extend(line(row) for row in self.rows)
        if self.notes:
            out.append("")
            out.extend(f"- {note}" for note in self.notes)
        return "\n".join(out) + "\n"
