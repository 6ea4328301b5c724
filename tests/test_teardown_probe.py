"""Tests that fail on purpose, to show teardown still stops what they started.

Skipped unless TEARDOWN_PROBE_DIR names a folder: then each test starts something, notes it
there (a daemon's pid, a mount point) and fails. scripts/check-test-teardown.sh runs them and
then checks that no daemon process and no mount is left behind.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from conftest import Daemon, Folders, Mounts, write_config
from fakeapi import FakeAssemblyAI

PROBE_DIR = os.environ.get("TEARDOWN_PROBE_DIR")

pytestmark = pytest.mark.skipif(
    not PROBE_DIR, reason="fails on purpose; run by scripts/check-test-teardown.sh"
)


def _note(name: str, value: object) -> None:
    assert PROBE_DIR is not None
    folder = Path(PROBE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"{value}\n")


async def _running_daemon(folders: Folders, fake: FakeAssemblyAI, name: str) -> Daemon:
    daemon = await Daemon(write_config(folders, fake), folders.root / "daemon.log").start()
    await daemon.wait_for_event("watcher_started")
    _note(f"{name}.pid", daemon.proc.pid)
    return daemon


async def test_a_failed_assertion_leaves_no_daemon_running(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    await _running_daemon(folders, fake, "assertion")
    pytest.fail("deliberate failure with a daemon running")


@pytest.mark.timeout(5)
async def test_a_test_that_times_out_leaves_no_daemon_running(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    await _running_daemon(folders, fake, "timeout")
    await asyncio.Event().wait()  # never set: the per-test timeout ends the test


def test_a_failed_test_leaves_no_mount(folders: Folders, mounts: Mounts) -> None:
    folders.outbox.mkdir()
    mounts.read_only(folders.outbox)
    _note("mount.path", folders.outbox)
    pytest.fail("deliberate failure with a read-only bind mount in place")
