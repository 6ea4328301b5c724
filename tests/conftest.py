"""Shared fixtures: real folders in tmp_path and the fake API over real HTTP on 127.0.0.1.

Everything a test starts is stopped in teardown, also when the test fails: daemon subprocesses
(`Daemon`, reaped by an autouse fixture), in-process runs (`services`), mounts (`mounts`).
Ports are bound, never guessed: pass ``http.listen=127.0.0.1:0`` and read the real address back
(`Daemon.http_url`, `service_url`), or hold one with `held_port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fakeapi import FakeAssemblyAI, FakeConfig, fake_text_for
from fakeapi.config_file import write_toml
from transcribed.config import Settings, load_settings
from transcribed.journal import Journal
from transcribed.service import Service

API_KEY = "test-key-0123456789"


@dataclass
class Folders:
    root: Path
    inbox: Path
    outbox: Path
    done: Path
    failed: Path
    state: Path


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    f = Folders(
        root=tmp_path,
        inbox=tmp_path / "inbox",
        outbox=tmp_path / "outbox",
        done=tmp_path / "done",
        failed=tmp_path / "failed",
        state=tmp_path / "state",
    )
    f.inbox.mkdir()
    return f


@pytest.fixture
async def fake() -> AsyncIterator[FakeAssemblyAI]:
    async with FakeAssemblyAI(
        FakeConfig(api_keys=(API_KEY,), latency_s=0.2, concurrency=50)
    ) as server:
        yield server


def make_audio(path: Path, seed: int | str, size: int = 8000) -> str:
    """An MP3-looking file (ID3 header + random bytes); returns its sha256."""
    rng = random.Random(str(seed))
    data = b"ID3\x04\x00\x00\x00\x00\x00\x00" + rng.randbytes(size - 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def expected_text(sha256: str) -> str:
    return fake_text_for(sha256)


def overrides_for(folders: Folders, fake: FakeAssemblyAI | None, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "inbox": str(folders.inbox),
        "outbox": str(folders.outbox),
        "done": str(folders.done),
        "failed": str(folders.failed),
        "state_dir": str(folders.state),
        "watch.settle_s": 0.3,
        "http.listen": "",
        "assemblyai.poll_min_s": 0.05,
        "assemblyai.poll_max_s": 0.5,
        "assemblyai.retry_max_backoff_s": 1.0,
        "daemon.log_format": "json",
    }
    if fake is not None:
        values |= {
            "backend": "assemblyai",
            "assemblyai.base_url": fake.base_url,
            "assemblyai.api_key": API_KEY,
        }
    values.update(extra)
    return values


def settings_for(folders: Folders, fake: FakeAssemblyAI | None, **extra: Any) -> Settings:
    return load_settings(None, {}, overrides_for(folders, fake, **extra))


def write_config(folders: Folders, fake: FakeAssemblyAI | None, **extra: Any) -> Path:
    """A TOML config file holding the same settings, for subprocess runs."""
    return write_toml(folders.root / "transcribed.toml", overrides_for(folders, fake, **extra))


def daemon_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "transcribed", "run", "--config", str(config), *extra]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSCRIBED_", "ASSEMBLYAI"))}
    env.update(extra)
    return env


def discover(journal: Journal, path: str, size: int, mtime_ns: int) -> int | None:
    """One file through ``discover_many``: its new job id, or None when it is known."""
    return journal.discover_many([(path, size, mtime_ns)]).get(path)


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


async def run_cli(cmd: list[str], env: dict[str, str], timeout_s: float = 60) -> Completed:
    """Run a command without blocking the event loop (the fake API lives on it)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:  # timed out, or the test is being torn down
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


#: Daemons started by the running test; the autouse `_reap_daemons` fixture kills what is left.
_STARTED_DAEMONS: list[Daemon] = []


