"""Hostile files: names that are not UTF-8, files that change, vanish, grow, shrink or turn into
FIFOs between being taken and being archived, folders swapped for links, and running out of
descriptors. Real files and a real daemon process against the fake API; the fake holds each
upload's answer until the test lets it go, so every window is as wide as the test needs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import resource
import signal
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    API_KEY,
    Daemon,
    Folders,
    clean_env,
    daemon_command,
    eventually,
    expected_text,
    make_audio,
    run_cli,
    write_config,
)
from fakeapi import FakeAssemblyAI, FakeConfig
from transcribed.errors import SourceChangedError
from transcribed.folders import INBOX_LOCK_NAME
from transcribed.journal import Journal
from transcribed.paths import FileIdentity, SourceFile, open_beneath, printable, stat_beneath

BIG = 3 << 20  # above the size whose bytes are kept from hashing: uploads stream from disk


class UploadGate:
    """Holds the fake's answer to each upload received whole (and recorded) until the test
    lets it go: one at a time (:meth:`release`) or all from now on (:meth:`open`)."""

    def __init__(self, fake: FakeAssemblyAI) -> None:
        self.held = 0
        self._allowed = 0
        self._moved = asyncio.Condition()
        receive = fake.receive_upload

        async def held(request: web.Request, account: str) -> web.Response:
            response = await receive(request, account)
            if response.status != 200:
                return response  # cut off, or refused: nothing to hold
            self.held += 1
            index = self.held
            async with self._moved:
                await self._moved.wait_for(lambda: self._allowed >= index)
            return response

        fake.receive_upload = held  # type: ignore[method-assign]

    async def release(self) -> None:
        async with self._moved:
            self._allowed += 1
            self._moved.notify_all()

    async def open(self) -> None:
        async with self._moved:
            self._allowed = 1 << 30
            self._moved.notify_all()


@contextlib.asynccontextmanager
async def running(config: Path, log: Path, *extra: str) -> AsyncIterator[Daemon]:
    """A daemon that is killed on the way out unless the test stopped it."""
    daemon = await Daemon(config, log).start(*extra)
    try:
        yield daemon
    finally:
        if daemon.proc.returncode is None:
            await daemon.kill()
        else:
            daemon.close()


def _journal_rows(folders: Folders) -> list[dict[str, Any]]:
    path = folders.state / "journal.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        db.close()


def _row(folders: Folders, path: str) -> dict[str, Any] | None:
    live = [r for r in _journal_rows(folders) if r["path"] == path and not r["source_moved"]]
    return live[-1] if live else None


def _taken(folders: Folders, path: str) -> bool:
    """Hashed and taken: its sha256 recorded, waiting for (or in) its upload."""
    row = _row(folders, path)
    return row is not None and row["state"] == "uploading" and row["sha256"] is not None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _audio(seed: str, size: int) -> bytes:
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + random.Random(seed).randbytes(size - 10)


def _events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


# -- D1: names are bytes --------------------------------------------------------------------


async def test_run_once_transcribes_a_name_that_is_not_utf8_beside_good_files(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    good = {name: make_audio(folders.inbox / name, seed=name) for name in ("a.mp3", "b.mp3")}
    odd_name = b"bad\xff\xfe.mp3"
    odd_data = _audio("odd", 9000)
    with open(os.path.join(os.fsencode(folders.inbox), odd_name), "wb") as handle:
        handle.write(odd_data)

    result = await run_cli(daemon_command(write_config(folders, fake), "--once"), clean_env())

    assert result.returncode == 0, result.stdout + result.stderr
    for name, sha in good.items():
        assert (folders.outbox / name.replace(".mp3", ".txt")).read_text() == (
            expected_text(sha) + "\n"
        )
        assert fake.counters.submits_by_sha256[sha] == 1
    outbox, done = os.fsencode(folders.outbox), os.fsencode(folders.done)
    with open(os.path.join(outbox, b"bad\xff\xfe.txt"), "rb") as handle:
        assert handle.read().decode() == expected_text(_sha(odd_data)) + "\n"
    with open(os.path.join(done, odd_name), "rb") as handle:
        assert handle.read() == odd_data  # archived under its own name, byte for byte
    assert fake.counters.submits_by_sha256[_sha(odd_data)] == 1
    assert os.listdir(os.fsencode(folders.inbox)) == [os.fsencode(INBOX_LOCK_NAME)]
    # The log stays valid UTF-8 JSON, with the odd bytes escaped.
    transcribed = [e["path"] for e in result.events() if e.get("event") == "file_transcribed"]
    assert sorted(transcribed) == ["a.mp3", "b.mp3", "bad\udcff\udcfe.mp3"]


async def test_a_name_that_is_not_utf8_does_not_stop_the_watcher(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    config = write_config(folders, fake)  # the periodic rescan is 30 s away
    async with running(config, folders.root / "daemon.log") as daemon:
        await daemon.wait_for_event("watcher_started")
        odd = _audio("odd", 5000)
        with open(os.path.join(os.fsencode(folders.inbox), b"x\xc3(.mp3"), "wb") as handle:
            handle.write(odd)
        await daemon.wait_for_event("file_transcribed", 1)
        assert fake.counters.submits_by_sha256[_sha(odd)] == 1
        # The watch goes on: a new file is taken at once.
        later = make_audio(folders.inbox / "later.mp3", seed="later")
        await eventually(lambda: (folders.outbox / "later.txt").exists(), 30, "later.txt")
        assert (folders.outbox / "later.txt").read_text() == expected_text(later) + "\n"
        assert await daemon.signal(signal.SIGTERM) == 0


# -- D4: truncated while waiting for its upload slot ---------------------------------------


async def test_a_file_truncated_while_waiting_for_its_upload_slot_is_taken_again(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    gate = UploadGate(fake)
    holder = _audio("holder", BIG)
    (folders.inbox / "holder.mp3").write_bytes(holder)
    config = write_config(folders, fake, **{"assemblyai.max_concurrent_uploads": 1})
    async with running(config, folders.root / "daemon.log") as daemon:
        await eventually(lambda: gate.held == 1, 30, "the first upload held")
        data = _audio("waiting", BIG)
        (folders.inbox / "waiting.mp3").write_bytes(data)
        await eventually(lambda: _taken(folders, "waiting.mp3"), 30, "waiting.mp3 taken")
        os.truncate(folders.inbox / "waiting.mp3", BIG // 2)  # hashed, not yet sent
        await gate.open()

        await daemon.wait_for_event("file_transcribed", 2, timeout_s=60)
        shorter = data[: BIG // 2]
        assert (folders.done / "waiting.mp3").read_bytes() == shorter
        assert (folders.outbox / "waiting.txt").read_text() == expected_text(_sha(shorter)) + "\n"
        # Never paid for the bytes it no longer has, and never recorded with them.
        assert fake.counters.submits_by_sha256[_sha(data)] == 0
        assert fake.counters.submits_by_sha256[_sha(shorter)] == 1
        rows = [r for r in _journal_rows(folders) if r["path"] == "waiting.mp3"]
        assert [(r["state"], r["sha256"]) for r in rows] == [("archived", _sha(shorter))]
        assert _events(daemon, "source_changed")
        assert await daemon.signal(signal.SIGTERM) == 0


async def test_a_file_that_keeps_changing_fails_after_a_few_attempts_and_frees_its_slot(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    gate = UploadGate(fake)
    source = folders.inbox / "talk.mp3"
    source.write_bytes(_audio("talk", 8000))
    config = write_config(folders, fake, **{"assemblyai.max_concurrent_uploads": 1})
    async with running(config, folders.root / "daemon.log") as daemon:
        # Each time its bytes have gone out, it grows again before the transcript is in.
        for held in range(1, 10):
            await eventually(
                lambda n=held: gate.held >= n or bool(_events(daemon, "file_failed")),  # type: ignore[misc]
                60,
                f"upload {held} held",
            )
            if _events(daemon, "file_failed"):
                break
            with source.open("ab") as handle:
                handle.write(b"more" * 100)
            await gate.release()
        else:
            raise AssertionError("still taken again after 9 changes")
        await gate.open()
        report = folders.failed / "talk.mp3.error.json"
        await eventually(report.exists, 30, "the error report")
        assert "changing" in report.read_text()
        assert (folders.failed / "talk.mp3").exists()
        assert fake.counters.submits == held - 1  # every transcript it got was for old bytes
        assert not (folders.outbox / "talk.txt").exists()
        # Its slot is free: a new file goes through.
        late = make_audio(folders.inbox / "late.mp3", seed="late", size=BIG)
        await eventually(lambda: (folders.outbox / "late.txt").exists(), 60, "late.txt")
        assert fake.counters.submits_by_sha256[late] == 1
        assert await daemon.signal(signal.SIGTERM) == 0


# -- D5: a folder swapped for a link to an outside folder ----------------------------------


async def test_a_folder_swapped_for_a_link_to_outside_never_sends_the_outside_file(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    gate = UploadGate(fake)
    (folders.inbox / "holder.mp3").write_bytes(_audio("holder", BIG))
    outside_dir = folders.root / "outside"
    outside_dir.mkdir()
    secret = _audio("secret", BIG)  # same size as the inside file, other bytes
    (outside_dir / "x.mp3").write_bytes(secret)

    config = write_config(folders, fake, **{"assemblyai.max_concurrent_uploads": 1})
    async with running(config, folders.root / "daemon.log") as daemon:
        await eventually(lambda: gate.held == 1, 30, "the first upload held")
        (folders.inbox / "sub").mkdir()
        inside = _audio("inside", BIG)
        (folders.inbox / "sub" / "x.mp3").write_bytes(inside)
        await eventually(lambda: _taken(folders, "sub/x.mp3"), 30, "sub/x.mp3 taken")
        # Between taking the file and sending it: sub/ becomes a link to the outside folder.
        (folders.inbox / "sub").rename(folders.root / "moved-away")
        (folders.inbox / "sub").symlink_to(outside_dir, target_is_directory=True)
        await gate.open()

        await daemon.wait_for_event("file_transcribed", 2, timeout_s=60)
        assert fake.counters.uploads_by_sha256[_sha(secret)] == 0
        assert fake.counters.submits_by_sha256[_sha(secret)] == 0
        # The transcript is of the bytes that were taken (now outside, where they were moved).
        assert (folders.outbox / "sub" / "x.txt").read_text() == expected_text(_sha(inside)) + "\n"
        assert (outside_dir / "x.mp3").read_bytes() == secret  # untouched, still there
        assert not (folders.done / "sub" / "x.mp3").exists()
        assert (folders.root / "moved-away" / "x.mp3").read_bytes() == inside
        assert await daemon.signal(signal.SIGTERM) == 0


# -- D6, D7: changed during the upload -----------------------------------------------------


@pytest.mark.parametrize("size", [8000, BIG], ids=["small", "big"])
@pytest.mark.parametrize("change", ["renamed_over", "appended"])
async def test_a_file_changed_during_its_upload_is_transcribed_again_as_a_new_version(
    folders: Folders, fake: FakeAssemblyAI, change: str, size: int
) -> None:
    gate = UploadGate(fake)
    old = _audio("old", size)
    source = folders.inbox / "talk.mp3"
    source.write_bytes(old)
    config = write_config(folders, fake)
    async with running(config, folders.root / "daemon.log") as daemon:
        await eventually(lambda: gate.held == 1, 30, "the upload held")
        if change == "renamed_over":
            new = _audio("new", size + 1000)
            (folders.inbox / ".talk.mp3.tmp").write_bytes(new)
            os.rename(folders.inbox / ".talk.mp3.tmp", source)
        else:
            new = old + b"more audio" * 500
            with source.open("ab") as handle:
                handle.write(new[len(old) :])
        await gate.open()

        await daemon.wait_for_event("file_transcribed", 1, timeout_s=60)
        assert (folders.done / "talk.mp3").read_bytes() == new
        assert (folders.outbox / "talk.txt").read_text() == expected_text(_sha(new)) + "\n"
        assert fake.counters.submits_by_sha256[_sha(new)] == 1
        rows = _journal_rows(folders)
        assert [(r["state"], r["sha256"]) for r in rows] == [("archived", _sha(new))]
        assert _events(daemon, "source_changed")
        assert not _events(daemon, "file_failed")
        assert await daemon.signal(signal.SIGTERM) == 0


# -- D8: replaced by a FIFO ----------------------------------------------------------------


async def test_a_source_replaced_by_a_fifo_blocks_nothing_and_sigterm_still_stops(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    gate = UploadGate(fake)
    data = _audio("fifo", BIG)
    source = folders.inbox / "talk.mp3"
    source.write_bytes(data)
    config = write_config(folders, fake)
    async with running(config, folders.root / "daemon.log") as daemon:
        await eventually(lambda: gate.held == 1, 30, "the upload held")
        source.unlink()
        os.mkfifo(source)
        await gate.open()

        # Its transcript is of the bytes that were taken; the FIFO is not a version of it.
        await daemon.wait_for_event("file_transcribed", 1, timeout_s=60)
        assert (folders.outbox / "talk.txt").read_text() == expected_text(_sha(data)) + "\n"
        # The io threads are free: another file goes through.
        other = make_audio(folders.inbox / "other.mp3", seed="other")
        await eventually(lambda: (folders.outbox / "other.txt").exists(), 60, "other.txt")
        assert (folders.outbox / "other.txt").read_text() == expected_text(other) + "\n"
        assert source.is_fifo()  # left where it is, never opened for reading
        assert not (folders.done / "talk.mp3").exists()
        assert await daemon.signal(signal.SIGTERM, timeout_s=20) == 0


# -- running out of descriptors ------------------------------------------------------------


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_running_out_of_descriptors_delays_a_file_and_never_fails_it(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    config = write_config(folders, fake)
    async with running(config, folders.root / "daemon.log") as daemon:
        await daemon.wait_for_event("watcher_started")
        pid = daemon.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_open_fds(pid), hard))  # nothing new
        try:
            sha = make_audio(folders.inbox / "talk.mp3", seed="talk")
            await daemon.wait_for_event("job_deferred", 1, timeout_s=60)
            deferred = _events(daemon, "job_deferred")[0]
            assert "open files" in deferred["reason"]
            assert not _events(daemon, "file_failed")
            assert (folders.inbox / "talk.mp3").exists()
            assert _row(folders, "talk.mp3")["state"] != "failed"  # type: ignore[index]
        finally:
            with contextlib.suppress(ProcessLookupError):  # it died: the assertions say why
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        await daemon.wait_for_event("file_transcribed", 1, timeout_s=60)
        assert (folders.outbox / "talk.txt").read_text() == expected_text(sha) + "\n"
        assert not _events(daemon, "file_failed")
        assert await daemon.signal(signal.SIGTERM) == 0


# -- property: any names -------------------------------------------------------------------

_NAME_BYTES = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


def _is_candidate(rel: bytes) -> bool:
    # Every generated name ends in ".mp3"; hidden paths and "~" names are never taken.
    parts = rel.split(b"/")
    return not any(part.startswith(b".") for part in parts) and not parts[-1].startswith(b"~")


def _tree(top: bytes) -> dict[bytes, bytes]:
    """Every regular file below ``top`` (links not followed), with its bytes."""
    found: dict[bytes, bytes] = {}
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, top)] = handle.read()
    return found


async def _run_once_over(names: list[tuple[bool, bytes]], folder: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = Folders(
            root, root / "inbox", root / "outbox", root / "done", root / "failed", root / "state"
        )
        inbox = os.fsencode(folders.inbox)
        os.makedirs(os.path.join(inbox, folder))
        contents: dict[bytes, bytes] = {}
        files = [*names, (False, b"good-1.mp3"), (True, b"good-2.mp3")]
        for i, (nested, name) in enumerate(files):
            rel = os.path.join(folder, name) if nested else name
            contents[rel] = _audio(f"{i}:{rel!r}", 3000 + i)
            with open(os.path.join(inbox, rel), "wb") as handle:
                handle.write(contents[rel])
        # What is outside the inbox is reachable from it only through links.
        secret = _audio("secret", 4000)
        (root / "outside").mkdir()
        (root / "outside" / "secret.mp3").write_bytes(secret)
        os.symlink(root / "outside", os.path.join(inbox, b"elsewhere"))
        os.symlink(root / "outside" / "secret.mp3", os.path.join(inbox, folder, b"link.mp3"))
        async with FakeAssemblyAI(
            FakeConfig(api_keys=(API_KEY,), latency_s=0.05, concurrency=50)
        ) as fake:
            config = write_config(folders, fake)
            before = _tree(os.fsencode(root))
            result = await run_cli(daemon_command(config, "--once"), clean_env(), 90)
            assert result.returncode == 0, result.stdout + result.stderr
            taken = {rel: data for rel, data in contents.items() if _is_candidate(rel)}
            for data in taken.values():
                assert fake.counters.submits_by_sha256[_sha(data)] == 1
            assert fake.counters.submits == len(taken)
            assert fake.counters.uploads_by_sha256[_sha(secret)] == 0  # nothing outside read
        after = _tree(os.fsencode(root))
        ours = (b"inbox/", b"outbox/", b"done/", b"failed/", b"state/")
        outside_ours = {k: v for k, v in after.items() if not k.startswith(ours)}
        assert outside_ours == {k: v for k, v in before.items() if not k.startswith(ours)}
        left = {rel for rel in _tree(inbox) if rel != os.fsencode(INBOX_LOCK_NAME)}
        assert left == {rel for rel in contents if not _is_candidate(rel)}  # none unhandled
        assert sorted(_tree(os.fsencode(folders.done)).values()) == sorted(taken.values())
        assert _tree(os.fsencode(folders.failed)) == {}


_PLACED_NAMES = st.lists(
    st.tuples(st.booleans(), _NAME_BYTES.map(lambda b: b + b".mp3")),
    min_size=1,
    max_size=4,
    unique_by=lambda placed: placed[1],
)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(names=_PLACED_NAMES, folder=_NAME_BYTES)
def test_any_names_and_links_out_each_good_file_is_transcribed_once_and_nothing_else_read(
    names: list[tuple[bool, bytes]], folder: bytes
) -> None:
    asyncio.run(_run_once_over(names, folder))


# -- the local engine: checked after decoding --------------------------------------------

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


@pytest.mark.local
async def test_the_local_engine_transcribes_a_file_renamed_over_while_decoding_as_a_new_version(
    folders: Folders,
) -> None:
    pytest.importorskip("faster_whisper")
    config = write_config(folders, None, backend="local", **{"local.workers": 1})
    async with running(config, folders.root / "daemon.log") as daemon:
        await daemon.wait_for_event("daemon_ready", timeout_s=120)
        workers = _children(daemon.proc.pid)
        assert workers
        for pid in workers:  # the engine cannot start on the file until we say so
            os.kill(pid, signal.SIGSTOP)
        try:
            old = (SAMPLES / "kitchen.mp3").read_bytes()
            (folders.inbox / "talk.mp3").write_bytes(old)
            await eventually(lambda: _taken(folders, "talk.mp3"), 30, "talk.mp3 sent to a worker")
            new = (SAMPLES / "train.mp3").read_bytes()
            (folders.inbox / ".talk.mp3.tmp").write_bytes(new)
            os.rename(folders.inbox / ".talk.mp3.tmp", folders.inbox / "talk.mp3")
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)

        await daemon.wait_for_event("file_transcribed", 1, timeout_s=120)
        assert (folders.done / "talk.mp3").read_bytes() == new
        rows = _journal_rows(folders)
        assert [(r["state"], r["sha256"]) for r in rows] == [("archived", _sha(new))]
        assert _events(daemon, "source_changed")
        assert await daemon.signal(signal.SIGTERM) == 0


# -- the pieces: opening by handle, names kept byte for byte -------------------------------


def test_open_beneath_enters_no_link_and_opens_only_regular_files(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "real").mkdir(parents=True)
    (inbox / "real" / "a.mp3").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.mp3").write_bytes(b"outside")
    (inbox / "linked").symlink_to(outside, target_is_directory=True)
    (inbox / "real" / "link.mp3").symlink_to(outside / "a.mp3")
    os.mkfifo(inbox / "real" / "fifo.mp3")  # opening it for reading would block

    opened = open_beneath(inbox, "real/a.mp3")
    assert opened is not None
    fd, info = opened
    try:
        assert os.read(fd, 100) == b"inside"
        assert info.st_size == 6
    finally:
        os.close(fd)
    for rel in ("linked/a.mp3", "real/link.mp3", "real/fifo.mp3", "real/../real/a.mp3", "nope"):
        assert open_beneath(inbox, rel) is None, rel
        assert stat_beneath(inbox, rel) is None, rel
    assert stat_beneath(inbox, "real/a.mp3") is not None


def test_a_source_file_once_released_opens_only_the_same_file(tmp_path: Path) -> None:
    (tmp_path / "a.mp3").write_bytes(b"first")
    opened = open_beneath(tmp_path, "a.mp3")
    assert opened is not None
    fd, info = opened
    source = SourceFile(tmp_path, "a.mp3", FileIdentity.of(info), fd)
    (tmp_path / "new.mp3").write_bytes(b"other")
    os.rename(tmp_path / "new.mp3", tmp_path / "a.mp3")
    with source.open() as handle:  # the descriptor that was hashed: the first file
        assert handle.read() == b"first"
    source.release()
    with pytest.raises(SourceChangedError):
        source.open()  # the path now leads to another file
    assert source.current() is not None
    assert not source.identity.same_file(source.current())  # type: ignore[arg-type]


def test_the_journal_keeps_names_that_are_not_utf8_byte_for_byte(tmp_path: Path) -> None:
    odd = os.fsdecode(b"dir\xff/bad\xff\xfe.mp3")
    with Journal(tmp_path) as journal:
        ids = journal.discover_many([(odd, 1, 1), ("good.mp3", 1, 1)])
        assert set(ids) == {odd, "good.mp3"}
        assert journal.discover_many([(odd, 1, 1)]) == {}  # known: one live row per path
        assert journal.live_paths() == {odd, "good.mp3"}
        job = ids[odd]
        journal.set_state(job, "uploading", output_base=odd[:-4], output_key=odd[:-4].casefold())
        journal.set_state(job, "failed", last_error=f"cannot move {odd}")
        row = journal.get(job)
        assert os.fsencode(row.path) == b"dir\xff/bad\xff\xfe.mp3"
        assert row.output_base == odd[:-4]
        assert row.last_error == "cannot move dir\\xff/bad\\xff\\xfe.mp3"
        stored = (
            sqlite3.connect(journal.path).execute("SELECT path FROM jobs ORDER BY id").fetchall()
        )
        assert stored == [(b"dir\xff/bad\xff\xfe.mp3",), ("good.mp3",)]
    assert printable(odd) == "dir\\xff/bad\\xff\\xfe.mp3"
