"""``status`` and ``retry`` against hostile input: secrets echoed by the API, control
characters in file names, paths that leave failed/, and a reader that stops early."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import (
    API_KEY,
    Folders,
    clean_env,
    daemon_command,
    make_audio,
    run_cli,
    write_config,
)
from fakeapi import FakeAssemblyAI
from transcribed.journal import Journal


def _command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "transcribed", *args, "--config", str(config)]


# -- D13: the API key never stored -------------------------------------------------------------


async def test_an_error_that_echoes_the_api_key_is_stored_and_shown_masked(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    sha = make_audio(folders.inbox / "a.mp3", seed="echo")
    fake.config.error_for.add(sha)
    fake.config.error_message = f"invalid request from key {API_KEY}: audio rejected"
    config = write_config(folders, fake)

    done = await run_cli(daemon_command(config, "--once"), clean_env())
    assert done.returncode == 1, done.stdout + done.stderr

    report = (folders.failed / "a.mp3.error.json").read_text()
    assert "audio rejected" in report and "***" in report
    with sqlite3.connect(folders.state / "journal.sqlite3") as db:
        (last_error,) = db.execute("SELECT last_error FROM jobs").fetchone()
    assert "audio rejected" in last_error and "***" in last_error
    for args in (("status",), ("status", "--json")):
        status = await run_cli(_command(config, *args), clean_env())
        assert status.returncode == 0
        assert "audio rejected" in status.stdout
        assert API_KEY not in status.stdout + status.stderr
    assert API_KEY not in report + last_error + done.stdout + done.stderr


# -- D14: control characters in names ---------------------------------------------------------

EVIL = "evil\x1b[2J\x1b]0;owned\x07\x9b31m\u202eod.mp3"


async def test_control_characters_in_a_name_are_escaped_in_status_and_reports(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    (folders.inbox / EVIL).write_bytes(b"")  # empty: fails, with a report
    config = write_config(folders, fake)
    done = await run_cli(daemon_command(config, "--once"), clean_env())
    assert done.returncode == 1, done.stdout + done.stderr

    report = (folders.failed / f"{EVIL}.error.json").read_bytes()
    assert json.loads(report)["source"] == EVIL  # escaped, and read back the same
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw.encode() not in report
    status = await run_cli(_command(config, "status"), clean_env())
    assert status.returncode == 0
    assert "evil" in status.stdout
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in status.stdout
    assert "evil\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202eod.mp3" in status.stdout


# -- D17: retry only moves what is inside failed/ ------------------------------------------------


async def test_retry_refuses_paths_outside_failed_without_a_traceback(
    folders: Folders,
) -> None:
    folders.failed.mkdir()
    (folders.root / "x.mp3").write_bytes(b"outside, relative")
    (folders.root / "abs.mp3").write_bytes(b"outside, absolute")
    (folders.root / "secret.mp3").write_bytes(b"outside, linked")
    (folders.failed / "link.mp3").symlink_to(folders.root / "secret.mp3")
    (folders.failed / "sub").symlink_to(folders.root)
    config = write_config(folders, None)

    for arg in ("../x.mp3", str(folders.root / "abs.mp3"), "sub/x.mp3", "link.mp3"):
        done = await run_cli([*_command(config, "retry"), arg], clean_env())
        assert done.returncode == 1, (arg, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert "requeued 0 file(s)" in done.stdout
    assert sorted(p.name for p in folders.inbox.iterdir()) == []
    assert (folders.root / "x.mp3").read_bytes() == b"outside, relative"
    assert (folders.root / "abs.mp3").read_bytes() == b"outside, absolute"
    assert (folders.root / "secret.mp3").read_bytes() == b"outside, linked"

    done = await run_cli([*_command(config, "retry"), "../x.mp3"], clean_env())
    assert "not a file inside failed/" in done.stderr


async def test_retry_takes_a_path_inside_failed_however_it_is_spelt(folders: Folders) -> None:
    (folders.failed / "sub").mkdir(parents=True)
    (folders.failed / "sub" / "a.mp3").write_bytes(b"a")
    (folders.failed / "sub" / "a.mp3.error.json").write_text("{}")
    (folders.failed / "b.mp3").write_bytes(b"b")
    config = write_config(folders, None)

    spelt = [str(folders.failed / "sub" / ".." / "sub" / "a.mp3"), "b.mp3.error.json"]
    done = await run_cli([*_command(config, "retry"), *spelt], clean_env())

    assert done.returncode == 0, done.stdout + done.stderr
    assert (folders.inbox / "sub" / "a.mp3").read_bytes() == b"a"
    assert (folders.inbox / "b.mp3").read_bytes() == b"b"
    assert not (folders.failed / "sub" / "a.mp3.error.json").exists()


# -- status | head ---------------------------------------------------------------------------


def test_status_into_a_pipe_closed_early_ends_quietly(folders: Folders) -> None:
    folders.state.mkdir()
    with Journal(folders.state) as journal:
        journal.discover_many([(f"talk-{i:05d}.mp3", 1, 1) for i in range(3000)])
    config = write_config(folders, None)
    # Far more than a pipe holds: status is still writing when the reader goes away.
    with subprocess.Popen(
        _command(config, "status", "--limit", "3000"),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline().startswith(b"state")
            proc.stdout.close()  # what `| head -1` does
            err = proc.stderr.read().decode()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 0
