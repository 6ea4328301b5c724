"""The live progress display of `run --once`: on a pseudo-terminal, and its absence on a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import logging
import os
import re
import struct
import sys
import termios
from collections.abc import Iterator

import pytest

from conftest import Folders, clean_env, daemon_command, make_audio, run_cli, write_config
from fakeapi import FakeAssemblyAI
from transcribed.progress import Counts, ProgressDisplay, describe

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


async def run_on_pty(cmd: list[str], env: dict[str, str], timeout_s: float = 60) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a 120-column pseudo-terminal; return its output."""
    main, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    closed = asyncio.Event()

    def readable() -> None:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: every holder of the terminal's other end has closed it
            data = b""
        if data:
            chunks.append(data)
        else:
            loop.remove_reader(main)
            closed.set()

    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=child, stderr=child, env=env
    )
    os.close(child)
    loop.add_reader(main, readable)
    try:
        async with asyncio.timeout(timeout_s):
            code = await proc.wait()
            await closed.wait()
    finally:
        loop.remove_reader(main)
        os.close(main)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, b"".join(chunks).decode(errors="replace")


def segments(output: str) -> list[str]:
    """What is left of each terminal line once control sequences are removed."""
    plain = ANSI.sub("", output)
    return [part for part in re.split(r"[\r\n]+", plain) if part.strip()]


async def test_once_on_a_terminal_shows_live_progress_with_logs_above_it(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    for i in range(3):
        make_audio(folders.inbox / f"talk-{i}.mp3", seed=f"talk{i}")
    config = write_config(folders, fake, **{"daemon.log_format": "auto"})
    env = clean_env(TERM="xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        env.pop(name, None)

    code, output = await run_on_pty(daemon_command(config, "--once"), env)

    assert code == 0, output
    lines = segments(output)
    progress = [line for line in lines if "files/min" in line]
    assert progress, output
    assert "3/3 files" in progress[-1]
    assert "0 failed" in progress[-1]
    assert "audio s/s" in progress[-1]
    # Log lines scroll above the display, each whole, none spliced into a progress line.
    logs = [line for line in lines if "file_transcribed" in line]
    assert len(logs) == 3
    assert not any("files/min" in line for line in logs)
    assert not any(line.lstrip().startswith("{") for line in lines)  # console logs, not JSON
    assert (folders.outbox / "talk-0.txt").exists()


async def test_once_on_a_pipe_prints_only_json_log_lines(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    for i in range(2):
        make_audio(folders.inbox / f"talk-{i}.mp3", seed=f"pipe{i}")
    config = write_config(folders, fake, **{"daemon.log_format": "auto"})

    result = await run_cli(daemon_command(config, "--once"), clean_env(TERM="xterm-256color"))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert sum(1 for e in events if e["event"] == "file_transcribed") == 2
    assert "files/min" not in result.stdout


def test_progress_text_counts_finished_of_known_files_and_throughput() -> None:
    counts = Counts(done=5, failed=1, in_flight=2, waiting=4, audio_s=300.0)
    assert counts.total == 12
    text = describe(counts, elapsed_s=60.0)
    assert text == ("6/12 files · 2 in flight · 1 failed · 6.0 files/min · 5.0 audio s/s")
    assert describe(Counts(), elapsed_s=0.0).startswith("0/0 files")


@contextlib.contextmanager
def terminal_log() -> Iterator[logging.Handler]:
    """A handler on stdout among the root logger's, as the console log has; removed after.
    Made inside the test: pytest swaps ``sys.stdout`` between fixtures and the test."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_the_display_routes_logs_through_itself_and_gives_the_handler_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = io.StringIO()
    display = ProgressDisplay(lambda: Counts(done=1, waiting=1), stream=line)
    with terminal_log() as handler:
        display.start()
        # (pytest's own capture handlers sit on the root logger too; they are not terminal ones)
        assert handler not in logging.getLogger().handlers
        logging.getLogger("test").warning("a line above the bar")
        display.close()
        assert handler in logging.getLogger().handlers

    assert "a line above the bar" in capsys.readouterr().out
    last = segments(line.getvalue())[-1]
    assert last.startswith("finished") and "1/2 files" in last


def test_a_display_that_cannot_start_leaves_the_log_as_it_was() -> None:
    def unreadable() -> Counts:
        raise RuntimeError("the journal is closed")

    display = ProgressDisplay(unreadable, stream=io.StringIO())
    with terminal_log() as handler:
        with pytest.raises(RuntimeError, match="journal is closed"):
            display.start()
        assert handler in logging.getLogger().handlers
    display.close()  # nothing left to close
