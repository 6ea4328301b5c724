"""Prometheus metrics, one registry per daemon (so tests can run several in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))


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
        for outcome in ("done", "failed"):
            self.files.labels(outcome=outcome)

    def watch_oldest(self, age_s: Callable[[], float]) -> None:
        self.oldest_waiting_age.set_function(age_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
