"""The best possible makespan of a backlog on one uplink and a service that processes in
parallel: the reference the ``mixed`` scenario measures the daemon against.

Each file must be uploaded (one shared uplink: uploads in sequence, each at full bandwidth,
is as good as any sharing of it) and then processed by the service (in parallel, with enough
slots for all). This is one machine with delivery times, where Jackson's rule, processing
longest first, is optimal: the makespan is the largest "uploads so far + this processing".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Work:
    """One file: how long its upload takes at full bandwidth and how long the service takes."""

    upload_s: float
    processing_s: float


def jackson_makespan(work: Iterable[Work]) -> float:
    """The shortest time from the first upload's start to the last completion."""
    uploaded, makespan = 0.0, 0.0
    for item in sorted(work, key=lambda w: w.processing_s, reverse=True):
        uploaded += item.upload_s
        makespan = max(makespan, uploaded + item.processing_s)
    return makespan


def service_work(
    sizes_and_durations: Iterable[tuple[int, float]],
    *,
    bandwidth_bps: float,
    latency_s: float,
    latency_per_audio_s: float,
) -> list[Work]:
    """The work of files given as (bytes, audio seconds) on the fake service's model."""
    return [
        Work(size / bandwidth_bps, latency_s + latency_per_audio_s * duration_s)
        for size, duration_s in sizes_and_durations
    ]