class Daemon:
    """A real `transcribed run` subprocess whose JSON log goes to a file we can follow.

    Each daemon leads its own process group, so teardown also reaches any worker it started.
    Several runs may share one log file: `events()` reads only this run's part of it.
    """

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or clean_env()
        self.proc: Any = None
        self._offset = 0

    async def start(self, *extra: str) -> Daemon:
        self._log = self.log_path.open("ab")
        self._offset = self._log.tell()
        self.proc = await asyncio.create_subprocess_exec(
            *daemon_command(self.config, *extra),
            env=self.env,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        _STARTED_DAEMONS.append(self)
        return self

    def events(self) -> list[dict[str, Any]]:
        with self.log_path.open("rb") as handle:
            handle.seek(self._offset)
            text = handle.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    async def wait_for_event(self, name: str, count: int = 1, timeout_s: float = 30) -> None:
        """Follow the log file until ``name`` has appeared ``count`` times in this run."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(1 for e in self.events() if e.get("event") == name) < count:
            if self.proc.returncode is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} before {name}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no {name} event within {timeout_s}s")
            await asyncio.sleep(0.05)

    async def http_url(self, timeout_s: float = 30) -> str:
        """The endpoint's real address, from its ``http_started`` line (use port 0)."""
        await self.wait_for_event("http_started", timeout_s=timeout_s)
        return str(next(e["url"] for e in self.events() if e.get("event") == "http_started"))

    async def signal(self, signum: int, timeout_s: float = 30) -> int:
        self.proc.send_signal(signum)
        code: int = await asyncio.wait_for(self.proc.wait(), timeout_s)
        self.close()
        return code

    async def kill(self) -> int:
        self.proc.kill()
        code: int = await self.proc.wait()
        self.close()
        return code

    async def reap(self, timeout_s: float = 30) -> None:
        """SIGKILL the daemon and its process group if still there, wait for it, close the log."""
        if self.proc is None:
            return
        if self.proc.returncode is None:  # not reaped yet, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        self.close()

    def close(self) -> None:
        self._log.close()


@pytest.fixture(autouse=True)
async def _reap_daemons() -> AsyncIterator[None]:
    """Kill and reap every `Daemon` the test started and left running, pass or fail."""
    yield
    leftovers = list(_STARTED_DAEMONS)
    _STARTED_DAEMONS.clear()
    stuck = []
    for daemon in reversed(leftovers):
        try:
            await daemon.reap()
        except TimeoutError:
            stuck.append(daemon.proc.pid)
    assert not stuck, f"daemons still there 30 s after SIGKILL: {stuck}"


class Services:
    """In-process `Service` runs, each an asyncio task, stopped in teardown.

    ``start`` returns the service and its task; ``run`` runs one to the end (``once=True``).
    Teardown asks every run still going to stop, waits out its grace period, then cancels it.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[Service, asyncio.Task[int]]] = []

    def start(self, settings: Settings, **options: Any) -> tuple[Service, asyncio.Task[int]]:
        service = Service(settings, **options)
        task = asyncio.create_task(service.run())
        self._runs.append((service, task))
        return service, task

    async def run(self, settings: Settings, **options: Any) -> int:
        _, task = self.start(settings, **options)
        return await task

    async def stop_all(self) -> None:
        runs, self._runs = self._runs, []
        for service, task in reversed(runs):
            if not task.done():
                if not service.stop.is_set():  # a second request would cut the drain short
                    service.request_stop()
                await asyncio.wait({task}, timeout=service.settings.daemon.grace_s + 10)
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    runs = Services()
    try:
        yield runs
    finally:
        await runs.stop_all()


async def service_url(service: Service, timeout_s: float = 30) -> str:
    """The in-process endpoint's real address once it is bound (``http.listen`` on port 0)."""
    await eventually(
        lambda: service.http is not None and service.http.port != 0, timeout_s, "http bound"
    )
    assert service.http is not None
    return service.http.url


@contextlib.contextmanager
def held_port(*, shareable: bool = False) -> Iterator[int]:
    """A loopback port bound, not listening, while the block runs: nobody else is given it.

    Connections to it are refused. ``shareable`` sets SO_REUSEADDR, so a server that sets it
    too (the daemon's endpoint does) can listen on this port while we hold it: its address can
    go into settings before it starts, with no window for another process to take the port.
    """
    with socket.socket() as sock:
        if shareable:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class Mounts:
    """Real mounts for disk-fault tests (root only: skips otherwise); teardown unmounts all."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    @staticmethod
    def _mount(what: str, *args: str) -> None:
        try:
            subprocess.run(["mount", *args], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot mount {what} here (needs root): {exc}")

    def tmpfs(self, folder: Path, size: str) -> None:
        self._mount("a tmpfs", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        self.points.append(folder)

    def read_only(self, folder: Path) -> None:
        """Bind ``folder`` onto itself, read-only."""
        self._mount("a bind mount", "--bind", str(folder), str(folder))
        self.points.append(folder)
        self._mount("a read-only bind mount", "-o", "remount,ro,bind", str(folder))

    def unmount(self, folder: Path) -> None:
        subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)
        self.points.remove(folder)

    def unmount_all(self) -> None:
        while self.points:
            folder = self.points.pop()
            subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    held = Mounts()
    try:
        yield held
    finally:
        held.unmount_all()


async def eventually(predicate: Any, timeout_s: float = 30, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, re-checking on a short tick (for files on disk)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout_s}s")
        await asyncio.sleep(0.05)
