"""Backlog throughput: a folder of files against a slow service with a concurrency cap.

Contenders, each against a fresh fake server process with the same settings, on the same files:

- the daemon with polling: ``transcribed run --once`` with the files already in the inbox;
- the daemon with webhooks (when ``transcribed.webhooks`` exists): the same, with
  ``assemblyai.webhook_url`` pointing at its own receiver (``http.listen``, path ``/webhook``);
- the official SDK: ``Transcriber().transcribe_group(files)`` in its own process, defaults kept;
- a tutorial-style sequential loop (upload, submit, poll every 3 s, one file at a time), run on
  a few files and extrapolated linearly to the whole backlog.

Wall time runs from the contender's process start to its exit; "last transcript" is when the
newest transcript file was written. The ideal is ``latency x ceil(files / cap)``.

Two sizes: a paid account's cap (400 files, 5 s processing, cap 200) and a free account's
(60 files, 2 s processing, cap 5). The daemon runs with its default settings: only what the
scenario gives is set (the folders, the API URL, and for webhooks ``webhook_url`` with the
``http.listen`` its receiver needs under ``run --once``).
"""

from __future__ import annotations

import importlib
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    API_KEY,
    PYTHON,
    Child,
    Counters,
    FakeServer,
    Folders,
    LogFollower,
    Table,
    Timeline,
    UploadTiming,
    age,
    clean_env,
    copy_files,
    count_outputs,
    event_time,
    fmt,
    free_port,
    last_output_at,
    log_problems,
    make_audio_files,
    start_daemon,
    verdict,
    write_daemon_config,
)

NAME = "backlog"


@dataclass(frozen=True)
class Size:
    files: int
    latency_s: float
    cap: int
    sequential_files: int
    """0: no sequential loop."""
    rounds: int
    polling_target: float = 1.08
    webhooks_target: float = 1.05
    sdk_speedup_target: float | None = 1.25
    """SDK wall / daemon wall at least this; None: shown, not judged."""

    @property
    def service(self) -> dict[str, Any]:
        """The fake server's settings (``FakeServer`` keywords)."""
        return {"latency_s": self.latency_s, "concurrency": self.cap}

    @property
    def ideal_s(self) -> float:
        return self.latency_s * math.ceil(self.files / self.cap)

    @property
    def binding_submit(self) -> int:
        """The submit (1-based) after which the last transcript completes ``ideal_s`` later at
        best: a job of the last wave starts when the job ``cap`` places before it completes,
        so the chain of waves that ends last begins with this one of the first wave."""
        return self.files - (math.ceil(self.files / self.cap) - 1) * self.cap


FULL = Size(files=400, latency_s=5.0, cap=200, sequential_files=10, rounds=3)
QUICK = Size(files=60, latency_s=2.0, cap=30, sequential_files=3, rounds=1)
#: A free account: concurrency 5.
FREE = Size(60, 2.0, 5, 0, 3, polling_target=1.1, webhooks_target=1.1, sdk_speedup_target=None)
FREE_QUICK = Size(
    15, 1.0, 5, 0, 1, polling_target=1.1, webhooks_target=1.1, sdk_speedup_target=None
)

#: Runs while the contender does: (fake, folders, child); only for daemon contenders.
During = Callable[[FakeServer, Folders, Child], None]


@dataclass
class Outcome:
    """One contender's run, scaled to the whole backlog when it ran on a subset."""

    name: str
    ran_files: int
    scale: float
    wall_s: float
    last_output_s: float | None
    counters: Counters
    cpu_s: float
    done: int
    exit_code: int
    problems: list[str] = field(default_factory=list)
    """The daemon's last warnings/errors when it did not transcribe every file."""
    walls: list[float] = field(default_factory=list)
    """Wall seconds of every round (the outcome itself is the best round)."""
    timeline: Timeline | None = None
    """The service's submits and completions, in seconds after the process started."""
    started_s: float | None = None
    """The daemon's ``daemon_started`` log line, in seconds after the process started."""
    uploads: list[UploadTiming] = field(default_factory=list)
    """Every finished upload as the fake saw it (wall-clock seconds)."""
    process_started_at: float = 0.0
    """The contender's process start, wall clock."""

    @property
    def requests_per_job(self) -> float:
        return self.counters.total_requests / self.ran_files

    @property
    def polls_per_job(self) -> float:
        return self.counters.polls / self.ran_files


def webhooks_available() -> bool:
    """Whether the daemon has webhook mode (its ``transcribed.webhooks`` module imports)."""
    try:
        importlib.import_module("transcribed.webhooks")
    except ImportError:
        return False
    return True


