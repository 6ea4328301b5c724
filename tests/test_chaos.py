"""Chaos: 20% API faults while the daemon is SIGKILLed at random moments and restarted.

Afterwards every input has exactly one correct transcript, nothing failed, nothing was
submitted twice, and re-uploads are no more than the uploads that were in flight at the kills.
Set CHAOS_SEED to replay a run; the seed is printed either way.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3

from conftest import API_KEY, Daemon, Folders, eventually, expected_text, make_audio, write_config
from fakeapi import FAULT_KINDS, FakeAssemblyAI, FakeConfig, FaultConfig


def _snapshot(folders: Folders) -> tuple[set[str], int]:
    """After a kill: contents already submitted, and uploads the daemon had not finished."""
    with sqlite3.connect(folders.state / "journal.sqlite3") as db:
        submitted = {
            sha
            for (sha,) in db.execute(
                "SELECT sha256 FROM jobs WHERE transcript_id IS NOT NULL AND sha256 IS NOT NULL"
            )
        }
        (in_flight,) = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'uploading' AND upload_url IS NULL "
            "AND upload_started_at IS NOT NULL"
        ).fetchone()
    return submitted, int(in_flight)


def _archived(folders: Folders) -> int:
    return len(list(folders.done.rglob("*.mp3"))) if folders.done.exists() else 0


def _transcribed(folders: Folders) -> int:
    return len(list(folders.outbox.rglob("*.txt"))) if folders.outbox.exists() else 0


async def test_chaos_kills_and_faults_lose_nothing_and_pay_nothing_twice(
    folders: Folders,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    faults = FaultConfig(rate=0.2, kinds=FAULT_KINDS, retry_after_s=1, slow_s=0.5, seed=seed)
    config = FakeConfig(api_keys=(API_KEY,), latency_s=0.5, concurrency=40, faults=faults)
    async with FakeAssemblyAI(config) as fake:
        shas = {}
        for i in range(100):
            rel = f"day-{i % 4}/clip-{i:03d}.mp3" if i % 3 == 0 else f"clip-{i:03d}.mp3"
            shas[rel] = make_audio(
                folders.inbox / rel, seed=f"chaos{i}", size=rng.randint(4_000, 150_000)
            )
        daemon_config = write_config(
            folders,
            fake,
            **{
                "assemblyai.max_concurrent_jobs": 30,
                "assemblyai.max_concurrent_uploads": 4,
                "assemblyai.poll_min_s": 0.2,
                "assemblyai.poll_max_s": 1.0,
                "assemblyai.retry_max_backoff_s": 1.0,
                "assemblyai.read_timeout_s": 5.0,
                "watch.settle_s": 0.2,
            },
        )
        log_path = folders.root / "daemon.log"
        in_flight_at_kills = 0
        unfinished_at_kills: list[int] = []  # sources not yet archived when each kill landed
        protected: dict[str, int] = {}
        thresholds = sorted(rng.sample(range(40, 420), 3))
        for threshold in thresholds:
            daemon = await Daemon(daemon_config, log_path).start()
            target = fake.counters.total_requests + threshold // 3
            await fake.wait_until(lambda t=target: fake.counters.total_requests >= t, 60)
            assert await daemon.kill() == -signal.SIGKILL
            unfinished_at_kills.append(100 - _archived(folders))
            submitted, in_flight = _snapshot(folders)
            in_flight_at_kills += in_flight
            for sha in submitted:
                protected.setdefault(sha, fake.counters.uploads_by_sha256[sha])

        final = await Daemon(daemon_config, log_path).start()
        await eventually(
            lambda: _archived(folders) == 100 and _transcribed(folders) == 100,
            100,
            "all files transcribed and archived",
        )
        assert await final.signal(signal.SIGTERM) == 0

    transcripts = sorted(
        p.relative_to(folders.outbox).as_posix() for p in folders.outbox.rglob("*.txt")
    )
    assert transcripts == sorted(rel[:-4] + ".txt" for rel in shas)
    for rel, sha in shas.items():
        assert (folders.outbox / (rel[:-4] + ".txt")).read_text() == expected_text(sha) + "\n"
    assert not folders.failed.exists() or not any(folders.failed.rglob("*"))
    double_submits = sum(1 for sha in shas.values() if fake.counters.submits_by_sha256[sha] != 1)
    reuploads = sum(max(0, fake.counters.uploads_by_sha256[sha] - 1) for sha in shas.values())
    faults_injected = sum(fake.counters.faults.values())
    print(
        f"\nchaos seed={seed}: 100 files, SIGKILLs with {unfinished_at_kills} files unfinished, "
        f"{faults_injected} faults injected, "
        f"{fake.counters.total_requests} requests; transcripts={len(transcripts)} failed=0 "
        f"double_submits={double_submits} reuploads={reuploads} "
        f"uploads_in_flight_at_kills={in_flight_at_kills} submitted_at_kills={len(protected)}"
    )
    assert double_submits == 0
    assert reuploads <= in_flight_at_kills
    for sha, uploads_then in protected.items():
        assert fake.counters.uploads_by_sha256[sha] == uploads_then
    # Each kill cut into unfinished work (a kill after the last file would test nothing).
    assert all(n > 0 for n in unfinished_at_kills), unfinished_at_kills
