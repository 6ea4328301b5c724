"""Fault injection: random faults at a configured rate, and scripted faults for exact tests.

A fault is decided before a request has any effect (a faulted submit creates no transcript),
except "slow", which lets the request take effect and then holds the answer back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from aiohttp import web

FAULT_KINDS = ("429", "500", "503", "drop", "drop_mid_upload", "slow")
"""The kinds FaultConfig draws from; a scripted fault may also be any other 4xx/5xx status."""
ANY_ROUTE = "*"

_SERVER_ERROR = "Server error, developers have been alerted."
_MID_UPLOAD_READ_BYTES = 256 * 1024


def _check_kind(kind: str) -> str:
    if kind in FAULT_KINDS or (kind.isdigit() and 400 <= int(kind) <= 599):
        return kind
    raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS} or a status")


@dataclass(slots=True)
class FaultConfig:
    """Random faults: `rate` of eligible requests get one of `kinds`.

    `endpoints` holds "METHOD /route/{template}" strings (see the ROUTE_* constants);
    None makes every route eligible.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after_s: int = 1
    slow_s: float = 2.0
    seed: int | None = None
    endpoints: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be within 0..1, got {self.rate}")
        if not self.kinds:
            raise ValueError("fault kinds must not be empty")
        self.kinds = tuple(_check_kind(k) for k in self.kinds)


@dataclass(slots=True)
class _Scripted:
    route: str
    kind: str
    remaining: int


@dataclass(slots=True)
class FaultInjector:
    """Decides, per request, which fault (if any) it gets."""

    _scripted: list[_Scripted] = field(default_factory=list)
    _rng: random.Random = field(default_factory=random.Random)
    _rng_for: FaultConfig | None = None

    def fail_next(self, route: str, kind: str, times: int) -> None:
        """Give the next `times` requests to `route` ("*" for any) the fault `kind`."""
        if times < 1:
            raise ValueError("times must be at least 1")
        self._scripted.append(_Scripted(route, _check_kind(kind), times))

    def clear(self) -> None:
        """Forget every scripted fault that has not fired yet."""
        self._scripted.clear()

    @property
    def pending(self) -> int:
        """How many scripted faults are still to fire."""
        return sum(s.remaining for s in self._scripted)

    def draw(self, route: str, config: FaultConfig) -> str | None:
        """The fault kind for this request to `route`, or None; scripted faults come first."""
        for scripted in self._scripted:
            if scripted.route in (route, ANY_ROUTE):
                scripted.remaining -= 1
                if scripted.remaining == 0:
                    self._scripted.remove(scripted)
                return scripted.kind
        if config.rate <= 0 or (config.endpoints is not None and route not in config.endpoints):
            return None
        if self._rng_for is not config:  # a new FaultConfig restarts its seeded sequence
            self._rng, self._rng_for = random.Random(config.seed), config
        if self._rng.random() >= config.rate:
            return None
        return self._rng.choice(config.kinds)


def status_response(kind: str, retry_after_s: int) -> web.Response:
    """The answer for a status fault: JSON error body, except 502/503/504 which have none."""
    status = int(kind)
    if status == 429:
        return web.json_response(
            {"error": "Too Many Requests"},
            status=429,
            headers={"Retry-After": str(max(0, retry_after_s))},
        )
    if status in (502, 503, 504):
        return web.Response(status=status)
    message = _SERVER_ERROR if status >= 500 else "Injected fault"
    return web.json_response({"error": message}, status=status)


def drop(request: web.Request) -> web.Response:
    """Close the connection without an answer; the response returned is never sent."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


async def drop_mid_upload(request: web.Request) -> web.Response:
    """Read part of the request body, then drop the connection."""
    received = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        received += len(chunk)
        if received >= _MID_UPLOAD_READ_BYTES or received * 2 >= (request.content_length or 0):
            break
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)