def webhook_settings() -> dict[str, str]:
    """``webhook_url`` and the ``http.listen`` its receiver needs under ``run --once``."""
    port = free_port()
    return {
        "assemblyai.webhook_url": f"http://127.0.0.1:{port}/webhook",
        "http.listen": f"127.0.0.1:{port}",
    }


def _daemon(
    name: str, files: list[Path], size: Size, root: Path, extra: dict[str, Any] | None = None
) -> Outcome:
    return run_daemon(name, files, size.service, root, 20 * size.ideal_s + 120, extra)


def run_daemon(
    name: str,
    files: list[Path],
    service: Mapping[str, Any],
    root: Path,
    timeout_s: float,
    extra: dict[str, Any] | None = None,
    during: During | None = None,
    until_outputs: int | None = None,
) -> Outcome:
    """``transcribed run --once`` with default settings on ``files``, against a fresh fake
    with ``service`` settings; ``extra`` are the only settings the scenario gives.

    With ``until_outputs``, the long-running daemon instead (it also takes files that appear
    later), stopped with SIGTERM once that many transcripts are written."""
    folders = Folders.make(root)
    age(copy_files(files, folders.inbox))
    with FakeServer(**service, log_path=root / "fake.log") as fake:
        config = write_daemon_config(folders, fake.base_url, extra)
        child = start_daemon(folders, config, once=until_outputs is None)
        if during is not None:
            during(fake, folders, child)
        if until_outputs is None:
            usage = child.wait(timeout_s=timeout_s)
        else:
            deadline = time.monotonic() + timeout_s
            while child.running and time.monotonic() < deadline:
                if count_outputs(folders.outbox) >= until_outputs:
                    break
                time.sleep(0.1)
            usage = child.stop()
        counters = fake.counters()
        timeline = fake.timeline().since(child.started_at)
        uploads = fake.uploads()
    last = last_output_at(folders.outbox)
    done = count_outputs(folders.outbox)
    return Outcome(
        name=name,
        ran_files=len(files),
        scale=1.0,
        wall_s=usage.ended_at - child.started_at,
        last_output_s=None if last is None else last - child.started_at,
        counters=counters,
        cpu_s=usage.cpu_s,
        done=done,
        exit_code=usage.exit_code,
        problems=log_problems(folders.log) if done < len(files) or usage.exit_code else [],
        timeline=timeline,
        started_s=_logged_at(folders.log, "daemon_started", child.started_at),
        uploads=uploads,
        process_started_at=child.started_at,
    )


def _logged_at(log: Path, event: str, start: float) -> float | None:
    """When the daemon first logged ``event``, in seconds after ``start``."""
    for line in LogFollower(log).poll():
        if line.get("event") == event and "timestamp" in line:
            return event_time(line) - start
    return None


def _client(
    name: str, module: str, files: list[Path], size: Size, root: Path, scale: float
) -> Outcome:
    timeout_s = 20 * size.ideal_s + 30 * len(files) + 120
    return run_client(name, module, files, size.service, root, timeout_s, scale)


def run_client(
    name: str,
    module: str,
    files: list[Path],
    service: Mapping[str, Any],
    root: Path,
    timeout_s: float,
    scale: float = 1.0,
) -> Outcome:
    """A client program (``bench.sdk_client``...) on ``files`` against a fresh fake."""
    out = root / "outbox"
    root.mkdir(parents=True, exist_ok=True)
    with FakeServer(**service, log_path=root / "fake.log") as fake:
        argv = [PYTHON, "-m", module, "--base-url", fake.base_url, "--api-key", API_KEY]
        with (root / "client.log").open("wb") as log:
            child = Child(
                [*argv, "--out", str(out), *map(str, files)],
                env=clean_env(),
                stdout=log,
                stderr=log,
            )
            usage = child.wait(timeout_s=timeout_s)
        counters = fake.counters()
        timeline = fake.timeline().since(child.started_at)
        uploads = fake.uploads()
    last = last_output_at(out)
    return Outcome(
        name=name,
        ran_files=len(files),
        scale=scale,
        wall_s=(usage.ended_at - child.started_at) * scale,
        last_output_s=None if last is None else (last - child.started_at) * scale,
        counters=counters,
        cpu_s=usage.cpu_s * scale,
        done=count_outputs(out),
        exit_code=usage.exit_code,
        # A subset scaled up has no whole-backlog timeline.
        timeline=timeline if scale == 1.0 else None,
        uploads=uploads,
        process_started_at=child.started_at,
    )


def best_of(outcomes: list[Outcome]) -> Outcome:
    """The round with the shortest wall time, remembering every round's wall time."""
    best = min(outcomes, key=lambda o: o.wall_s)
    best.walls = [o.wall_s for o in outcomes]
    return best


def run(quick: bool) -> list[Table]:
    tables = _run_size(QUICK if quick else FULL)
    return tables + _run_size(FREE_QUICK if quick else FREE)


