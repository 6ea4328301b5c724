"""`transcribed run --once` against the fake API: outputs, archiving, failures, exit codes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    API_KEY,
    Folders,
    Services,
    clean_env,
    daemon_command,
    expected_text,
    make_audio,
    run_cli,
    settings_for,
    write_config,
)
from fakeapi import FakeAssemblyAI
from fakeapi.handlers import ROUTE_UPLOAD
from transcribed.backends import assemblyai, assemblyai_api
from transcribed.backends.assemblyai_status import StatusTracker


async def test_once_transcribes_forty_files_with_nested_folders_exactly_once(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    shas: dict[str, str] = {}
    for i in range(40):
        rel = f"talk-{i:02d}.mp3" if i % 3 else f"team {i % 4}/day {i}/talk-{i:02d}.MP3"
        shas[rel] = make_audio(folders.inbox / rel, seed=i)

    code = await services.run(settings_for(folders, fake), once=True)

    assert code == 0
    for rel, sha in shas.items():
        stem = rel.rsplit(".", 1)[0]
        assert (folders.outbox / f"{stem}.txt").read_text() == expected_text(sha) + "\n"
        transcript = json.loads((folders.outbox / f"{stem}.json").read_text())
        assert transcript["status"] == "completed"
        assert transcript["text"] == expected_text(sha)
        assert (folders.done / rel).is_file()
        assert not (folders.inbox / rel).exists()
        assert fake.counters.uploads_by_sha256[sha] == 1
        assert fake.counters.submits_by_sha256[sha] == 1
    assert fake.counters.uploads_completed == 40
    assert not any(folders.failed.iterdir())


async def test_files_larger_than_one_chunk_are_streamed_whole(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    # Above 1 MiB the upload streams the file from disk in chunks instead of sending the
    # bytes read for its hash; the fake hashes what arrives.
    sizes = {"long.mp3": (5 << 20) // 2, "exact.mp3": 2 << 20}
    shas = {rel: make_audio(folders.inbox / rel, seed=rel, size=n) for rel, n in sizes.items()}

    code = await services.run(settings_for(folders, fake), once=True)

    assert code == 0
    for rel, sha in shas.items():
        assert fake.counters.uploads_by_sha256[sha] == 1
        stem = rel.rsplit(".", 1)[0]
        assert (folders.outbox / f"{stem}.txt").read_text() == expected_text(sha) + "\n"
        assert (folders.done / rel).stat().st_size == sizes[rel]


async def test_bad_inputs_fail_alone_with_reports_and_symlinks_are_never_uploaded(
    folders: Folders, fake: FakeAssemblyAI, tmp_path: Path, services: Services
) -> None:
    good = make_audio(folders.inbox / "good.mp3", seed="good")
    (folders.inbox / "empty.mp3").write_bytes(b"")
    (folders.inbox / "notes.mp3").write_text("these are meeting notes, not audio\n" * 200)
    doomed = make_audio(folders.inbox / "doomed.mp3", seed="doomed")
    fake.config.error_for.add(doomed)
    secret = make_audio(tmp_path / "outside" / "secret.mp3", seed="secret")
    (folders.inbox / "link.mp3").symlink_to(tmp_path / "outside" / "secret.mp3")
    (folders.inbox / "linked-dir").symlink_to(tmp_path / "outside", target_is_directory=True)

    code = await services.run(settings_for(folders, fake), once=True)

    assert code == 1
    assert (folders.outbox / "good.txt").read_text() == expected_text(good) + "\n"
    assert (folders.done / "good.mp3").is_file()
    for name, reason in [
        ("empty.mp3", "empty"),
        ("notes.mp3", "does not appear to contain audio"),
        ("doomed.mp3", "transcription failed"),
    ]:
        assert (folders.failed / name).is_file(), name
        report = json.loads((folders.failed / f"{name}.error.json").read_text())
        assert reason in report["reason"].lower() or reason in report["reason"], report
        assert report["source"] == name
        assert report["failed_at"]
        assert not (folders.outbox / f"{name[:-4]}.txt").exists()
    report = json.loads((folders.failed / "doomed.mp3.error.json").read_text())
    assert report["transcript_id"]
    assert fake.counters.uploads_by_sha256[secret] == 0
    assert (folders.inbox / "link.mp3").is_symlink()
    assert (tmp_path / "outside" / "secret.mp3").is_file()
    assert API_KEY not in json.dumps(report)


async def test_a_folder_re_pointed_out_of_the_inbox_mid_job_leaves_the_outside_alone(
    folders: Folders, fake: FakeAssemblyAI, tmp_path: Path, services: Services
) -> None:
    sha = make_audio(folders.inbox / "team" / "talk.mp3", seed="talk")
    outside = tmp_path / "outside"
    make_audio(outside / "talk.mp3", seed="someone else's")
    fake.hold_jobs()
    _, run = services.start(settings_for(folders, fake), once=True)
    await fake.wait_until(lambda: fake.counters.submits == 1, timeout_s=30)
    # While the transcript is processing, the folder is swapped for a link to elsewhere.
    (folders.inbox / "team").rename(tmp_path / "moved-away")
    (folders.inbox / "team").symlink_to(outside, target_is_directory=True)
    fake.release_jobs()

    assert await asyncio.wait_for(run, 30) == 0
    assert (folders.outbox / "team" / "talk.txt").read_text() == expected_text(sha) + "\n"
    assert (outside / "talk.mp3").is_file()  # not moved into done/ through the link
    assert not (folders.done / "team" / "talk.mp3").exists()
    assert (tmp_path / "moved-away" / "talk.mp3").is_file()


async def test_polling_reads_audio_durations_only_after_the_backlogs_submits(
    folders: Folders, fake: FakeAssemblyAI, monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    # The header parser holds the interpreter lock; the submits, which start the service's
    # clock, go first. One upload answers late: the other job's read waits for its submit.
    submitted: list[float] = []
    read: list[float] = []
    planned: list[tuple[str, float | None]] = []
    submit = assemblyai_api.AssemblyAIClient.submit

    async def timed_submit(self: Any, params: dict[str, Any]) -> str:
        transcript_id = await submit(self, params)
        submitted.append(time.monotonic())
        return transcript_id

    def duration(_path: Path) -> float:
        read.append(time.monotonic())
        return 42.0

    set_duration = StatusTracker.set_duration

    def spy(self: StatusTracker, transcript_id: str, duration_s: float | None) -> None:
        planned.append((transcript_id, duration_s))
        set_duration(self, transcript_id, duration_s)

    monkeypatch.setattr(assemblyai_api.AssemblyAIClient, "submit", timed_submit)
    monkeypatch.setattr(assemblyai, "audio_duration_s", duration)
    monkeypatch.setattr(StatusTracker, "set_duration", spy)
    monkeypatch.setattr(assemblyai, "DURATION_DEFER_S", 30.0)  # the order, not the time limit
    fake.config.faults.slow_s = 0.5
    fake.fail_next(ROUTE_UPLOAD, kind="slow")
    for name in ("a.mp3", "b.mp3"):
        make_audio(folders.inbox / name, seed=name)

    assert await services.run(settings_for(folders, fake), once=True) == 0

    assert len(submitted) == len(read) == 2
    assert max(submitted) - min(submitted) >= 0.4  # one submit really came late
    assert min(read) >= max(submitted)
    assert sorted(d for _, d in planned) == [42.0, 42.0]
    assert len({t for t, _ in planned}) == 2


async def test_wrong_key_exits_2_with_a_clear_message_and_moves_nothing(
    folders: Folders, fake: FakeAssemblyAI
) -> None:
    make_audio(folders.inbox / "a.mp3", seed=1)
    config = write_config(folders, fake, **{"assemblyai.api_key": "wrong-key-abcdef"})
    proc = await run_cli(daemon_command(config, "--once"), clean_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.events() if line["event"] == "startup_failed"]
    assert errors and "rejected the key" in errors[0]["error"]
    assert "wrong-key-abcdef" not in proc.stdout + proc.stderr
    assert (folders.inbox / "a.mp3").is_file()
    assert not folders.done.exists() or not any(folders.done.iterdir())
    assert fake.counters.uploads_started == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_runs_on_either_event_loop(folders: Folders, fake: FakeAssemblyAI, loop: str) -> None:
    shas = [make_audio(folders.inbox / f"{loop}-{i}.mp3", seed=f"{loop}{i}") for i in range(3)]
    config = write_config(folders, fake)
    proc = await run_cli(
        daemon_command(config, "--once", "--set", f"daemon.event_loop={loop}"), clean_env()
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "daemon_started")
    assert started["event_loop"] == loop
    for i, sha in enumerate(shas):
        assert (folders.outbox / f"{loop}-{i}.txt").read_text() == expected_text(sha) + "\n"


def test_missing_inbox_and_bad_values_exit_2_naming_the_problem(folders: Folders) -> None:
    config = write_config(folders, None, inbox=str(folders.root / "nope"))
    proc = subprocess.run(
        daemon_command(config, "--once"),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "nope" in proc.stdout + proc.stderr

    proc = subprocess.run(
        daemon_command(config, "--once"),
        env=clean_env(TRANSCRIBED_ASSEMBLYAI__MAX_CONCURRENT_JOBS="lots"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "assemblyai.max_concurrent_jobs" in proc.stderr
    assert "TRANSCRIBED_ASSEMBLYAI__MAX_CONCURRENT_JOBS" in proc.stderr


async def test_same_stem_different_content_each_get_their_own_transcript(
    folders: Folders, fake: FakeAssemblyAI, services: Services
) -> None:
    first = make_audio(folders.inbox / "meeting.mp3", seed="mp3")
    second = make_audio(folders.inbox / "meeting.wav", seed="wav")
    (folders.outbox).mkdir()
    (folders.outbox / "old.txt").write_text("keep me\n")
    # An outbox shared with earlier results: the empty journal beside it is meant.
    accept = {"daemon.accept_empty_journal": True}

    assert await services.run(settings_for(folders, fake, **accept), once=True) == 0

    texts = {p.name: p.read_text() for p in folders.outbox.glob("meeting*.txt")}
    assert sorted(texts.values()) == sorted(
        [expected_text(first) + "\n", expected_text(second) + "\n"]
    )
    assert len(texts) == 2
    assert (folders.outbox / "old.txt").read_text() == "keep me\n"

    # The same name dropped again with new content never overwrites the earlier transcript.
    third = make_audio(folders.inbox / "meeting.mp3", seed="again")
    assert await services.run(settings_for(folders, fake), once=True) == 0
    texts = {p.read_text() for p in folders.outbox.glob("meeting*.txt")}
    assert expected_text(third) + "\n" in texts
    assert len(texts) == 3
    assert len(list(folders.done.glob("meeting*"))) == 3
