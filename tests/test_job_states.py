"""A job's states form one machine: every change goes through the journal, which refuses any
step that :data:`TRANSITIONS` does not list, and writes nothing when it refuses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import discover
from transcribed.journal import (
    STATES,
    TRANSITIONS,
    IllegalTransitionError,
    Journal,
    State,
)

#: A path through the machine to each state, from a new job.
ROUTE_TO: dict[State, tuple[State, ...]] = {
    State.DISCOVERED: (),
    State.UPLOADING: (State.UPLOADING,),
    State.SUBMITTED: (State.UPLOADING, State.SUBMITTED),
    State.COMPLETED: (State.UPLOADING, State.SUBMITTED, State.COMPLETED),
    State.ARCHIVED: (State.UPLOADING, State.SUBMITTED, State.COMPLETED, State.ARCHIVED),
    State.FAILED: (State.FAILED,),
}


def _job_in(journal: Journal, state: State, name: str) -> int:
    job = discover(journal, name, 10, 1)
    assert job is not None
    for step in ROUTE_TO[state]:
        journal.set_state(job, step)
    assert journal.get(job).state is state
    return job


def test_states_keep_their_plain_names_in_the_journal(tmp_path: Path) -> None:
    assert tuple(State) == STATES
    assert [str(state) for state in State] == [
        "discovered",
        "uploading",
        "submitted",
        "completed",
        "archived",
        "failed",
    ]
    with Journal(tmp_path) as journal:
        job = _job_in(journal, State.SUBMITTED, "a.mp3")
        stored = sqlite3.connect(journal.path).execute("SELECT state FROM jobs").fetchone()
        assert stored == ("submitted",)
        assert journal.get(job).state == "submitted"


@pytest.mark.parametrize(
    ("current", "wanted"),
    [(a, b) for a in State for b in State if b not in TRANSITIONS[a]],
)
def test_an_illegal_transition_raises_and_writes_nothing(
    tmp_path: Path, current: State, wanted: State
) -> None:
    with Journal(tmp_path) as journal:
        job = _job_in(journal, current, "a.mp3")
        before = journal.get(job)
        with pytest.raises(IllegalTransitionError) as caught:
            journal.set_state(job, wanted, last_error="should not be written")
        assert (caught.value.current, caught.value.wanted) == (current.value, wanted.value)
        assert journal.get(job) == before


@pytest.mark.parametrize(
    ("current", "wanted"),
    [(a, b) for a in State for b in sorted(TRANSITIONS[a])],
)
def test_every_listed_transition_is_allowed(tmp_path: Path, current: State, wanted: State) -> None:
    with Journal(tmp_path) as journal:
        job = _job_in(journal, current, "a.mp3")
        journal.set_state(job, wanted, last_error="written")
        row = journal.get(job)
        assert (row.state, row.last_error) == (wanted, "written")


def test_archived_is_final(tmp_path: Path) -> None:
    assert TRANSITIONS[State.ARCHIVED] == frozenset()


def test_the_state_is_changed_only_by_set_state(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        job = _job_in(journal, State.DISCOVERED, "a.mp3")
        with pytest.raises(KeyError, match="set_state"):
            journal.update(job, state="archived")
        with pytest.raises(ValueError, match="'paid'"):
            journal.set_state(job, "paid")
        with pytest.raises(KeyError):
            journal.set_state(job + 1, State.UPLOADING)
        assert journal.get(job).state is State.DISCOVERED
