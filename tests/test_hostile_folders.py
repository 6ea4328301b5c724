"""Hostile folder layouts and folder contents: nested folders spelt with ``..`` or through
symlinks, links and files planted in the output folders, two daemons on one inbox, and a
journal that lost its history. Real processes, real files and the fake API over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    API_KEY,
    Daemon,
    Folders,
    clean_env,
    daemon_command,
    expected_text,
    make_audio,
    run_cli,
    write_config,
)
from fakeapi import FakeAssemblyAI, FakeConfig
from fakeapi.faults import FaultConfig
from transcribed.folders import INBOX_LOCK_NAME
from transcribed.paths import TEMP_PREFIX


def _submits(fake: FakeAssemblyAI) -> int:
    return sum(fake.counters.submits_by_sha256.values())


async def _run_once(config: Path, *extra: str, timeout_s: float = 60) -> tuple[int, str]:
    """``run --once``: its exit code and output. Killed after ``timeout_s`` (a layout that
    loops, or a file deferred without end, never ends), and whenever the test is stopped."""
    proc = await asyncio.create_subprocess_exec(
        *daemon_command(config, "--once", *extra),
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


# -- D3 + D16: nested layouts, resolved ------------------------------------------------------


def _layouts(root: Path) -> dict[str, dict[str, str]]:
    """Each a layout the unresolved check lets through, with one folder inside another."""
    (root / "elsewhere").mkdir()
    (root / "to-inbox").symlink_to(root / "inbox")
    (root / "to-outbox").symlink_to(root / "outbox")
    return {
        # done/ inside the inbox, spelt with "..": the daemon took its own archive again.
        "done via ..": {"done": f"{root}/elsewhere/../inbox/done"},
        "outbox via a symlink": {"outbox": f"{root}/to-inbox/out"},
        "state_dir via a symlink": {"state_dir": f"{root}/to-inbox/.state"},
        # D16: failed/ inside the outbox sends transcripts to the inbox through retry.
        "failed inside outbox": {"failed": f"{root}/outbox/failed"},
        "failed inside outbox via a symlink": {"failed": f"{root}/to-outbox/failed"},
        "outbox inside failed": {"outbox": f"{root}/failed/out"},
        "inbox inside done": {"done": f"{root}/elsewhere/.."},
        "done is the outbox": {"done": f"{root}/elsewhere/../outbox"},
        "state_dir inside failed": {"state_dir": f"{root}/failed/state"},
    }


LAYOUT_NAMES = [
    "done via ..",
    "outbox via a symlink",
    "state_dir via a symlink",
    "failed inside outbox",
    "failed inside outbox via a symlink",
    "outbox inside failed",
    "inbox inside done",
    "done is the outbox",
    "state_dir inside failed",
]


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
async def test_a_folder_inside_another_after_resolving_is_refused_before_anything_runs(
    folders: Folders, fake: FakeAssemblyAI, layout: str
) -> None:
    folders.outbox.mkdir()
    folders.failed.mkdir()
    change = _layouts(folders.root)[layout]
    make_audio(folders.inbox / "talk.mp3", seed="talk")
    config = write_config(folders, fake, **change)
    before = {p.relative_to(folders.root) for p in folders.root.rglob("*")}

    code, output = await _run_once(config)

    assert code == 2, output
    # Refused by the settings' lexical check ("a/../b") or, through a link, at start-up.
    assert "must be separate folders" in output or "must not be inside the inbox" in output
    assert os.path.realpath(next(iter(change.values()))) in output  # named as resolved
    # Nothing was created, moved or paid for.
    assert {p.relative_to(folders.root) for p in folders.root.rglob("*")} == before
    assert _submits(fake) == 0 and fake.counters.uploads_started == 0


async def test_retry_refuses_to_run_with_failed_inside_the_outbox(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    """D16: ``retry`` moved the transcripts under outbox/failed/ into the inbox."""
    (folders.outbox / "failed").mkdir(parents=True)
    (folders.outbox / "failed" / "talk.txt").write_text("a transcript\n")
    config = write_config(folders, fake, failed=str(folders.outbox / "failed"))
    retry = [*daemon_command(config)[:3], "retry", "--config", str(config)]

    done = await run_cli(retry, clean_env())

    assert done.returncode == 2, done.stdout + done.stderr
    assert "must be separate folders" in done.stderr
    assert not list(folders.inbox.iterdir())
    assert (folders.outbox / "failed" / "talk.txt").is_file()


# -- D19 + D10: links and files planted in the output folders ---------------------------------


async def test_outputs_and_moves_never_follow_a_link_planted_in_the_output_folders(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    outside_out, outside_done = folders.root / "outside-out", folders.root / "outside-done"
    outside_out.mkdir()
    outside_done.mkdir()
    folders.outbox.mkdir()
    folders.done.mkdir()
    (folders.outbox / "talks").symlink_to(outside_out)
    (folders.done / "talks").symlink_to(outside_done)
    sha = make_audio(folders.inbox / "talks" / "a.mp3", seed="a")
    config = write_config(folders, fake)

    code, output = await _run_once(config)

    assert code == 0, output
    assert not list(outside_out.iterdir()) and not list(outside_done.iterdir())
    assert (folders.outbox / "talks (2)" / "a.txt").read_text() == expected_text(sha) + "\n"
    assert (folders.done / "talks (2)" / "a.mp3").is_file()
    assert (folders.outbox / "talks").is_symlink() and (folders.done / "talks").is_symlink()


async def test_a_failed_source_is_not_moved_through_a_link_in_failed(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    outside = folders.root / "outside"
    outside.mkdir()
    folders.failed.mkdir()
    (folders.failed / "bad").symlink_to(outside)
    (folders.inbox / "bad").mkdir()
    (folders.inbox / "bad" / "empty.mp3").write_bytes(b"")
    config = write_config(folders, fake)

    code, output = await _run_once(config)

    assert code == 1, output
    assert not list(outside.iterdir())
    assert (folders.failed / "bad (2)" / "empty.mp3").is_file()
    assert (folders.failed / "bad (2)" / "empty.mp3.error.json").is_file()


async def test_a_folder_named_like_an_earlier_result_gets_a_free_name_instead_of_waiting(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    """D10: ``done/x.mp3`` and ``outbox/x.txt`` are files; sources then arrive in inbox
    folders named ``x.mp3/`` and ``x.txt/``: "Not a directory", deferred without end."""
    first = make_audio(folders.inbox / "x.mp3", seed="first")
    config = write_config(folders, fake)
    assert (await _run_once(config))[0] == 0
    assert (folders.done / "x.mp3").is_file() and (folders.outbox / "x.txt").is_file()

    in_mp3 = make_audio(folders.inbox / "x.mp3" / "a.mp3", seed="in folder x.mp3")
    in_txt = make_audio(folders.inbox / "x.txt" / "b.mp3", seed="in folder x.txt")
    code, output = await _run_once(config)

    assert code == 0, output
    assert (folders.outbox / "x.txt").read_text() == expected_text(first) + "\n"
    assert (folders.outbox / "x.mp3" / "a.txt").read_text() == expected_text(in_mp3) + "\n"
    assert (folders.outbox / "x (2).txt" / "b.txt").read_text() == expected_text(in_txt) + "\n"
    assert (folders.done / "x (2).mp3" / "a.mp3").is_file()
    assert (folders.done / "x.txt" / "b.mp3").is_file()
    assert not any(e.get("event") == "job_deferred" for e in _events(output))


def _events(output: str) -> list[dict[str, object]]:
    import json

    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


# -- D11 (+ D15): one inbox, one owner ---------------------------------------------------------


@pytest.fixture
async def slow_fake() -> AsyncIterator[FakeAssemblyAI]:
    """Every upload answer held back 3 s: two daemons on one inbox would both be uploading."""
    slow = FaultConfig(
        rate=1.0, kinds=("slow",), slow_s=3.0, endpoints=frozenset({"POST /v2/upload"})
    )
    async with FakeAssemblyAI(
        FakeConfig(api_keys=(API_KEY,), latency_s=0.2, concurrency=50, faults=slow)
    ) as server:
        yield server


async def test_a_second_daemon_with_another_journal_on_the_same_inbox_is_refused(
    folders: Folders, slow_fake: FakeAssemblyAI
) -> None:
    shas = [make_audio(folders.inbox / f"f{i}.mp3", seed=f"two-{i}") for i in range(4)]
    second_config = folders.root / "second.toml"
    write_config(folders, slow_fake, state_dir=str(folders.root / "state-b")).rename(second_config)
    first = Daemon(write_config(folders, slow_fake), folders.root / "first.log")
    await first.start()
    try:
        await first.wait_for_event("daemon_ready")
        await eventually_uploading(slow_fake)
        # A temp file of the first daemon's, mid-write: the refused one must leave it alone.
        folders.outbox.mkdir(exist_ok=True)
        temp = folders.outbox / f"{TEMP_PREFIX}{first.proc.pid}-0"
        temp.write_bytes(b"half a transcript")

        code, output = await _run_once(second_config)

        assert code == 2, output
        assert "already owns the inbox" in output
        assert str(folders.state / "journal.sqlite3") in output  # names the owner's journal
        assert temp.exists()
        temp.unlink()
        await first.wait_for_event("file_transcribed", count=len(shas), timeout_s=60)
    finally:
        await _stop(first)
    assert dict(slow_fake.counters.submits_by_sha256) == dict.fromkeys(shas, 1)
    assert (folders.inbox / INBOX_LOCK_NAME).is_file()


async def _stop(daemon: Daemon) -> int:
    if daemon.proc.returncode is not None:
        daemon.close()
        return int(daemon.proc.returncode)
    return await daemon.signal(signal.SIGTERM)


async def eventually_uploading(fake: FakeAssemblyAI) -> None:
    from conftest import eventually

    await eventually(lambda: fake.counters.uploads_started > 0, what="an upload started")


async def test_the_inbox_lock_is_not_taken_as_input_and_frees_with_the_daemon(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    sha = make_audio(folders.inbox / "a.mp3", seed="lock")
    config = write_config(folders, fake, **{"watch.patterns": ["*"]})
    assert (await _run_once(config))[0] == 0
    assert (folders.inbox / INBOX_LOCK_NAME).is_file()
    assert dict(fake.counters.submits_by_sha256) == {sha: 1}
    # Released at exit: another daemon (another journal) may take the inbox over now.
    other = write_config(folders, fake, state_dir=str(folders.root / "state-b"))
    assert (await _run_once(other, "--set", "daemon.accept_empty_journal=true"))[0] == 0


# -- D12: the journal's integrity ------------------------------------------------------------


async def test_an_empty_journal_beside_results_is_refused_until_accepted(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    sha = make_audio(folders.inbox / "a.mp3", seed="history")
    config = write_config(folders, fake)
    assert (await _run_once(config))[0] == 0
    assert _submits(fake) == 1
    journal = folders.state / "journal.sqlite3"
    journal.write_bytes(b"")  # zero-length: what a full disk or a bad restore leaves
    (folders.done / "a.mp3").rename(folders.inbox / "a.mp3")  # the same file, dropped again

    code, output = await _run_once(config)

    assert code == 2, output
    assert "holds no jobs" in output and "daemon.accept_empty_journal" in output
    assert f"outbox ({folders.outbox})" in output
    assert _submits(fake) == 1

    code, output = await _run_once(config, "--set", "daemon.accept_empty_journal=true")
    assert code == 0, output
    assert dict(fake.counters.submits_by_sha256) == {sha: 2}  # accepted: paid again, knowingly


async def test_a_damaged_journal_is_refused_with_the_way_out(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    make_audio(folders.inbox / "a.mp3", seed="damaged")
    config = write_config(folders, fake)
    assert (await _run_once(config))[0] == 0
    journal = folders.state / "journal.sqlite3"
    journal.write_bytes(b"\0" * 100 + journal.read_bytes()[100:])  # the header gone
    make_audio(folders.inbox / "b.mp3", seed="after the damage")

    code, output = await _run_once(config)

    assert code == 2, output
    assert "restore it from a backup" in output and "accept_empty_journal" in output
    assert _submits(fake) == 1


async def _killed_after_one_file(folders: Folders, fake: FakeAssemblyAI) -> Path:
    """A daemon that transcribed one file, then got SIGKILL; returns its config."""
    make_audio(folders.inbox / "a.mp3", seed="wal")
    config = write_config(folders, fake)
    daemon = Daemon(config, folders.root / "daemon.log")
    await daemon.start()
    try:
        await daemon.wait_for_event("file_transcribed")
    finally:
        if daemon.proc.returncode is None:
            await daemon.kill()
    return config


async def test_a_wal_lost_after_an_unclean_stop_is_refused(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    config = await _killed_after_one_file(folders, fake)  # the commits stay in the WAL
    wal = folders.state / "journal.sqlite3-wal"
    assert wal.exists()
    wal.unlink()  # "rm journal.sqlite3-*", to clear what looks like a stale lock

    code, output = await _run_once(config)

    assert code == 2, output
    assert "has lost commits" in output and "write-ahead log" in output
    assert _submits(fake) == 1
    # Refused again: a refused start leaves the record of the unclean stop as it found it.
    assert (await _run_once(config))[0] == 2
    assert _submits(fake) == 1


async def test_a_wal_checkpointed_by_another_program_after_a_crash_is_not_a_loss(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    config = await _killed_after_one_file(folders, fake)
    # An operator looks at the journal: sqlite3's clean close checkpoints and removes the WAL.
    db = sqlite3.connect(folders.state / "journal.sqlite3")
    assert db.execute("SELECT state FROM jobs").fetchall() == [("archived",)]
    db.close()
    assert not (folders.state / "journal.sqlite3-wal").exists()

    code, output = await _run_once(config)
    assert code == 0, output
    assert _submits(fake) == 1


async def test_a_clean_stop_leaves_nothing_for_the_wal_check_to_refuse(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    make_audio(folders.inbox / "a.mp3", seed="clean")
    config = write_config(folders, fake)
    daemon = Daemon(config, folders.root / "daemon.log")
    await daemon.start()
    try:
        await daemon.wait_for_event("file_transcribed")
    finally:
        assert await _stop(daemon) == 0
    assert not (folders.state / "journal.sqlite3-wal").exists()
    with sqlite3.connect(folders.state / "journal.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (1,)
    code, output = await _run_once(config)
    assert code == 0, output


# -- property: generated layouts with "..", symlinks and aliases --------------------------------

OUT_KEYS = ("outbox", "done", "failed", "state_dir")
#: Where a folder may be put. The first three are separate from everything else; the rest are
#: inside the inbox or inside or equal to another folder, however spelt.
VALID_PLACES = ("sibling", "sibling via ..", "sibling via a link")
INVALID_PLACES = ("in inbox", "in inbox via ..", "in inbox via a link", "alias", "inside other")


def _place(root: Path, key: str, place: str, other: Path) -> Path:
    return {
        "sibling": root / key,
        "sibling via ..": root / "inbox" / ".." / key,
        "sibling via a link": root / "to-outs" / key,
        "in inbox": root / "inbox" / key,
        "in inbox via ..": root / "outs" / ".." / "inbox" / key,
        "in inbox via a link": root / "to-inbox" / key,
        "alias": other,
        "inside other": other / key,
    }[place]


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    found: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            found[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def _layout_example(places: dict[str, str], inbox_via_link: bool) -> None:
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="layout-"))
    try:
        asyncio.run(_check_layout(root, places, inbox_via_link))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _check_layout(root: Path, places: dict[str, str], inbox_via_link: bool) -> None:
    from conftest import overrides_for
    from fakeapi.config_file import write_toml

    (root / "inbox").mkdir()
    (root / "outs").mkdir()
    (root / "config").mkdir()
    (root / "to-inbox").symlink_to(root / "inbox")
    (root / "to-outs").symlink_to(root / "outs")
    (root / "in-link").symlink_to(root / "inbox")
    bait = make_audio(root / "bait" / "bait.mp3", seed="bait")  # outside: never read
    (root / "inbox" / "linked.mp3").symlink_to(root / "bait" / "bait.mp3")
    (root / "inbox" / "linked-folder").symlink_to(root / "bait")
    good = [make_audio(root / "inbox" / name, seed=name) for name in ("a.mp3", "sub/b.mp3")]
    chosen: dict[str, Path] = {}
    for index, key in enumerate(OUT_KEYS):
        # An alias or a nest needs another folder placed before it (or the inbox).
        other = chosen[OUT_KEYS[index - 1]] if index else root / "inbox"
        chosen[key] = _place(root, key, places[key], other)
    valid = all(places[key] in VALID_PLACES for key in OUT_KEYS)
    inbox = root / ("in-link" if inbox_via_link else "inbox")
    layout = Folders(root, inbox, chosen["outbox"], chosen["done"], chosen["failed"], root)
    async with FakeAssemblyAI(FakeConfig(api_keys=(API_KEY,), latency_s=0.05)) as fake:
        values = overrides_for(layout, fake, state_dir=str(chosen["state_dir"]))
        config = write_toml(root / "config" / "t.toml", values)
        before = _snapshot(root)

        code, output = await _run_once(config)

        after = _snapshot(root)
        uploads = dict(fake.counters.uploads_by_sha256)
        submits = dict(fake.counters.submits_by_sha256)
    assert bait not in uploads
    if not valid:
        assert code == 2, (places, output)
        assert after == before, places
        assert not uploads and not submits
        return
    assert code == 0, (places, output)
    assert submits == dict.fromkeys(good, 1)
    allowed = [os.path.realpath(chosen[key]) for key in OUT_KEYS] + [str(root / "inbox")]
    for path, facts in after.items():
        if before.get(path) == facts:
            continue
        real = os.path.realpath(path)
        assert any(real == top or real.startswith(top + os.sep) for top in allowed) or any(
            top.startswith(real + os.sep)
            for top in allowed  # a folder made on the way
        ), (path, places)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    places=st.fixed_dictionaries({key: st.sampled_from(VALID_PLACES) for key in OUT_KEYS}),
    spoilt=st.none()
    | st.dictionaries(st.sampled_from(OUT_KEYS), st.sampled_from(INVALID_PLACES), min_size=1),
    inbox_via_link=st.booleans(),
)
def test_every_generated_layout_is_refused_or_runs_inside_its_folders(
    places: dict[str, str], spoilt: dict[str, str] | None, inbox_via_link: bool
) -> None:
    """Half the layouts valid, half with one or more folders inside the inbox or another."""
    _layout_example({**places, **(spoilt or {})}, inbox_via_link)


def _read_deep(root: Path, rel: Path) -> bytes:
    """Read ``root/rel`` a component at a time (its whole path may pass PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel.parts[:-1]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        file_fd = os.open(rel.parts[-1], os.O_RDONLY, dir_fd=fd)
        with open(file_fd, "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


async def test_a_nested_path_longer_than_path_max_under_the_outbox_is_still_written(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    """The inbox path fits in PATH_MAX (4096), the same path under a longer outbox does not:
    it was deferred without end ("File name too long")."""
    outbox = folders.root.joinpath(*["o" * 200] * 9)
    done = folders.root.joinpath(*["d" * 200] * 9)
    rel = Path(*["n" * 200] * 12, "a.mp3")
    assert len(str(folders.inbox / rel)) < 4000 < len(str(outbox / rel))
    sha = make_audio(folders.inbox / rel, seed="deep")
    config = write_config(folders, fake, outbox=str(outbox), done=str(done))

    code, output = await _run_once(config, timeout_s=90)

    assert code == 0, output[-2000:]
    text = _read_deep(outbox, rel.with_suffix(".txt"))
    assert text.decode() == expected_text(sha) + "\n"
    assert _read_deep(done, rel)[:3] == b"ID3"
    # And the next start walks the deep tree for stale temp files without tripping on it.
    code, output = await _run_once(config, timeout_s=90)
    assert code == 0, output[-2000:]


def test_a_move_across_file_systems_copies_into_the_folder_reached_without_links(
    tmp_path: Path,
) -> None:
    """done/ on another file system than the source (a tmpfs): rename fails with EXDEV, and
    the copy goes into the folder reached by descriptor, past a link planted in done/."""
    import shutil
    import tempfile

    from transcribed.outputs import move_to_free_name

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    inbox = Path(tempfile.mkdtemp(dir=shm))
    try:
        source = inbox / "talk.mp3"
        source.write_bytes(b"ID3" + bytes(range(256)) * 4000)
        data = source.read_bytes()
        done, outside = tmp_path / "done", tmp_path / "outside"
        done.mkdir()
        outside.mkdir()
        (done / "sub").symlink_to(outside)

        final, folder = move_to_free_name(source, done, "sub/talk.mp3", with_report=True)

        assert final == "sub (2)/talk.mp3" and folder == done / "sub (2)"
        assert (done / final).read_bytes() == data
        assert not source.exists() and not list(outside.iterdir())
        assert [p.name for p in (done / "sub (2)").iterdir()] == ["talk.mp3"]  # no temp left
    finally:
        shutil.rmtree(inbox, ignore_errors=True)


async def test_a_folder_planted_on_a_reserved_output_name_gets_the_transcript_beside_it(
    tmp_path: Path,
) -> None:
    """The name was free when the job reserved it; a folder took it before the write. The
    write failed ("Is a directory") on every attempt, without end."""
    from transcribed.backends import Result
    from transcribed.outputs import Outputs

    outbox = tmp_path / "outbox"
    outputs = Outputs(outbox, tmp_path / "done", tmp_path / "failed", ["txt", "json"])
    (outbox / "talk.txt").mkdir(parents=True)
    (outbox / "talk (2).txt").write_text("an earlier transcript\n")

    paths = await outputs.write("talk", Result({"id": "t-1", "text": "hello"}))

    assert paths == [outbox / "talk (3).txt", outbox / "talk.json"]
    assert (outbox / "talk (3).txt").read_text() == "hello\n"
    assert (outbox / "talk (2).txt").read_text() == "an earlier transcript\n"  # not replaced
    assert (outbox / "talk.txt").is_dir()
    assert sorted(p.name for p in outbox.iterdir()) == [
        "talk (2).txt",
        "talk (3).txt",
        "talk.json",
        "talk.txt",
    ]