def _run_size(size: Size) -> list[Table]:
    rounds: dict[str, list[Outcome]] = {"polling": [], "webhooks": [], "sdk": []}
    sequential: Outcome | None = None
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        root = Path(tmp)
        files = make_audio_files(root / "source", size.files, seed=400)
        # Rounds interleave the contenders, so that a busy spell of the machine hurts them alike.
        for index in range(size.rounds):
            rounds["polling"].append(
                _daemon("daemon, polling (run --once)", files, size, root / f"polling{index}")
            )
            if webhooks_available():
                rounds["webhooks"].append(
                    _daemon(
                        "daemon, webhooks (run --once)",
                        files,
                        size,
                        root / f"webhooks{index}",
                        webhook_settings(),
                    )
                )
            rounds["sdk"].append(
                _client(
                    "SDK transcribe_group",
                    "bench.sdk_client",
                    files,
                    size,
                    root / f"sdk{index}",
                    scale=1.0,
                )
            )
        subset = files[: size.sequential_files]
        if subset:
            sequential = _client(
                f"sequential loop (ran {len(subset)} files, x{size.files / len(subset):g})",
                "bench.tutorial_client",
                subset,
                size,
                root / "sequential",
                scale=size.files / len(subset),
            )
    polling, sdk = best_of(rounds["polling"]), best_of(rounds["sdk"])
    webhooks = best_of(rounds["webhooks"]) if rounds["webhooks"] else None
    return [
        _results(size, polling, webhooks, sdk, sequential),
        _ratios(size, polling, webhooks, sdk),
        _time_budget(size, [o for o in (polling, webhooks, sdk) if o is not None]),
    ]


def webhook_problem(webhooks: Outcome | None) -> str | None:
    """Why the webhook figures cannot be judged, or None when webhook mode really ran."""
    if webhooks is None:
        return "webhook mode not available"
    if webhooks.counters.webhook_deliveries == 0:
        return "no webhook was delivered: the daemon did not ask for them"
    return None


def _results(
    size: Size,
    polling: Outcome,
    webhooks: Outcome | None,
    sdk: Outcome,
    sequential: Outcome | None,
) -> Table:
    table = Table(
        f"backlog: {size.files} files, fake latency {size.latency_s:g} s, "
        f"concurrency cap {size.cap}",
        [
            "contender", "wall s", "all rounds s", "last transcript s", "ideal s", "wall/ideal", "target",
            "result", "HTTP req/job", "polls/job", "list req", "webhooks", "client CPU s",
            "transcripts",
        ],
    )  # fmt: skip
    problem = webhook_problem(webhooks)
    targets = {polling.name: size.polling_target}
    if webhooks is not None:
        targets[webhooks.name] = size.webhooks_target
    else:
        table.add(
            "daemon, webhooks", "n/a (webhook mode not available)", "n/a", "n/a",
            fmt(size.ideal_s, 1),
            "n/a", f"<= {size.webhooks_target:g}x ideal", "n/a", *["n/a"] * 6,
        )  # fmt: skip
    for outcome in (polling, webhooks, sdk, sequential):
        if outcome is None:
            continue
        ratio = outcome.wall_s / size.ideal_s
        target = targets.get(outcome.name)
        result = verdict(ratio <= target) if target else "-"
        if outcome is webhooks and problem:
            result = f"n/a ({problem})"
        table.add(
            outcome.name,
            # Two decimals: a target like 1.05x is decided in hundredths of a second.
            fmt(outcome.wall_s, 2),
            ", ".join(f"{w:.2f}" for w in outcome.walls) or "-",
            fmt(outcome.last_output_s, 2),
            fmt(size.ideal_s, 1),
            fmt(ratio, 3),
            f"<= {target:g}x ideal" if target else "-",
            result,
            fmt(outcome.requests_per_job),
            fmt(outcome.polls_per_job),
            str(outcome.counters.lists),
            str(outcome.counters.webhook_deliveries),
            fmt(outcome.cpu_s),
            f"{outcome.done}/{outcome.ran_files}"
            + ("" if outcome.exit_code == 0 else f" (exit {outcome.exit_code})"),
        )
    table.notes += [
        f"wall: process start to exit, best of {size.rounds} round(s) (all rounds listed; "
        "rounds interleave the contenders); the other columns are from the best round. "
        "last transcript: process start to the newest transcript file written; ideal: "
        "latency x ceil(files / cap).",
        "daemon settings: the defaults; set are only the folders, the API URL (and the "
        "backend name and JSON logs the benchmark reads); the files are an hour old, so they "
        "are settled at once. Webhooks: assemblyai.webhook_url=http://127.0.0.1:PORT/webhook "
        "and http.listen=127.0.0.1:PORT, which its receiver needs under run --once.",
        "SDK: assemblyai "
        + _sdk_version()
        + ", defaults (3 s polling), speech_models=['universal-3-pro']; it writes the "
        "transcripts when transcribe_group returns.",
        (
            f"sequential loop: ran on the first {sequential.ran_files} files; its wall, last "
            f"transcript and CPU are multiplied by {sequential.scale:g} (linear "
            "extrapolation); requests per job are as measured."
        )
        if sequential is not None
        else "no sequential loop at this size.",
        "HTTP req/job: every request the fake saw (uploads, submits, polls, transcript-list "
        "requests, key checks) / files; polls/job: GET /v2/transcript/{id} / files; list req: "
        "GET /v2/transcript (total); webhooks: notifications the fake delivered with a 2xx. "
        "A fresh fake process per contender.",
    ]
    for outcome in (polling, webhooks):
        if outcome is not None:
            table.notes += [f"{outcome.name}: {line}" for line in outcome.problems]
    if webhooks is not None and problem:
        table.notes.append(
            f"the webhook contender ran but {problem}, so it measured the polling path again; "
            "its figures are shown and not judged."
        )
    return table


