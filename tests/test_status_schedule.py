"""When the status sweeps run: dense around a job's due time, sparse for queued and long-overdue
jobs, and learning the service's processing time without the time spent queued."""

from __future__ import annotations

import time
from typing import Any

import pytest

from transcribed.backends.assemblyai_status import (
    OVERDUE_BACKOFF,
    PRIOR_BASE_S,
    PRIOR_RATIO,
    SWEEP_MIN_S,
    StatusTracker,
)
from transcribed.config import AssemblyAISettings, Secret


def _tracker() -> StatusTracker:
    settings = AssemblyAISettings(api_key=Secret("k"), requests_per_s=40.0, poll_max_s=20.0)
    client: Any = None  # the schedule never calls the API
    return StatusTracker(client, settings)


def test_sweeps_are_dense_at_the_due_time_and_back_off_while_overdue() -> None:
    tracker, now = _tracker(), time.time()
    tracker.watch("due-later", now, None)
    assert tracker._next_sweep_in_s(now) == PRIOR_BASE_S / 2
    tracker.forget("due-later")
    tracker.watch("just-due", now - PRIOR_BASE_S, None)
    assert tracker._next_sweep_in_s(now) == SWEEP_MIN_S
    tracker.forget("just-due")
    tracker.watch("overdue", now - PRIOR_BASE_S - 60, None)
    assert tracker._next_sweep_in_s(now) == pytest.approx(60 * OVERDUE_BACKOFF)
    tracker.watch("stuck", now - 3600, None)
    assert tracker._next_sweep_in_s(now) == pytest.approx(60 * OVERDUE_BACKOFF)  # least overdue


def test_a_queued_job_is_not_due_until_it_starts_and_its_queue_time_is_not_learned() -> None:
    tracker, now = _tracker(), time.time()
    tracker.watch("t1", now - 30, None)
    tracker._seen("t1", "queued", since=now - 30)
    # Queued for 30 s: long past submit + expectation, yet not overdue.
    assert tracker._next_sweep_in_s(now) == PRIOR_BASE_S / 2
    tracker._seen("t1", "processing", since=now - 4)  # it started after the sweep 4 s ago
    assert tracker._next_sweep_in_s(now) == pytest.approx(1.0 * OVERDUE_BACKOFF)  # due 1 s ago
    tracker.observe("t1", None)
    # Learned from 4 s of processing, not from the 30 s since the submit.
    assert PRIOR_BASE_S < tracker.expected_s(None) < 4.0


def test_a_job_plans_no_sweep_until_its_duration_is_read() -> None:
    tracker, now = _tracker(), time.time()
    # Due now if its audio were short; its header is still being read.
    tracker.watch("t1", now - PRIOR_BASE_S, None, duration_pending=True)
    assert tracker._next_sweep_in_s(now) == 20.0  # poll_max_s: nothing planned by it
    tracker.set_duration("t1", 10.0)  # 10 s of audio: due 1 s from now
    assert tracker._next_sweep_in_s(now) == pytest.approx(PRIOR_RATIO * 10.0 / 2)
    tracker.watch("t2", now - PRIOR_BASE_S, None, duration_pending=True)
    tracker.set_duration("t2", None)  # unreadable header: planned as a short file
    assert tracker._next_sweep_in_s(now) == SWEEP_MIN_S
