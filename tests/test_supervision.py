"""Supervision: a part of the daemon that dies is never silent.

For each long-running part (intake, pool, status sweeper, local engine supervisor, the HTTP
endpoint and the webhook receiver it serves), a test makes it fail at start-up and mid-run, and
checks the exit code, the ``component_failed`` line, the 503 from ``/readyz`` that names the
part, that no file is lost and that the journal stays consistent. The daemon runs in-process so
that a failure can be injected into one part; everything else is real (the fake API over HTTP,
files, the journal, the local engine's worker processes).

To see the 503, a job is kept in flight (its upload answer held back by the fake) when the part
fails: the daemon drains it before exiting, and answers ``/readyz`` meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from conftest import (
    Daemon,
    Folders,
    clean_env,
    eventually,
    expected_text,
    make_audio,
    run_cli,
    settings_for,
    write_config,
)
from fakeapi import ROUTE_UPLOAD, FakeAssemblyAI
from transcribed.backends.assemblyai_status import StatusTracker
from transcribed.errors import ExitCode
from transcribed.journal import Journal
from transcribed.pool import Pool
from transcribed.service import Service
from transcribed.watcher import Watcher

#: How long the fake holds back the answer to the upload kept in flight.
HELD_UPLOAD_S = 3.0


@dataclass
class Run:
    """A Service running in-process: its log lines, and every /readyz answer seen."""

    service: Service
    logs: list[dict[str, Any]]
    task: asyncio.Task[int]
    readyz: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def failures(self, part: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["event"] == "component_failed" and e["part"] == part]

    def saw_503_naming(self, part: str) -> bool:
        return any(
            status == 503 and str(body["checks"].get(part, "")).startswith("failed")
            for status, body in self.readyz
        )


async def _probe(service: Service, seen: list[tuple[int, dict[str, Any]]]) -> None:
    """Ask /readyz as often as the loop allows while the endpoint is up."""
    while service.http is None or not service.http.serving:
        await asyncio.sleep(0.01)
    url = f"{service.http.url}/readyz"
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    seen.append((response.status, await response.json()))
            except aiohttp.ClientError:
                await asyncio.sleep(0.01)


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[Run]:
    """The service as a task, its log captured and /readyz probed; always stopped on exit."""
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(service.run())
        run = Run(service, logs, task)
        probe = asyncio.create_task(_probe(service, run.readyz))
        try:
            yield run
        finally:
            if not task.done():
                service.request_stop()
                service.request_stop()  # the second one ends the drain at once
            with suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 30)
            if not task.done():
                task.cancel()
                with suppress(BaseException):
                    await task
            probe.cancel()
            with suppress(BaseException):
                await probe


def _consistent(folders: Folders, names: list[str]) -> None:
    """The journal is intact and agrees with the folders; every dropped file is somewhere."""
    with sqlite3.connect(folders.state / "journal.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT path, state, source_moved, final_path FROM jobs").fetchall()
    for path, state, moved, final in rows:
        if not moved:
            assert (folders.inbox / path).is_file(), f"{path} ({state}) left the inbox"
        elif state == "archived":
            assert (folders.done / final).is_file(), f"{path} archived but not in done/"
        else:
            assert state == "failed" and (folders.failed / final).is_file(), (path, state)
    for name in names:
        places = (folders.inbox / name, folders.done / name, folders.failed / name)
        assert any(p.is_file() for p in places), f"{name} was lost"


async def _finish_and_check(folders: Folders, fake: FakeAssemblyAI, shas: dict[str, str]) -> None:
    """A clean restart transcribes every file, none paid twice."""
    fake.release_jobs()
    assert await Service(settings_for(folders, fake), once=True).run() == ExitCode.OK
    for name, sha in shas.items():
        stem = name.rsplit(".", 1)[0]
        assert (folders.outbox / f"{stem}.txt").read_text() == expected_text(sha) + "\n"
        assert fake.counters.submits_by_sha256[sha] == 1, f"{name} submitted twice"


def _seed(folders: Folders, names: list[str]) -> dict[str, str]:
    """Files already in the journal (as a previous run left them): work for the pool from
    its first turn, before the intake has looked at anything."""
    shas = {name: make_audio(folders.inbox / name, seed=name) for name in names}
    folders.state.mkdir(parents=True, exist_ok=True)
    with Journal(folders.state) as journal:
        files = []
        for name in names:
            info = (folders.inbox / name).stat()
            files.append((name, info.st_size, info.st_mtime_ns))
        journal.discover_many(files)
    return shas


def _hold_one_upload(fake: FakeAssemblyAI) -> None:
    """The next upload takes effect, and its answer is held back for HELD_UPLOAD_S."""
    fake.config.faults.slow_s = HELD_UPLOAD_S
    fake.fail_next(ROUTE_UPLOAD, kind="slow", times=1)


class Trap:
    """Makes one method raise once ``armed`` is set."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.armed = asyncio.Event()
        self.sprung = 0

    def async_method(self, original: Callable[..., Awaitable[Any]]) -> Any:
        trap = self

        async def method(*args: Any, **kwargs: Any) -> Any:
            if trap.armed.is_set():
                trap.sprung += 1
                raise trap.error
            return await original(*args, **kwargs)

        return method


