"""Learning processing time as a fixed part plus a share per audio second, from synthetic
finished jobs, and what it does to when a long job is looked at."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from transcribed.backends.assemblyai_status import (
    LEARN_WINDOW,
    PRIOR_BASE_S,
    PRIOR_RATIO,
    ProcessingTime,
    StatusTracker,
)
from transcribed.config import AssemblyAISettings, Secret

HOUR = 3600.0


def service_s(duration_s: float) -> float:
    """The service of the `mixed` benchmark: 3 s + 20 s per audio hour."""
    return 3.0 + 20.0 * duration_s / HOUR


def log_spread(count: int, shortest_s: float, longest_s: float) -> list[float]:
    ratio = (longest_s / shortest_s) ** (1 / (count - 1))
    return [shortest_s * ratio**i for i in range(count)]


def learned_from_a_backlog(seed: int = 1) -> ProcessingTime:
    """What 30 recordings of 1 to 100 minutes teach, in the order they finish (shortest
    first), with some jitter and two found 20 s late by a safety poll."""
    rng = random.Random(seed)
    model = ProcessingTime()
    for index, duration in enumerate(log_spread(30, 60, 100 * 60)):
        took = service_s(duration) + rng.uniform(0.0, 0.3)
        if index in (4, 17):
            took += 20.0
        model.observe(duration, took)
    return model


def test_the_prior_holds_until_a_job_finishes() -> None:
    model = ProcessingTime()
    assert model.expected_s(None) == PRIOR_BASE_S
    assert model.expected_s(7200) == PRIOR_BASE_S + PRIOR_RATIO * 7200


def test_both_parts_are_learned_so_a_two_hour_job_is_expected_within_5_percent() -> None:
    model = learned_from_a_backlog()
    truth = service_s(2 * HOUR)  # 43 s; the prior expects 723 s
    assert model.expected_s(2 * HOUR) == pytest.approx(truth, rel=0.05)
    assert model.ratio == pytest.approx(20 / HOUR, rel=0.1)
    assert model.base_s == pytest.approx(3.0, abs=0.5)


def test_jobs_of_one_length_teach_the_fixed_part_only() -> None:
    model = ProcessingTime()
    for _ in range(20):
        model.observe(1.0, 5.0)  # 400 one-second files, 5 s each
    assert model.ratio == PRIOR_RATIO
    assert model.expected_s(1.0) == pytest.approx(5.0, abs=0.1)


def test_the_fit_follows_the_recent_jobs() -> None:
    model = learned_from_a_backlog()
    for duration in log_spread(LEARN_WINDOW, 60, 2 * HOUR):  # the service got twice as slow
        model.observe(duration, 2 * service_s(duration))
    assert model.expected_s(2 * HOUR) == pytest.approx(2 * service_s(2 * HOUR), rel=0.05)


def test_nothing_is_expected_faster_than_the_floor() -> None:
    model = ProcessingTime()
    for duration in (10.0, 100.0, 1000.0):
        model.observe(duration, 0.0)
    assert model.ratio >= 0.0
    assert model.expected_s(0.0) >= 0.5


def found_after_s(tracker: StatusTracker, started: float, processing_s: float) -> float:
    """Follow the sweep plan from ``started`` (as the sweep loop would, with the clock only
    moving by the planned waits) until the first sweep after the job is done; returns how
    long after it finished that sweep comes."""
    now, done = started, started + processing_s
    while now < done:
        now += tracker._next_sweep_in_s(now)
    return now - done


def _tracker() -> StatusTracker:
    settings = AssemblyAISettings(api_key=Secret("k"), requests_per_s=40.0, poll_max_s=20.0)
    client: Any = None  # the schedule never calls the API
    return StatusTracker(client, settings)


def test_a_two_hour_job_is_looked_at_within_5_percent_of_its_processing_time() -> None:
    tracker, started = _tracker(), 1_000_000.0
    truth = service_s(2 * HOUR)
    # With the prior, it is due after 723 s: only the 20 s safety sweeps look at it.
    tracker.watch("lecture", started, 2 * HOUR)
    assert found_after_s(tracker, started, truth) > 0.05 * truth

    tracker.processing = learned_from_a_backlog()
    assert found_after_s(tracker, started, truth) <= 0.05 * truth
    # Also when it finishes a little earlier or later than expected.
    for off in (0.97, 1.03):
        assert found_after_s(tracker, started, off * truth) <= 0.05 * truth


async def test_what_a_finished_job_teaches_replans_the_next_sweep() -> None:
    tracker, now = _tracker(), time.time()
    truth = service_s(2 * HOUR)
    tracker.watch("lecture", now - truth + 0.2, 2 * HOUR)  # done in 0.2 s; expected in 680 s
    shorter = log_spread(30, 60, 100 * 60)
    for index, duration in enumerate(shorter):  # they plan no sweep: just finished
        tracker.watch(f"t{index}", now - service_s(duration), None, duration_pending=True)
    waiting = asyncio.create_task(tracker._wait_for_next_sweep())  # planned 20 s away
    await asyncio.sleep(0.05)
    assert not waiting.done()
    for index, duration in enumerate(shorter):
        tracker.observe(f"t{index}", duration)
        tracker.forget(f"t{index}")
    # Now due in 0.2 s: the sweep comes then, not at the old plan's 20 s.
    await asyncio.wait_for(waiting, timeout=10)
