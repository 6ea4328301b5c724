"""Shared fixtures: real folders in tmp_path and the fake API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fakeapi import FakeAssemblyAI, FakeConfig, fake_text_for
from fakeapi.config_file import write_toml
from transcribed.config import Settings, load_settings

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


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


async def run_cli(cmd: list[str], env: dict[str, str], timeout_s: float = 60) -> Completed:
    """Run a command without blocking the event loop (the fake API lives on it)."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


class Daemon:
    """A real `transcribed run` subprocess whose JSON log goes to a file we can follow."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or clean_env()
        self.proc: Any = None

    async def start(self, *extra: str) -> Daemon:
        import asyncio

        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *daemon_command(self.config, *extra), env=self.env, stdout=self._log, stderr=self._log
        )
        return self

    def events(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    async def wait_for_event(self, name: str, count: int = 1, timeout_s: float = 30) -> None:
        """Follow the log file until ``name`` has appeared ``count`` times."""
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(1 for e in self.events() if e.get("event") == name) < count:
            if self.proc.returncode is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} before {name}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no {name} event within {timeout_s}s")
            await asyncio.sleep(0.05)

    async def signal(self, signum: int, timeout_s: float = 30) -> int:
        import asyncio

        self.proc.send_signal(signum)
        code: int = await asyncio.wait_for(self.proc.wait(), timeout_s)
        self.close()
        return code

    async def kill(self) -> int:
        self.proc.kill()
        code: int = await self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        self._log.close()


async def eventually(predicate: Any, timeout_s: float = 30, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, re-checking on a short tick (for files on disk)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout_s}s")
        await asyncio.sleep(0.05)