async def _upload_in_flight(fake: FakeAssemblyAI) -> None:
    await fake.wait_until(lambda: fake.counters.uploads_completed >= 1, 30)


async def _fails_loudly(run: Run, part: str, folders: Folders, names: list[str]) -> None:
    assert await asyncio.wait_for(asyncio.shield(run.task), 60) == ExitCode.FAILED
    failures = run.failures(part)
    assert len(failures) == 1, [e for e in run.logs if e["event"] == "component_failed"]
    assert failures[0]["error"]
    assert run.saw_503_naming(part), run.readyz[-3:]
    stopped = [e for e in run.logs if e["event"] == "daemon_stopped"]
    assert stopped and part in stopped[0]["failed_parts"]
    _consistent(folders, names)


# -- the intake -----------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["start-up", "mid-run"])
async def test_a_dead_intake_stops_the_daemon_loudly(
    folders: Folders, fake: FakeAssemblyAI, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    names = ["a.mp3", "b.mp3"]
    shas = _seed(folders, names) if when == "start-up" else {}
    trap = Trap(OSError(5, "Input/output error", str(folders.inbox)))
    monkeypatch.setattr(Watcher, "scan", trap.async_method(Watcher.scan))
    fake.hold_jobs()
    settings = settings_for(folders, fake, **{"http.listen": "127.0.0.1:0"})
    async with running(Service(settings)) as run:
        if when == "start-up":
            _hold_one_upload(fake)
            trap.armed.set()  # the intake's first scan fails
        else:
            await asyncio.wait_for(run.service.watcher_ready.wait(), 30)
            _hold_one_upload(fake)
            for name in names:
                shas[name] = make_audio(folders.inbox / name, seed=name)
            await _upload_in_flight(fake)
            # The next scan (a folder moved in, or the periodic rescan) fails.
            trap.armed.set()
            (folders.inbox / "moved-in").mkdir()
        await _fails_loudly(run, "intake", folders, names)
    monkeypatch.undo()
    await _finish_and_check(folders, fake, shas)


# -- the pool ---------------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["start-up", "mid-run"])
async def test_a_dead_pool_stops_the_daemon_loudly(
    folders: Folders, fake: FakeAssemblyAI, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    names = ["a.mp3", "b.mp3", "c.mp3"]
    shas = _seed(folders, names)
    trap = Trap(RuntimeError("the pool's dispatch broke"))
    # The pool's loop sleeps between turns: the trap fires on its next turn.
    monkeypatch.setattr(Pool, "_sleep", trap.async_method(Pool._sleep))
    fake.hold_jobs()
    _hold_one_upload(fake)
    settings = settings_for(folders, fake, **{"http.listen": "127.0.0.1:0"})
    async with running(Service(settings)) as run:
        if when == "mid-run":
            await fake.wait_until(lambda: fake.counters.submits >= 2, 30)
        await _upload_in_flight(fake)
        trap.armed.set()
        run.service.pool.wake()  # type: ignore[union-attr]
        await _fails_loudly(run, "pool", folders, names)
    monkeypatch.undo()
    await _finish_and_check(folders, fake, shas)


# -- the status sweeper (AssemblyAI) ----------------------------------------------------------
@pytest.mark.parametrize("when", ["start-up", "mid-run"])
async def test_a_dead_status_sweeper_stops_the_daemon_loudly(
    folders: Folders, fake: FakeAssemblyAI, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    names = ["a.mp3", "b.mp3"]
    shas = _seed(folders, names)
    trap = Trap(RuntimeError("the sweeper broke"))
    if when == "start-up":

        async def run_then_fail(self: StatusTracker) -> None:
            await trap.armed.wait()
            raise trap.error

        monkeypatch.setattr(StatusTracker, "run", run_then_fail)
    else:
        monkeypatch.setattr(StatusTracker, "sweep", trap.async_method(StatusTracker.sweep))
    fake.hold_jobs()
    _hold_one_upload(fake)
    settings = settings_for(folders, fake, **{"http.listen": "127.0.0.1:0"})
    async with running(Service(settings)) as run:
        await _upload_in_flight(fake)
        if when == "mid-run":
            await fake.wait_until(lambda: fake.counters.submits >= 1, 30)
        trap.armed.set()
        await _fails_loudly(run, "status sweeper", folders, names)
    monkeypatch.undo()
    await _finish_and_check(folders, fake, shas)


# -- the HTTP endpoint, and the webhook receiver it serves ------------------------------------
def _webhook_settings(folders: Folders, fake: FakeAssemblyAI, listen: str) -> Any:
    return settings_for(
        folders,
        fake,
        **{"http.listen": listen, "assemblyai.webhook_url": "http://127.0.0.1:9/webhook"},
    )


@pytest.mark.parametrize("webhooks", [False, True], ids=["endpoint", "webhook-receiver"])
async def test_an_endpoint_that_cannot_listen_at_start_up_is_exit_1_naming_http_listen(
    folders: Folders, fake: FakeAssemblyAI, webhooks: bool
) -> None:
    shas = {"a.mp3": make_audio(folders.inbox / "a.mp3", seed="a")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = (
            _webhook_settings(folders, fake, listen)
            if webhooks
            else settings_for(folders, fake, **{"http.listen": listen})
        )
        with structlog.testing.capture_logs() as logs:
            assert await Service(settings).run() == ExitCode.FAILED
    failed = [e for e in logs if e["event"] == "component_failed"]
    assert [e["part"] for e in failed] == ["http"]
    assert "http.listen" in failed[0]["error"] and "address in use" in failed[0]["error"]
    assert fake.counters.uploads_started == 0  # nothing was taken before the endpoint was up
    _consistent(folders, list(shas))
    await _finish_and_check(folders, fake, shas)


@pytest.mark.parametrize("webhooks", [False, True], ids=["endpoint", "webhook-receiver"])
async def test_an_endpoint_that_stops_listening_mid_run_stops_the_daemon_loudly(
    folders: Folders, fake: FakeAssemblyAI, webhooks: bool
) -> None:
    names = ["a.mp3", "b.mp3"]
    shas = _seed(folders, names)
    fake.hold_jobs()
    _hold_one_upload(fake)
    settings = (
        _webhook_settings(folders, fake, "127.0.0.1:0")
        if webhooks
        else settings_for(folders, fake, **{"http.listen": "127.0.0.1:0"})
    )
    async with running(Service(settings)) as run:
        await _upload_in_flight(fake)
        http = run.service.http
        assert http is not None
        readiness_seen: list[dict[str, str]] = []
        original = run.service.readiness

        def recording() -> dict[str, str]:
            readiness_seen.append(parts := original())
            return parts

        run.service.readiness = recording  # type: ignore[method-assign]
        for sock in http._sockets:
            sock.shutdown(socket.SHUT_RDWR)  # accept() now fails: the listening socket broke
        assert await asyncio.wait_for(asyncio.shield(run.task), 60) == ExitCode.FAILED
        failed = run.failures("http")
        assert len(failed) == 1 and "Invalid argument" in failed[0]["error"]
        # The endpoint itself is what died, so nothing can ask it; the daemon's own view:
        assert run.service.readiness()["http"].startswith("failed")
        assert not run.service.alive()
    _consistent(folders, names)
    await _finish_and_check(folders, fake, shas)


# -- the local engine's supervisor ------------------------------------------------------------
def _model_copy(tmp: Path) -> Path:
    from transcribed.backends.local import resolve_model

    model = tmp / "model"
    shutil.copytree(resolve_model("tiny.en"), model)
    return model


@pytest.mark.local
async def test_a_local_engine_that_cannot_load_at_start_up_fails_loudly_naming_it(
    folders: Folders,
) -> None:
    pytest.importorskip("faster_whisper")
    model = _model_copy(folders.root)
    (model / "model.bin").write_bytes(b"not a model")
    shutil.copy(Path(__file__).parent.parent / "samples" / "weather.mp3", folders.inbox)
    settings = settings_for(
        folders, None, backend="local", **{"http.listen": "127.0.0.1:0", "local.model": str(model)}
    )
    async with running(Service(settings)) as run:
        assert await asyncio.wait_for(asyncio.shield(run.task), 120) == ExitCode.CONFIG
        failed = run.failures("backend")
        assert len(failed) == 1 and "cannot load the local model" in failed[0]["error"]
        # While it tried, /readyz said the backend was not ready.
        assert any(
            status == 503 and body["checks"]["backend"] == "starting" for status, body in run.readyz
        )
    _consistent(folders, ["weather.mp3"])
    assert (folders.inbox / "weather.mp3").is_file()


@pytest.mark.local
async def test_a_local_engine_whose_workers_cannot_be_restarted_stops_the_daemon_loudly(
    folders: Folders,
) -> None:
    pytest.importorskip("faster_whisper")
    model = _model_copy(folders.root)
    settings = settings_for(
        folders,
        None,
        backend="local",
        **{"http.listen": "127.0.0.1:0", "local.model": str(model), "local.workers": 1},
    )
    async with running(Service(settings)) as run:
        await asyncio.wait_for(run.service.watcher_ready.wait(), 120)
        backend = run.service.backend
        pid = backend.worker_pids[0]  # type: ignore[union-attr]
        assert pid is not None
        # The model goes away, then the worker dies: it cannot be brought back.
        (model / "model.bin").write_bytes(b"gone")
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.wait_for(asyncio.shield(run.task), 120) == ExitCode.FAILED
        failed = run.failures("local engine")
        assert len(failed) == 1
        assert any(e["event"] == "local_worker_died" for e in run.logs)
        assert run.saw_503_naming("local engine"), run.readyz[-3:]
    _consistent(folders, [])


# -- the inbox --------------------------------------------------------------------------------
async def test_a_deleted_inbox_is_reported_and_watched_again_when_it_returns(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    settle_s = 0.3
    settings = settings_for(
        folders,
        fake,
        **{
            "http.listen": "127.0.0.1:0",
            "watch.settle_s": settle_s,
            "watch.rescan_interval_s": 3600.0,  # only the watch can find the new file
        },
    )
    async with running(Service(settings)) as run:
        await asyncio.wait_for(run.service.watcher_ready.wait(), 30)
        shutil.rmtree(folders.inbox)
        await eventually(
            lambda: any(e["event"] == "inbox_unavailable" for e in run.logs), 10, "report"
        )
        await eventually(
            lambda: any(
                status == 503 and body["checks"]["intake"].startswith("inbox unavailable")
                for status, body in run.readyz
            ),
            10,
            "a 503 naming the inbox",
        )
        folders.inbox.mkdir()
        await eventually(
            lambda: any(e["event"] == "inbox_available" for e in run.logs), 10, "return"
        )
        await eventually(
            lambda: any(e["event"] == "watcher_started" for e in run.logs[-20:]), 10, "watch"
        )
        loop = asyncio.get_running_loop()
        dropped_at = loop.time()
        sha = make_audio(folders.inbox / "back.mp3", seed="back")
        await eventually(
            lambda: any(
                e["event"] == "file_detected" and e.get("path") == "back.mp3" for e in run.logs
            ),
            settle_s + 1.0 + 5.0,  # measured below against the promise, with room to report
            "detection",
        )
        detected_s = loop.time() - dropped_at
        assert detected_s <= settle_s + 1.0, f"detected after {detected_s:.2f}s"
        await eventually(lambda: (folders.outbox / "back.txt").exists(), 30, "transcript")
        assert (folders.outbox / "back.txt").read_text() == expected_text(sha) + "\n"
        assert sum(1 for e in run.logs if e["event"] == "inbox_unavailable") == 1
        assert run.readyz[-1][0] == 200


async def test_the_inotify_watch_limit_falls_back_to_polling_and_files_still_flow(
    folders: Folders, fake: FakeAssemblyAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchfiles

    real_awatch = watchfiles.awatch
    refused: list[bool] = []

    def limited_awatch(*paths: Any, force_polling: bool = False, **kwargs: Any) -> Any:
        if not force_polling:
            refused.append(True)
            # What watchfiles raises when inotify's max_user_watches is reached.
            raise OSError('OS file watch limit reached. about ["..."]')
        return real_awatch(*paths, force_polling=True, **kwargs)

    monkeypatch.setattr(watchfiles, "awatch", limited_awatch)
    settings = settings_for(
        folders, fake, **{"watch.poll_delay_ms": 100, "watch.rescan_interval_s": 3600.0}
    )
    async with running(Service(settings)) as run:
        await asyncio.wait_for(run.service.watcher_ready.wait(), 30)
        sha = make_audio(folders.inbox / "late.mp3", seed="late")
        await eventually(lambda: (folders.outbox / "late.txt").exists(), 30, "transcript")
        warnings = [e for e in run.logs if e["event"] == "watch_limit_reached"]
        assert len(warnings) == 1
        assert "fs.inotify.max_user_watches" in warnings[0]["hint"]
        assert warnings[0]["fallback"] == "polling"
        assert refused == [True]
        assert any(e["event"] == "watcher_started" and e["force_polling"] for e in run.logs)
    assert (folders.outbox / "late.txt").read_text() == expected_text(sha) + "\n"
    assert not [e for e in run.logs if e["event"] == "component_failed"]


# -- the port ---------------------------------------------------------------------------------
async def test_run_once_needs_no_port_even_when_the_default_one_is_taken(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    sha = make_audio(folders.inbox / "a.mp3", seed="once")
    config = write_config(folders, fake)
    text = config.read_text().replace('listen = ""\n', "")
    assert "listen" not in text  # http.listen is left unset, as a user's file would
    config.write_text(text)
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 8765))
            holder.listen()
        except OSError:
            pass  # somebody else holds it already: just as good
        else:
            assert holder.getsockname()[1] == 8765
        done = await run_cli(
            [*_cli(config), "--once"], clean_env(TRANSCRIBED_DAEMON__LOG_FORMAT="json")
        )
    finally:
        holder.close()
    assert done.returncode == 0, done.stderr + done.stdout
    assert (folders.outbox / "a.txt").read_text() == expected_text(sha) + "\n"
    assert not any(e["event"] == "http_started" for e in done.events())


async def test_a_daemon_whose_port_is_taken_exits_1_naming_http_listen(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(folders, fake, **{"http.listen": f"127.0.0.1:{port}"})
        daemon = Daemon(config, folders.root / "daemon.log")
        await daemon.start()
        try:
            code = await asyncio.wait_for(daemon.proc.wait(), 60)
        finally:
            if daemon.proc.returncode is None:
                await daemon.kill()
            else:
                daemon.close()
    assert code == ExitCode.FAILED
    failed = [e for e in daemon.events() if e["event"] == "component_failed"]
    assert [e["part"] for e in failed] == ["http"]
    assert "http.listen" in failed[0]["error"]


def _cli(config: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "transcribed", "run", "--config", str(config)]


# -- the watchdog -----------------------------------------------------------------------------
async def test_the_watchdog_is_fed_only_while_every_part_is_alive() -> None:
    import tempfile

    from transcribed.systemd import Notifier

    # A socket path must fit in 108 bytes, which pytest's tmp_path may not.
    folder = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
    path = os.path.join(folder, "notify.sock")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    manager.setblocking(False)
    alive = True
    notifier = Notifier(path, watchdog_s=0.05)
    ticks = itertools.count()
    keepalive = asyncio.create_task(
        notifier.keepalive(lambda: f"tick {next(ticks)}", healthy=lambda: alive)
    )
    loop = asyncio.get_running_loop()
    messages: list[str] = []

    async def until(count: int, key: str) -> None:
        async with asyncio.timeout(30):
            while sum(1 for m in messages if m.startswith(key)) < count:
                messages.append((await loop.sock_recv(manager, 4096)).decode())

    try:
        await until(3, "WATCHDOG=1")
        alive = False  # a part died: systemd must be left to notice
        fed = sum(1 for m in messages if m.startswith("WATCHDOG=1"))
        statuses = sum(1 for m in messages if m.startswith("STATUS="))
        await until(statuses + 5, "STATUS=")
        # At most the ping already on its way when the part died.
        assert sum(1 for m in messages if m.startswith("WATCHDOG=1")) <= fed + 1
    finally:
        keepalive.cancel()
        with suppress(asyncio.CancelledError):
            await keepalive
        manager.close()
        shutil.rmtree(folder, ignore_errors=True)


# -- a full state_dir -------------------------------------------------------------------------
@pytest.fixture
def small_state_dir(folders: Folders) -> Any:
    """state_dir on a 1 MiB tmpfs of its own, unmounted after the test whatever happens."""
    import subprocess

    folders.state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folders.state)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folders.state
    finally:
        subprocess.run(["umount", "-l", str(folders.state)], check=False)


async def test_a_full_state_dir_is_reported_and_files_are_taken_once_there_is_room(
    folders: Folders, fake: FakeAssemblyAI, small_state_dir: Path
) -> None:
    settings = settings_for(
        folders, fake, **{"http.listen": "127.0.0.1:0", "watch.rescan_interval_s": 3600.0}
    )
    async with running(Service(settings)) as run:
        await asyncio.wait_for(run.service.watcher_ready.wait(), 30)
        filler = small_state_dir / "filler"
        with suppress(OSError), filler.open("wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        sha = make_audio(folders.inbox / "while-full.mp3", seed="full")
        await eventually(
            lambda: any(e["event"] == "journal_write_failed" for e in run.logs), 30, "report"
        )
        await eventually(
            lambda: any(
                status == 503 and body["checks"]["intake"].startswith("cannot record new files")
                for status, body in run.readyz
            ),
            10,
            "a 503 naming the intake",
        )
        assert not run.task.done()
        filler.unlink()
        await eventually(lambda: (folders.outbox / "while-full.txt").exists(), 30, "transcript")
        assert any(e["event"] == "journal_write_recovered" for e in run.logs)
        assert sum(1 for e in run.logs if e["event"] == "journal_write_failed") == 1
    assert (folders.outbox / "while-full.txt").read_text() == expected_text(sha) + "\n"
    assert fake.counters.submits_by_sha256[sha] == 1
    assert not [e for e in run.logs if e["event"] == "component_failed"]
