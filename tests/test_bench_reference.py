"""The `mixed` benchmark's reference: Jackson's rule on one uplink and a parallel service."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

# The benchmarks are no installed package: they run from the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.reference import Work, jackson_makespan, service_work


def makespan_in_order(order: tuple[Work, ...]) -> float:
    uploaded, makespan = 0.0, 0.0
    for item in order:
        uploaded += item.upload_s
        makespan = max(makespan, uploaded + item.processing_s)
    return makespan


def test_longest_processing_goes_up_first() -> None:
    # Name order (short first) would end at 2 + 1 + 43 = 46 s.
    work = [Work(2.0, 4.0), Work(1.0, 43.0)]
    assert jackson_makespan(work) == 44.0
    assert makespan_in_order(tuple(work)) == 46.0


def test_it_is_the_best_of_every_order() -> None:
    work = [Work(3.0, 1.0), Work(1.0, 9.0), Work(2.0, 5.0), Work(0.5, 0.5), Work(4.0, 6.0)]
    best = min(makespan_in_order(order) for order in itertools.permutations(work))
    assert jackson_makespan(work) == pytest.approx(best)


def test_the_service_model_gives_the_issues_two_hour_lecture() -> None:
    # 120 minutes at 16 kbps (2000 B/s) over 8 MB/s, then 3 s + 20 s per audio hour.
    (lecture,) = service_work(
        [(7200 * 2000, 7200.0)], bandwidth_bps=8e6, latency_s=3.0, latency_per_audio_s=20 / 3600
    )
    assert lecture.upload_s == pytest.approx(1.8)
    assert jackson_makespan([lecture]) == pytest.approx(44.8)
    assert jackson_makespan([]) == 0.0
