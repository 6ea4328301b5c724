"""Prometheus metrics, one registry per daemon (so tests can run several in one process).

:class:`LoopLagProbe` measures how late the event loop wakes a timer: the wall-clock lag, and
the part of it the loop's own work caused. The second is what blocks the loop (a slow
callback); the rest of the first is the machine being busy elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from transcribed.logs import get_logger

log = get_logger("transcribed.metrics")

_DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.files = Counter(
            "transcribed_files", "Source files finished, by outcome.", ["outcome"], registry=r
        )
        self.jobs_in_flight = Gauge(
            "transcribed_jobs_in_flight", "Jobs being worked on now.", registry=r
        )
        self.queue_depth = Gauge(
            "transcribed_queue_depth",
            "Files waiting in the journal or settling in the inbox, not yet in flight.",
            registry=r,
        )
        self.upload_bytes = Counter(
            "transcribed_upload_bytes", "Bytes of audio uploaded.", registry=r
        )
        self.api_requests = Counter(
            "transcribed_api_requests",
            "HTTP requests to the transcription API, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.api_retries = Counter(
            "transcribed_api_retries",
            "Retried API requests, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.job_duration = Histogram(
            "transcribed_job_duration_seconds",
            "Time from taking a file to its outcome.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "transcribed_audio_seconds", "Seconds of audio transcribed.", registry=r
        )
        self.oldest_waiting_age = Gauge(
            "transcribed_oldest_waiting_file_age_seconds",
            "Age of the oldest file that is known but not yet started (0 when none).",
            registry=r,
        )
        self.loop_lag = Histogram(
            "transcribed_event_loop_lag_seconds",
            "How late the event loop woke a timer (wall clock), sampled every "
            f"{LoopLagProbe.interval_s} s.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.loop_blocked = Histogram(
            "transcribed_event_loop_blocked_seconds",
            "The part of each lag sample that the loop's own work caused (callbacks running or "
            "blocking), leaving out time its thread waited for a busy CPU.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.http_connections = Gauge(
            "transcribed_http_connections",
            "Connections to the HTTP endpoint held open now.",
            registry=r,
        )
        self.http_connections_closed = Counter(
            "transcribed_http_connections_closed",
            "Connections the HTTP endpoint closed on its own: 'timeout' (no complete request "
            "in time) or 'evicted' (idle, to make room at the connection cap).",
            ["reason"],
            registry=r,
        )
        for reason in ("timeout", "evicted"):
            self.http_connections_closed.labels(reason=reason)
        for outcome in ("done", "failed"):
            self.files.labels(outcome=outcome)

    def watch_oldest(self, age_s: Callable[[], float]) -> None:
        self.oldest_waiting_age.set_function(age_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopLagProbe:
    """Samples the event loop's lag into ``metrics`` until cancelled.

    A sample is how much later than asked a sleep of ``interval_s`` returned, so a stall
    shorter than ``interval_s`` may be under-reported by up to ``interval_s``. Its "blocked"
    part leaves out the time the loop's thread waited for a CPU (Linux schedstat), which is the
    machine being busy, not the loop: what remains is callbacks running or blocking in a call.
    Without schedstat, the blocked part is the thread's CPU time only. A blocked part of
    ``warn_s`` or more is also logged as ``event_loop_blocked``.
    """

    interval_s = 0.05
    warn_s = 0.1

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        waited = _RunQueueWait()
        try:
            while True:
                asked = loop.time() + self.interval_s
                queued = waited.seconds()
                cpu = time.thread_time() if queued is None else 0.0
                await asyncio.sleep(self.interval_s)
                lag_s = max(0.0, loop.time() - asked)
                if queued is not None and (now_queued := waited.seconds()) is not None:
                    blocked_s = max(0.0, lag_s - (now_queued - queued))
                else:
                    blocked_s = min(lag_s, time.thread_time() - cpu)
                self._metrics.loop_lag.observe(lag_s)
                self._metrics.loop_blocked.observe(blocked_s)
                if blocked_s >= self.warn_s:
                    log.warning(
                        "event_loop_blocked", blocked_s=round(blocked_s, 3), lag_s=round(lag_s, 3)
                    )
        finally:
            waited.close()


class _RunQueueWait:
    """Total time this thread has waited for a CPU, from ``/proc/thread-self/schedstat``."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def seconds(self) -> float | None:
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            self.close()
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
