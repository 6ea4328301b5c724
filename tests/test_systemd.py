"""systemd integration: the notify protocol over a real socket, and the unit file's checks."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conftest import Daemon, Folders, clean_env, make_audio, write_config
from fakeapi import FakeAssemblyAI
from transcribed.config import DaemonSettings
from transcribed.systemd import Notifier, watchdog_interval_s

UNIT = Path(__file__).resolve().parents[1] / "config" / "transcribed.service"
Message = dict[str, str]


class NotifyListener:
    """The service manager's end of $NOTIFY_SOCKET: collects each datagram as a dict."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            lines = data.decode().splitlines()
            self.messages.append(dict(line.partition("=")[::2] for line in lines))
            self._changed.set()

    async def wait_for(
        self, what: str, predicate: Callable[[list[Message]], bool], timeout_s: float = 30
    ) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout_s}s: {self.messages}") from None

    def index(self, key: str) -> int:
        return next(i for i, m in enumerate(self.messages) if key in m)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[str, NotifyListener]]:
    # A socket path must fit in 108 bytes, which pytest's tmp_path may not.
    folder = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
    path = os.path.join(folder, "notify.sock")
    listen = NotifyListener(path)
    task = asyncio.create_task(listen.receive())
    try:
        yield path, listen
    finally:
        task.cancel()
        listen.sock.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_daemon_notifies_ready_then_watchdog_and_status_then_stopping_on_sigterm(
    folders: Folders, fake: FakeAssemblyAI, listener: tuple[str, NotifyListener]
) -> None:
    path, notify = listener
    config = write_config(folders, fake)
    env = clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    daemon = await Daemon(config, folders.root / "daemon.log", env).start()
    await notify.wait_for("READY=1", lambda ms: any("READY" in m for m in ms))
    ready = notify.messages[notify.index("READY")]
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("watching:")

    # Pings every WATCHDOG_USEC/2 from the running daemon, not just once.
    def pings_after_ready(ms: list[Message]) -> int:
        return sum(1 for m in ms[notify.index("READY") :] if m.get("WATCHDOG") == "1")

    await notify.wait_for("two WATCHDOG=1", lambda ms: pings_after_ready(ms) >= 2)

    make_audio(folders.inbox / "one.mp3", seed="one")
    await notify.wait_for(
        "STATUS with one file done",
        lambda ms: any(m.get("STATUS", "").startswith("watching: 1 done") for m in ms),
    )
    assert await daemon.signal(signal.SIGTERM) == 0
    await notify.wait_for("STOPPING=1", lambda ms: any("STOPPING" in m for m in ms), 5)
    assert notify.messages[notify.index("STOPPING")]["STOPPING"] == "1"
    assert notify.index("READY") < notify.index("STOPPING")


async def test_abstract_socket_names_starting_with_at_are_reached() -> None:
    name = f"@transcribed-test-{os.getpid()}"
    notify = NotifyListener(b"\0" + name[1:].encode())
    task = asyncio.create_task(notify.receive())
    try:
        notifier = Notifier(name)
        notifier.ready("watching: 0 done")
        notifier.status("watching: 0 done")  # unchanged: not sent again
        notifier.status("watching: 1 done")
        await notify.wait_for("two messages", lambda ms: len(ms) >= 2)
        assert notify.messages == [
            {"READY": "1", "STATUS": "watching: 0 done"},
            {"STATUS": "watching: 1 done"},
        ]
    finally:
        task.cancel()
        notify.sock.close()


def test_outside_systemd_or_with_a_dead_socket_notifying_is_a_quiet_no_op(
    tmp_path: Path,
) -> None:
    assert not Notifier.from_environ({}).enabled
    assert Notifier.from_environ({}).notify("READY=1") is False
    dead = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert dead.notify("READY=1") is False
    assert dead.notify("STOPPING=1") is False


def test_watchdog_interval_is_half_watchdog_usec_and_only_for_the_named_pid() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(own) == 15.0
    assert watchdog_interval_s({**own, "WATCHDOG_PID": "1"}) is None
    # Without $NOTIFY_SOCKET there is nowhere to send pings.
    assert Notifier.from_environ({"WATCHDOG_USEC": "30000000"}).watchdog_s is None


# -- the unit file -----------------------------------------------------------------------------
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing (Debian package: systemd)",
)


@needs_systemd_analyze
def test_unit_file_verifies_cleanly(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists; the unit names the documented install
    # location (/opt/transcribed), so check a copy that points at this checkout's entry point.
    program = Path(sys.executable).parent / "transcribed"
    assert program.exists(), program
    text = UNIT.read_text()
    assert "ExecStart=/opt/transcribed/bin/transcribed run" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("/opt/transcribed/bin/transcribed", str(program)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_systemd_analyze
def test_unit_file_security_exposure_is_rated_ok() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0
    assert match.group(2) == "OK"


def test_unit_folders_are_writable_and_stop_timeout_exceeds_the_grace_period() -> None:
    text = UNIT.read_text()
    writable = [w.lstrip("-") for w in re.findall(r"^ReadWritePaths=(.+)$", text, re.M)]
    folders = re.findall(r"^Environment=TRANSCRIBED_(?:INBOX|OUTBOX|DONE|FAILED)=(.+)$", text, re.M)
    assert len(folders) == 4
    assert all(any(f.startswith(w) for w in writable) for f in folders)
    stop_timeout = re.search(r"^TimeoutStopSec=(\d+)$", text, re.M)
    assert stop_timeout is not None
    assert float(stop_timeout[1]) > DaemonSettings().grace_s