def _sdk_version() -> str:
    try:
        from importlib.metadata import version

        return version("assemblyai")
    except Exception:
        return "(version unknown)"


def _ratios(size: Size, polling: Outcome, webhooks: Outcome | None, sdk: Outcome) -> Table:
    table = Table(
        f"backlog (cap {size.cap}): daemon against the SDK",
        ["comparison", "value", "target", "result"],
    )
    problem = webhook_problem(webhooks)
    target = size.sdk_speedup_target
    wanted = "-" if target is None else f">= {target:g}"
    for label, daemon in (("polling", polling), ("webhooks", webhooks)):
        judged = label == "polling" or problem is None
        if daemon is None:
            table.add(f"SDK wall / daemon ({label}) wall", f"n/a ({problem})", wanted, "n/a")
            table.add(f"daemon ({label}) HTTP req/job vs SDK", "n/a", "<= SDK", "n/a")
            continue
        speedup = sdk.wall_s / daemon.wall_s
        fewer = daemon.requests_per_job <= sdk.requests_per_job
        table.add(
            f"SDK wall / daemon ({label}) wall",
            fmt(speedup),
            wanted,
            "-" if target is None else verdict(speedup >= target) if judged else f"n/a ({problem})",
        )
        table.add(
            f"daemon ({label}) HTTP req/job vs SDK",
            f"{daemon.requests_per_job:.2f} vs {sdk.requests_per_job:.2f}",
            "<= SDK",
            verdict(fewer) if judged else f"n/a ({problem})",
        )
    return table


def _time_budget(size: Size, outcomes: list[Outcome]) -> Table:
    """Where each contender's time beyond the ideal goes, from the service's own clock."""
    nth = size.binding_submit
    table = Table(
        f"backlog (cap {size.cap}): where the time beyond the ideal goes (best round)",
        [
            "contender", "start-up s", "first submit s", f"submit #{nth} s",
            "last completion s", "wall s", "beyond ideal s", "= until first submit",
            f"+ submits 1..{nth}", "+ service beyond ideal", "+ after last completion",
        ],
    )  # fmt: skip
    for outcome in outcomes:
        timeline = outcome.timeline
        if timeline is None or len(timeline.created) < nth or not timeline.completed:
            table.add(outcome.name, *["n/a"] * 10)
            continue
        first, bound, last = (
            timeline.created[0],
            timeline.created[nth - 1],
            timeline.completed[-1],
        )
        table.add(
            outcome.name,
            fmt(outcome.started_s, 3) if outcome.started_s is not None else "-",
            fmt(first, 3),
            fmt(bound, 3),
            fmt(last, 3),
            fmt(outcome.wall_s, 3),
            fmt(outcome.wall_s - size.ideal_s, 3),
            fmt(first, 3),
            fmt(bound - first, 3),
            fmt(last - bound - size.ideal_s, 3),
            fmt(outcome.wall_s - last, 3),
        )
    table.notes += [
        "Seconds after the contender's process started, from the fake's record of when it "
        "took each submit and completed each transcript. The fake starts a job at once while "
        f"fewer than {size.cap} run and the next queued one as each finishes, so the last "
        f"transcript completes {size.ideal_s:g} s after submit #{nth} at the earliest. The "
        "time beyond the ideal is then: the time until the first submit, the time to submit "
        f"the first {nth}, how much later than that earliest moment the last transcript "
        "completed (late submits of the later waves count here too), and the work after the "
        "last completion (noticing it, fetching, writing the transcripts, moving the source, "
        "exiting).",
        "start-up: until the daemon's daemon_started log line (imports, configuration, "
        "journal, HTTP receiver, key check).",
    ]
    return table
