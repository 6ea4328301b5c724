"""What the fake service saw, for tests and benchmarks to assert on."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

DROPPED = 0
"""The status recorded in `requests` for a request whose connection was dropped unanswered."""


@dataclass(slots=True)
class FakeCounters:
    """Plain counters, updated on the server's event loop.

    `requests` is keyed by (method, route template, status), e.g.
    ("POST", "/v2/transcript", 200); a dropped connection has status 0.
    """

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, "METHOD /route") of every fault injected."""
    uploads_started: int = 0
    uploads_completed: int = 0
    uploads_aborted: int = 0
    """Uploads whose client went away before the body ended."""
    upload_bytes: int = 0
    """Bytes received by upload requests, finished or not."""
    uploads_by_sha256: Counter[str] = field(default_factory=Counter)
    submits_by_audio_url: Counter[str] = field(default_factory=Counter)
    submits_by_sha256: Counter[str] = field(default_factory=Counter)
    polls: int = 0
    polls_by_id: Counter[str] = field(default_factory=Counter)
    lists: int = 0
    webhook_attempts: int = 0
    webhook_deliveries: int = 0
    """Webhook POSTs acknowledged with a 2xx."""
    webhook_refusals: int = 0
    """Webhooks answered with a 4xx (not retried)."""
    webhooks_abandoned: int = 0
    """Webhooks that were still failing after the last retry."""
    requests_per_second: Counter[int] = field(default_factory=Counter)
    """Requests per whole second of the monotonic clock."""

    def count_request(self, method: str, route: str, status: int) -> None:
        """Record one answered (or dropped) request."""
        self.requests[(method, route, status)] += 1
        self.requests_per_second[int(time.monotonic())] += 1

    def requests_to(self, route: str, status: int | None = None) -> int:
        """Requests to "METHOD /route/{template}", optionally only those with `status`."""
        method, _, path = route.partition(" ")
        return sum(
            n
            for (m, p, s), n in self.requests.items()
            if m == method and p == path and (status is None or s == status)
        )

    @property
    def total_requests(self) -> int:
        """Every request seen, whatever its answer."""
        return sum(self.requests.values())

    @property
    def peak_rps(self) -> int:
        """The most requests seen within one whole second."""
        return max(self.requests_per_second.values(), default=0)

    def burst_beyond(self, rate: float) -> float:
        """How far the requests ran ahead of ``rate`` per second at their worst.

        The most, over every run of consecutive whole seconds, by which the requests in it
        exceed ``rate`` x its length. A client with a token bucket of ``burst`` tokens refilled
        at ``rate`` keeps this at or below ``burst`` (plus one for the bucket boundaries).
        """
        return burst_beyond(self.requests_per_second, rate)

    @property
    def submits(self) -> int:
        """Transcripts created (accepted submits)."""
        return sum(self.submits_by_audio_url.values())

    def reset(self) -> None:
        """Zero every counter."""
        fresh = FakeCounters()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


def burst_beyond(per_second: Mapping[int, int], rate: float) -> float:
    """See :meth:`FakeCounters.burst_beyond`; ``per_second`` maps whole seconds to counts."""
    if not per_second:
        return 0.0
    worst = running = 0.0
    for second in range(min(per_second), max(per_second) + 1):
        # The best run ending at this second (Kadane's maximum subarray).
        running = max(0.0, running) + per_second.get(second, 0) - rate
        worst = max(worst, running)
    return worst
