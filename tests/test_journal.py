"""The journal: one live row per inbox path, exclusive use, and clear errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from transcribed.journal import Journal, JournalError


def test_discover_is_idempotent_per_live_path(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        first = journal.discover("a.mp3", 10, 1)
        assert first is not None
        assert journal.discover("a.mp3", 10, 1) is None
        journal.set_state(first, "archived", source_moved=1)
        again = journal.discover("a.mp3", 12, 2)
        assert again is not None and again != first
        assert journal.counts()["archived"] == 1
        assert journal.counts()["discovered"] == 1


def test_state_survives_reopening(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        job = journal.discover("a.mp3", 10, 1)
        assert job is not None
        journal.set_state(job, "submitted", transcript_id="t-1", upload_url="u")
    with Journal(tmp_path) as journal:
        row = journal.get(job)
        assert (row.state, row.transcript_id, row.upload_url) == ("submitted", "t-1", "u")


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    with Journal(tmp_path), pytest.raises(JournalError, match="another transcribed"):
        Journal(tmp_path).open()


def test_readonly_readers_do_not_need_the_lock(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.discover("a.mp3", 1, 1)
        with Journal(tmp_path, readonly=True) as reader:
            assert reader.counts()["discovered"] == 1


def test_a_corrupt_journal_gives_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=r"journal\.sqlite3"):
        Journal(tmp_path).open()


def test_journal_uses_wal(tmp_path: Path) -> None:
    with Journal(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_output_names_are_reserved_once(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        a = journal.discover("x/a.mp3", 1, 1)
        b = journal.discover("x/a.wav", 1, 1)
        assert a is not None and b is not None
        candidates = ["x/a", "x/a.ext", "x/a (2)"]
        assert journal.reserve_output_base(a, candidates, lambda _b: False) == "x/a"
        assert journal.reserve_output_base(a, candidates, lambda _b: False) == "x/a"
        assert journal.reserve_output_base(b, candidates, lambda _b: False) == "x/a.ext"
