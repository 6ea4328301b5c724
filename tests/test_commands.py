"""`transcribed status` and `transcribed retry`."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from conftest import (
    API_KEY,
    Folders,
    Services,
    expected_text,
    make_audio,
    overrides_for,
    settings_for,
)
from fakeapi import FakeAssemblyAI
from transcribed import cli as cli_module
from transcribed.cli import cli, use_io_threads
from transcribed.service import Service


def _args(folders: Folders, fake: FakeAssemblyAI) -> list[str]:
    out: list[str] = []
    for key, value in overrides_for(folders, fake).items():
        out += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    return out


async def test_status_counts_states_and_lists_recent_jobs_without_the_key(
    folders: Folders, fake: FakeAssemblyAI, capsys: pytest.CaptureFixture[str], services: Services
) -> None:
    make_audio(folders.inbox / "good.mp3", seed=1)
    (folders.inbox / "bad.mp3").write_text("not audio at all " * 300)
    assert await services.run(settings_for(folders, fake), once=True) == 1
    capsys.readouterr()

    assert cli(["status", "--json", *_args(folders, fake)], environ={}) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["archived"] == 1
    assert report["counts"]["failed"] == 1
    assert report["pending"] == 0
    assert {job["path"] for job in report["recent"]} == {"good.mp3", "bad.mp3"}

    assert cli(["status", *_args(folders, fake)], environ={}) == 0
    text = capsys.readouterr().out
    assert "archived" in text and "bad.mp3" in text and "error:" in text
    assert API_KEY not in text


def test_status_before_any_run_reports_zero(
    folders: Folders, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["status", "--json", "--set", f'state_dir="{folders.state}"'], environ={}) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["failed"] == 0


async def test_retry_moves_failed_sources_back_and_clears_reports(
    folders: Folders, fake: FakeAssemblyAI, capsys: pytest.CaptureFixture[str], services: Services
) -> None:
    sha = make_audio(folders.inbox / "sub" / "flaky.mp3", seed="flaky")
    fake.config.error_for.add(sha)
    assert await services.run(settings_for(folders, fake), once=True) == 1
    assert (folders.failed / "sub" / "flaky.mp3.error.json").is_file()

    assert cli(["retry", *_args(folders, fake)], environ={}) == 0
    assert "requeued 1" in capsys.readouterr().out
    assert (folders.inbox / "sub" / "flaky.mp3").is_file()
    assert not (folders.failed / "sub" / "flaky.mp3").exists()
    assert not (folders.failed / "sub" / "flaky.mp3.error.json").exists()

    fake.config.error_for.clear()
    assert await services.run(settings_for(folders, fake), once=True) == 0
    assert (folders.outbox / "sub" / "flaky.txt").read_text() == expected_text(sha) + "\n"


def test_retry_of_a_named_file_that_is_not_there_says_so(
    folders: Folders, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["retry", "--set", f'failed="{folders.failed}"', "--set", f'inbox="{folders.inbox}"']
    assert cli([*args, "nothing.mp3"], environ={}) == 1
    assert "1 not found" in capsys.readouterr().out


async def _threads_a_busy_pool_starts() -> list[str]:
    """Names of the threads the loop's default pool starts for eight calls that all block.

    A pool starts a thread per call while none is idle (these never are, until released), at
    the call itself: so after eight calls, the threads there are all it will have."""
    release = threading.Event()
    loop = asyncio.get_running_loop()
    calls = [loop.run_in_executor(None, release.wait, 10) for _ in range(8)]
    names = [t.name for t in threading.enumerate() if t.name.startswith("transcribed-io")]
    release.set()
    await asyncio.gather(*calls)
    return names


def test_blocking_file_work_runs_on_the_configured_threads() -> None:
    async def main() -> list[str]:
        use_io_threads(2)
        return await _threads_a_busy_pool_starts()

    assert len(asyncio.run(main())) == 2


def test_run_gives_its_loop_the_configured_io_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def run(_self: Service) -> int:
        seen.extend(await _threads_a_busy_pool_starts())
        return 0

    monkeypatch.setattr(Service, "run", run)
    monkeypatch.setattr(cli_module, "configure_logging", lambda *_args: None)
    assert cli(["run", "--once", "--set", "daemon.io_threads=3"], {}) == 0
    assert len(seen) == 3
